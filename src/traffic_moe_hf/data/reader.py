"""Capture reader: raw records out of pcap / pcapng files (optionally gzip-compressed).

``iter_records(path)`` yields ``(timestamp: float, linktype: int, frame: bytes)`` for every
packet record of a capture, in file order.  It raises only :class:`CaptureError` (the file cannot
be read at all: not a capture, unknown version, empty, I/O error); damage *after* a valid header
(a truncated last record, a corrupt record header) ends the iteration early and is reported
through ``RecordStream.warning`` instead of an exception, so every packet before the damage is
still used.

Why the record loop is hand-written instead of ``dpkt.pcap.Reader`` / ``dpkt.pcapng.Reader``:

* ``dpkt.pcapng.Reader`` honours only the *first* Interface Description Block: every packet gets
  the first interface's link type and timestamp resolution, so a pcapng with an Ethernet and a
  Linux-cooked interface (common for ``tcpdump -i any`` / Wireshark multi-interface captures) is
  mis-decoded.  We walk the blocks ourselves (EPB/SPB/OPB, every IDB, several sections, both byte
  orders) and still let dpkt parse the IDBs and their options (``if_tsresol``, ``if_tsoffset``).
* ``dpkt.pcap.Reader`` hides the record's ``caplen`` (a truncated last record is silently returned
  short), returns ``decimal.Decimal`` timestamps for nanosecond files and builds a dpkt header
  object per record.  A 16-byte ``struct.unpack`` per record is both faster and lets us report
  truncation.  dpkt's own constants and file-header classes are still used to recognise the magic.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from dataclasses import dataclass, field

import dpkt
import dpkt.pcap
import dpkt.pcapng

__all__ = [
    "CaptureError",
    "RecordStream",
    "iter_records",
    "open_capture",
    "LINKTYPE_NAMES",
    "linktype_name",
    "CAPTURE_SUFFIXES",
]

#: file name endings recognised as captures when a directory is given as input
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz", ".cap.gz", ".gz")

#: largest record we accept (bytes); larger ``caplen`` means a corrupt record header
MAX_RECORD = 1 << 24

LINKTYPE_NAMES = {
    0: "null",
    1: "ethernet",
    9: "ppp",
    12: "raw",
    14: "raw",
    50: "ppp_hdlc",
    51: "pppoe",
    101: "raw",
    104: "c_hdlc",
    108: "loop",
    113: "linux_sll",
    228: "ipv4",
    229: "ipv6",
    276: "linux_sll2",
}


def linktype_name(linktype: int) -> str:
    return LINKTYPE_NAMES.get(linktype, f"dlt_{linktype}")


class CaptureError(Exception):
    """The file cannot be read as a capture (the message says why). The only exception
    :func:`iter_records` raises for bad input."""


_PCAP_MAGICS = {
    # magic as read big-endian -> (byte order, nanosecond, record header length)
    dpkt.pcap.TCPDUMP_MAGIC: (">", False, 16),
    dpkt.pcap.TCPDUMP_MAGIC_NANO: (">", True, 16),
    dpkt.pcap.PMUDPCT_MAGIC: ("<", False, 16),
    dpkt.pcap.PMUDPCT_MAGIC_NANO: ("<", True, 16),
    0xA1B2CD34: (">", False, 24),  # Kuznetzov's modified pcap (extra 8 bytes per record)
    0x34CDB2A1: ("<", False, 24),
}
_PCAPNG_SHB = 0x0A0D0D0A


@dataclass
class RecordStream:
    """Iterable over the records of one capture; ``warning`` is set when reading stopped early."""

    path: str
    fileobj: io.BufferedIOBase
    format: str = "pcap"
    warning: str | None = None
    records: int = 0
    linktypes: set = field(default_factory=set)
    _iter: object = None

    def __iter__(self):
        return self._iter

    def position(self) -> int | None:
        """Bytes of the file read so far (of the compressed file for gzip), for progress bars; None
        for a stream that cannot tell (a pipe)."""
        raw = getattr(self.fileobj, "fileobj", None) or self.fileobj  # GzipFile -> the file under it
        try:
            return raw.tell()
        except (OSError, ValueError, AttributeError):
            return None

    def close(self):
        try:
            self.fileobj.close()
        except Exception:  # pragma: no cover - closing never matters for correctness
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_raw(path):
    if isinstance(path, str):
        try:
            f = open(path, "rb")
        except OSError as e:
            raise CaptureError(f"cannot open: {e.strerror or e}") from None
    else:  # an open binary stream (e.g. stdin of `tcpdump -w - | traffic-moe predict -`): may not seek
        f = path if isinstance(path, io.BufferedReader) else io.BufferedReader(path, buffer_size=1 << 16)
    head = f.peek(2)[:2] if isinstance(f, io.BufferedReader) else f.read(2)
    if not isinstance(f, io.BufferedReader):
        f.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb"), True
    return io.BufferedReader(f, buffer_size=1 << 20) if not isinstance(f, io.BufferedReader) else f, False


def open_capture(path) -> RecordStream:
    """Open a capture and return a :class:`RecordStream` (iterate it for records). ``path`` is a file
    name or an open binary stream (read sequentially, never seeked: a pipe works).

    Raises :class:`CaptureError` when the file is not a readable capture."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
    f, gz = _open_raw(path)
    try:
        head = f.read(24)
    except (OSError, EOFError, gzip.BadGzipFile, ValueError) as e:
        f.close()
        raise CaptureError(f"cannot read{' gzip' if gz else ''}: {e}") from None
    if len(head) == 0:
        f.close()
        raise CaptureError("empty file")
    if len(head) < 4:
        f.close()
        raise CaptureError(f"too short for a capture header ({len(head)} bytes)")
    (magic,) = struct.unpack(">I", head[:4])
    if magic in _PCAP_MAGICS:
        if len(head) < 24:
            f.close()
            raise CaptureError(f"truncated pcap file header ({len(head)} of 24 bytes)")
        order, nano, rec_len = _PCAP_MAGICS[magic]
        vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack(order + "HHiIII", head[4:24])
        if vmaj != 2:
            f.close()
            raise CaptureError(f"unsupported pcap version {vmaj}")
        # the upper bits of the link-type field carry the FCS length (pcap spec); the frames keep it
        linktype &= 0x03FFFFFF
        rs = RecordStream(path, f, "pcap" + ("-ns" if nano else "") + (".gz" if gz else ""))
        rs.linktypes.add(linktype)
        rs._iter = _pcap_records(rs, f, order, nano, rec_len, linktype)
        return rs
    if magic == _PCAPNG_SHB:
        # validate the first Section Header Block here, so that iteration never raises
        if len(head) < 24:
            f.close()
            raise CaptureError(f"truncated pcapng section header ({len(head)} bytes)")
        bom = head[8:12]
        le = bom == b"\x4d\x3c\x2b\x1a"
        if not le and bom != b"\x1a\x2b\x3c\x4d":
            f.close()
            raise CaptureError("pcapng: bad byte-order magic")
        blen, vmaj = struct.unpack_from("<IH" if le else ">IH", head, 4)[0], struct.unpack_from("<H" if le else ">H", head, 12)[0]
        if blen < 28 or blen % 4 or blen > MAX_RECORD:
            f.close()
            raise CaptureError(f"pcapng: bad section header length {blen}")
        if vmaj != 1:
            f.close()
            raise CaptureError(f"pcapng: unsupported version {vmaj}")
        rs = RecordStream(path, f, "pcapng" + (".gz" if gz else ""))
        rs._iter = _pcapng_records(rs, f, head)
        return rs
    f.close()
    raise CaptureError(f"not a pcap/pcapng file (magic 0x{magic:08x})")


def iter_records(path: str | os.PathLike):
    """Yield ``(timestamp, linktype, frame)`` for every record of the capture at ``path``."""
    with open_capture(path) as rs:
        yield from rs


def _pcap_records(rs: RecordStream, f, order: str, nano: bool, rec_len: int, linktype: int):
    unpack = struct.Struct(order + "IIII").unpack_from
    read = f.read
    div = 1e-9 if nano else 1e-6
    n = 0
    try:
        while True:
            hdr = read(rec_len)
            if len(hdr) < rec_len:
                if hdr:
                    rs.warning = f"truncated record header after {n} records"
                break
            sec, frac, caplen, _wirelen = unpack(hdr)
            if caplen > MAX_RECORD:
                rs.warning = f"corrupt record header after {n} records (caplen {caplen})"
                break
            buf = read(caplen)
            if len(buf) < caplen:
                rs.warning = f"file truncated inside record {n + 1} ({len(buf)} of {caplen} bytes)"
                break
            n += 1
            yield sec + frac * div, linktype, buf
    except (OSError, EOFError, gzip.BadGzipFile, ValueError, struct.error) as e:  # gzip damage
        rs.warning = f"read error after {n} records: {e}"
    finally:
        rs.records = n


def _pcapng_records(rs: RecordStream, f, head: bytes):
    """Walk pcapng blocks. Every IDB of the current section is kept (link type, ts resolution)."""
    buf = head
    n = 0
    le = True
    ifaces: list[tuple[int, float, int]] = []  # (linktype, ticks per second, ts offset)
    read = f.read
    try:
        while True:
            if len(buf) < 8:
                buf += read(8 - len(buf))
                if len(buf) < 8:
                    if buf:
                        rs.warning = f"truncated block header after {n} records"
                    break
            btype = struct.unpack_from("<I", buf)[0]
            if btype == _PCAPNG_SHB:
                if len(buf) < 12:
                    buf += read(12 - len(buf))
                if len(buf) < 12:
                    rs.warning = f"truncated section header after {n} records"
                    break
                bom = buf[8:12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    le = True
                elif bom == b"\x1a\x2b\x3c\x4d":
                    le = False
                else:
                    rs.warning = f"corrupt section header after {n} records"
                    break
                ifaces = []
            blen = struct.unpack_from("<I" if le else ">I", buf, 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_RECORD + 64:
                rs.warning = f"corrupt block (length {blen}) after {n} records"
                break
            body = read(blen - len(buf))
            block = buf + body
            buf = b""
            if len(block) < blen:
                rs.warning = f"file truncated inside a block after {n} records"
                break
            if btype == _PCAPNG_SHB:
                if len(block) < 16 or struct.unpack_from("<H" if le else ">H", block, 12)[0] != 1:
                    rs.warning = f"unsupported section version after {n} records"
                    break
                continue
            if not le:
                btype = struct.unpack_from(">I", block)[0]
            if btype == dpkt.pcapng.PCAPNG_BT_IDB:
                ifaces.append(_parse_idb(block, le))
                rs.linktypes.add(ifaces[-1][0])
            elif btype == dpkt.pcapng.PCAPNG_BT_EPB:
                if blen < 32:
                    rs.warning = f"corrupt packet block after {n} records"
                    break
                iface, th, tl, caplen, _wl = struct.unpack_from("<IIIII" if le else ">IIIII", block, 8)
                if iface >= len(ifaces) or 28 + caplen > blen - 4:
                    rs.warning = f"packet block with unknown interface {iface} or bad length after {n} records"
                    break
                lt, div, off = ifaces[iface]
                n += 1
                yield off + ((th << 32) | tl) / div, lt, block[28 : 28 + caplen]
            elif btype == dpkt.pcapng.PCAPNG_BT_SPB:
                if not ifaces or blen < 16:
                    rs.warning = f"simple packet block without interface after {n} records"
                    break
                (wl,) = struct.unpack_from("<I" if le else ">I", block, 8)
                lt, snap = ifaces[0][0], blen - 16
                n += 1
                yield 0.0, lt, block[12 : 12 + min(wl, snap)]
            elif btype == dpkt.pcapng.PCAPNG_BT_PB:  # obsolete Packet Block
                if blen < 32:
                    rs.warning = f"corrupt packet block after {n} records"
                    break
                iface, _drops, th, tl, caplen, _wl = struct.unpack_from("<HHIIII" if le else ">HHIIII", block, 8)
                if iface >= len(ifaces) or 28 + caplen > blen - 4:
                    rs.warning = f"packet block with unknown interface {iface} or bad length after {n} records"
                    break
                lt, div, off = ifaces[iface]
                n += 1
                yield off + ((th << 32) | tl) / div, lt, block[28 : 28 + caplen]
            # other blocks (name resolution, statistics, custom, ...) carry no packets
    except (OSError, EOFError, gzip.BadGzipFile, ValueError, struct.error) as e:
        rs.warning = f"read error after {n} records: {e}"
    finally:
        rs.records = n


def _parse_idb(block: bytes, le: bool) -> tuple[int, float, int]:
    """(link type, timestamp ticks per second, timestamp offset) of an Interface Description Block.
    dpkt parses the block and its options; a damaged option list falls back to the defaults."""
    linktype = struct.unpack_from("<H" if le else ">H", block, 8)[0]
    div, offset = 1e6, 0
    try:
        idb = dpkt.pcapng.InterfaceDescriptionBlockLE(block) if le else dpkt.pcapng.InterfaceDescriptionBlock(block)
        for opt in idb.opts:
            if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and len(opt.data) >= 1:
                v = opt.data[0]
                div = float(2 ** (v & 0x7F) if v & 0x80 else 10 ** (v & 0x7F))
            elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
                offset = struct.unpack_from("<q" if le else ">q", opt.data)[0]
    except Exception:  # dpkt raises assorted errors on damaged options; defaults are documented
        pass
    return linktype, div, offset

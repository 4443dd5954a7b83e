"""Helpers shared by the tests/test_data_*.py files: paths and crafted captures."""

import gzip
import struct
from pathlib import Path

import dpkt

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEMO = REPO / "data" / "demo" / "loopback9"


def tcp_packet(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", sport=40000, dport=80, flags=dpkt.tcp.TH_SYN,
               seq=1000, ack=0, payload=b"", ttl=64, ip_id=1, opts=b""):
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, opts=opts, data=payload)
    tcp.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, ttl=ttl, id=ip_id, data=tcp)
    ip.len = len(bytes(ip))
    return bytes(ip)


def udp_packet(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", sport=5353, dport=53, payload=b"q"):
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=src, dst=dst, p=17, data=udp)
    ip.len = len(bytes(ip))
    return bytes(ip)


def ether(ip: bytes, ethertype=0x0800, vlans=()):
    hdr = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb"
    for tpid, vid in vlans:
        hdr += struct.pack(">HH", tpid, vid)
    return hdr + struct.pack(">H", ethertype) + ip


def write_pcap(path, records, linktype=1, byteorder="<", nano=False, gz=False):
    """records: [(ts, frame)]"""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for ts, frame in records:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        out += struct.pack(byteorder + "IIII", sec, frac, len(frame), len(frame)) + frame
    Path(path).write_bytes(gzip.compress(out) if gz else out)
    return path


def _block(btype, body):
    body += b"\x00" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(path, interfaces, packets):
    """interfaces: [(linktype, tsresol_byte or None)]; packets: [(iface, ticks, frame)]"""
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt, res in interfaces:
        opts = b""
        if res is not None:
            opts = struct.pack("<HH", 9, 1) + bytes([res]) + b"\x00\x00\x00" + struct.pack("<HH", 0, 0)
        out += _block(1, struct.pack("<HHI", lt, 0, 65535) + opts)
    for iface, ticks, frame in packets:
        out += _block(6, struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame)) + frame)
    Path(path).write_bytes(out)
    return path

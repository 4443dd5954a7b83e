"""Bidirectional flows from decoded packets.

Flow definition (the same as ``../shared/tools/cut-flows.py``, the reference the datasets were cut
with):

* key = protocol + the unordered pair of endpoints ``{(ip, port), (ip, port)}``;
* TCP: a SYN without ACK starts a *new* flow on that key (ports are reused) unless it repeats the
  initial sequence number of the SYN that started the current flow (a retransmitted SYN);
* idle timeouts: a packet arriving more than ``udp_timeout`` (UDP) / ``tcp_timeout`` (TCP) seconds
  after the previous packet of the flow starts a new flow;
* the client (direction 0) is the sender of the flow's first packet — or its receiver when that
  first packet is a SYN/ACK (the capture started mid-handshake); direction 1 is server → client.

Each flow keeps its first ``max_packets`` packets (anonymised, cut to ``max_bytes``) with their
direction, IP length and timestamp, and counts all the others.
"""

from __future__ import annotations

from .anonymize import anonymize
from .decode import Decoded

__all__ = ["Flow", "FlowTable", "bursts"]


class Flow:
    __slots__ = (
        "index", "proto", "version", "client", "server", "isn", "start", "last", "count", "nbytes",
        "packets", "directions", "lengths", "times", "header_fields",
    )

    def __init__(self, index, proto, version, client, server, isn, ts):
        self.index = index
        self.proto = proto
        self.version = version
        self.client = client  # (ip bytes, port)
        self.server = server
        self.isn = isn
        self.start = ts
        self.last = ts
        self.count = 0
        self.nbytes = 0
        self.packets = []
        self.directions = []
        self.lengths = []
        self.times = []
        self.header_fields = ()

    def five_tuple(self) -> str:
        """``"tcp 10.0.0.1:51000-10.0.0.2:443"`` (client first)."""
        return f"{'tcp' if self.proto == 6 else 'udp'} {_ep(self.client)}-{_ep(self.server)}"


def hidden_header_fields(d: Decoded) -> tuple[int, int, int, int]:
    """The first packet's header values that anonymisation hides and addresses/ports do not cover:
    TTL (hop limit), IP ID, IP header checksum, TCP/UDP checksum (0 where the header has none).
    Kept as flow metadata only (``header_fields``) for the shortcut audit of `traffic-moe evaluate`."""
    ip = d.ip
    l4_checksum_at = d.l4 + (16 if d.proto == 6 else 6)
    l4_checksum = (ip[l4_checksum_at] << 8 | ip[l4_checksum_at + 1]) if len(ip) >= l4_checksum_at + 2 else 0
    if d.version == 4:
        return (ip[8], ip[4] << 8 | ip[5], ip[10] << 8 | ip[11], l4_checksum)
    return (ip[7], 0, 0, l4_checksum)


def _ip_str(b: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(bytes(b)))


def _ep(e) -> str:
    ip = _ip_str(e[0])
    return f"[{ip}]:{e[1]}" if ":" in ip else f"{ip}:{e[1]}"


def _pair_key(proto: int, a: tuple, b: tuple) -> tuple:
    return (proto, a, b) if a <= b else (proto, b, a)


class FlowTable:
    """Assigns packets to flows. ``add`` returns ``True`` when the packet is kept in its flow's
    sample (one of the first ``max_packets``), ``False`` when it was only counted."""

    def __init__(self, max_packets=8, max_bytes=64, ttl="mask", anonymize_packets=True,
                 udp_timeout=60.0, tcp_timeout=3600.0):
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.anon = anonymize_packets
        self.udp_timeout = udp_timeout
        self.tcp_timeout = tcp_timeout
        self.open: dict = {}
        self.done: list[Flow] = []
        self.n = 0

    @staticmethod
    def key(d: Decoded) -> tuple:
        """The direction-free flow key of a packet: protocol + the unordered pair of endpoints."""
        return _pair_key(d.proto, (d.src, d.sport), (d.dst, d.dport))

    def add(self, ts: float, d: Decoded) -> bool:
        a = (d.src, d.sport)
        b = (d.dst, d.dport)
        key = _pair_key(d.proto, a, b)
        f = self.open.get(key)
        syn = d.proto == 6 and (d.flags & 0x12) == 0x02
        if f is not None:
            if syn and f.isn != d.seq:
                self.done.append(f)
                f = None
            elif ts - f.last > (self.tcp_timeout if d.proto == 6 else self.udp_timeout):
                self.done.append(f)
                f = None
        if f is None:
            if d.proto == 6 and (d.flags & 0x12) == 0x12:  # first packet seen is a SYN/ACK
                f = Flow(self.n, d.proto, d.version, b, a, None, ts)
            else:
                f = Flow(self.n, d.proto, d.version, a, b, d.seq if syn else None, ts)
            f.header_fields = hidden_header_fields(d)
            self.n += 1
            self.open[key] = f
        f.count += 1
        f.nbytes += d.ip_len
        if ts > f.last:
            f.last = ts
        if len(f.packets) < self.max_packets:
            f.packets.append(anonymize(d, self.max_bytes, self.ttl) if self.anon else bytes(d.ip[: self.max_bytes]))
            f.directions.append(0 if a == f.client else 1)
            f.lengths.append(d.ip_len)
            f.times.append(ts)
            return True
        return False

    def finish(self) -> list[Flow]:
        """All flows (closed and still open), in order of their first packet."""
        flows = self.done + list(self.open.values())
        self.open = {}
        self.done = []
        flows.sort(key=lambda f: f.index)
        return flows


def bursts(directions, lengths=None):
    """Bursts of a packet sequence: maximal runs of consecutive packets in the same direction.
    Returns ``(direction, packets, bytes)`` per burst (``bytes`` = sum of ``lengths``, 0 without)."""
    out = []
    for i, d in enumerate(directions):
        ln = lengths[i] if lengths is not None else 0
        if out and out[-1][0] == d:
            out[-1][1] += 1
            out[-1][2] += ln
        else:
            out.append([d, 1, ln])
    return [tuple(x) for x in out]

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
direction, IP length, timestamp and TCP sequence number relative to the first one seen in that
direction (``seqs``; empty for UDP flows), and counts all the others.

**TCP normalisation** (``normalize_tcp=True``, the default), as stream normalisers in IDSs do before
inspection: while a flow still has room in its sample, a TCP segment is left out of it — counted
under its reason — when it carries

* ``tcp_retransmission``: only payload bytes the flow has already carried in that direction
  (a retransmitted or duplicated segment; keep-alive probes too);
* ``tcp_out_of_window``: payload whose sequence number lies more than ``TCP_WINDOW_LIMIT`` bytes
  (16 MiB) away from the stream seen so far — the receiver would drop it.

Segments without payload (handshake, pure ACKs, FIN/RST) are never left out. Chaff made of such
segments (an evasion trick; ``robustness.attacks.Chaff``) therefore never takes a place among the
packets the model reads.

**TCP write coalescing** (``coalesce_tcp=True``; off by default): a data segment that continues the
byte stream of the last data segment its direction has in the sample, when that one does not carry
PSH/FIN (the sender had not finished that write) and only the peer's pure ACKs came in between, is
merged into it: one "packet" with the first segment's header, the IP length of both, their payloads
concatenated and the later one's PSH/FIN. A pure ACK that directly follows a pure ACK of the same
direction is merged into it too (the receiver acknowledging a write piece by piece). Splitting a
write into several segments — a smaller MSS or MTU, or an evasion tool
(``robustness.attacks.Split``) — then reaches the model as the write it was, followed by one ACK.
Merged segments count as used packets (``Flow.merged``).
"""

from __future__ import annotations

from .anonymize import anonymize
from .decode import Decoded
from .headers import tcp_header_length

__all__ = ["Flow", "FlowTable", "TcpNormalizer", "tcp_normalize", "coalesce", "merge_segment", "tcp_coalesce", "bursts",
           "TCP_WINDOW_LIMIT"]

TCP_WINDOW_LIMIT = 1 << 24


class TcpNormalizer:
    """Per-direction TCP stream state of one flow: which payload sequence ranges were seen.
    ``check(direction, seq, payload_len, flags)`` returns ``None`` (keep) or the reason to leave the
    segment out (``"tcp_retransmission"`` / ``"tcp_out_of_window"``) and records kept data. It also
    returns the segment's sequence number relative to the first one seen in that direction
    (``relative(direction, seq)``), which is what the dataset stores."""

    __slots__ = ("base", "seen")

    def __init__(self):
        self.base = [None, None]  # first sequence number seen per direction
        self.seen = [[], []]  # merged [start, end) payload ranges, relative to base

    def relative(self, direction: int, seq: int) -> int:
        base = self.base[direction]
        if base is None:
            self.base[direction] = base = seq
        rel = (seq - base) & 0xFFFFFFFF
        return rel - (1 << 32) if rel >= 1 << 31 else rel  # signed: segments before the first one seen

    def check(self, direction: int, seq: int, payload_len: int, flags: int = 0):
        rel = self.relative(direction, seq)
        if flags & 0x02:  # SYN occupies one sequence number; its data (TCP Fast Open) follows it
            rel += 1
        if payload_len <= 0:
            return None
        seen = self.seen[direction]
        end = rel + payload_len
        if seen:
            lo, hi = seen[0][0], seen[-1][1]
            if rel > hi + TCP_WINDOW_LIMIT or end < lo - TCP_WINDOW_LIMIT:
                return "tcp_out_of_window"
            if any(s <= rel and end <= e for s, e in seen):
                return "tcp_retransmission"
        elif abs(rel) > TCP_WINDOW_LIMIT:
            return "tcp_out_of_window"
        if not seen or rel >= seen[-1][1]:  # in order (the common case): extend or append
            if seen and rel == seen[-1][1]:
                seen[-1] = (seen[-1][0], end)
            else:
                seen.append((rel, end))
            return None
        merged = []
        for s, e in sorted(seen + [(rel, end)]):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self.seen[direction] = merged
        return None


def _headers_length(packet: bytes) -> int:
    """IP + TCP header bytes of a stored TCP packet (0 when it does not parse)."""
    from .decode import parse_ip

    d = parse_ip(bytes(packet))
    if type(d) is not Decoded or len(packet) <= d.l4 + 12:
        return 0
    return d.l4 + tcp_header_length(packet, d.l4)


def tcp_payload_length(d: Decoded) -> int:
    """Payload bytes of a decoded TCP segment as on the wire (IP length minus all headers)."""
    ip = d.ip
    doff = tcp_header_length(ip, d.l4) if len(ip) > d.l4 + 12 else 20
    return max(0, d.ip_len - d.l4 - doff)


class Flow:
    __slots__ = (
        "index", "proto", "version", "client", "server", "isn", "start", "last", "count", "nbytes",
        "packets", "directions", "lengths", "times", "seqs", "header_fields", "tcp", "merged", "dropped",
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
        self.seqs = []
        self.merged = 0  # segments coalesced into an earlier stored packet (see coalesce_tcp)
        self.dropped = 0  # packets TCP normalisation left out of the sample (counted under their reason)
        self.header_fields = ()
        self.tcp = TcpNormalizer() if proto == 6 else None

    def five_tuple(self) -> str:
        """``"tcp 10.0.0.1:51000-10.0.0.2:443"`` (client first)."""
        return f"{'tcp' if self.proto == 6 else 'udp'} {_ep(self.client)}-{_ep(self.server)}"


def coalesce(prev: bytes, cur: bytes, max_bytes: int) -> bytes | None:
    """``cur`` (a TCP segment from the IP header, possibly cut) appended to ``prev`` as one packet cut
    to ``max_bytes``, or None when the two may not be merged: not both TCP of the same IP version,
    ``prev`` carries SYN/RST/PSH/FIN or ``cur`` SYN/RST, either has no payload, or the merged IP
    length would exceed 65535. Sequence contiguity is the caller's check. The IP length field and the
    TCP flags (PSH/FIN of ``cur``) are updated; checksums are not (anonymisation zeroes them)."""
    from .decode import parse_ip

    a, b = parse_ip(bytes(prev)), parse_ip(bytes(cur))
    if type(a) is not Decoded or type(b) is not Decoded or a.proto != 6 or b.proto != 6 or a.version != b.version:
        return None
    if a.flags & 0x0F or b.flags & 0x06:  # prev: FIN/SYN/RST/PSH; cur: SYN/RST
        return None
    add = tcp_payload_length(b)
    if tcp_payload_length(a) <= 0 or add <= 0 or a.ip_len + add > 65535:
        return None
    out = bytearray(prev[:max_bytes])
    if len(prev) >= a.ip_len:  # prev is complete: the merged prefix continues with cur's payload
        start = b.l4 + tcp_header_length(cur, b.l4)
        out += cur[start : start + max(0, max_bytes - len(out))]
    total = a.ip_len + add
    if a.version == 4:
        out[2:4] = total.to_bytes(2, "big")
    else:
        out[4:6] = (total - 40).to_bytes(2, "big")
    if len(out) > a.l4 + 13:
        out[a.l4 + 13] |= b.flags & 0x09
    return bytes(out)


def _is_pure_ack(flags: int, payload_len: int) -> bool:
    return payload_len == 0 and not flags & 0x07  # no payload, no SYN/FIN/RST


def merge_segment(sample, cur: bytes, direction: int, seq: int, payload_len: int, flags: int, max_bytes: int) -> bool:
    """Coalesce TCP segment ``cur`` (stored bytes from the IP header) into ``sample`` — a dict of the
    flow's lists ``packets``, ``directions``, ``seqs`` (sequence numbers, relative or absolute) and
    ``lengths`` (IP lengths) — when the rules of the module docstring allow; returns whether it did."""
    packets, dirs, seqs, lengths = sample["packets"], sample["directions"], sample["seqs"], sample["lengths"]
    if not packets:
        return False
    if _is_pure_ack(flags, payload_len):
        if dirs[-1] == direction and _is_pure_ack(_flags_of(packets[-1]), lengths[-1] - _headers_length(packets[-1])):
            return True
        return False
    if payload_len <= 0:
        return False
    j = len(packets) - 1
    while j >= 0 and dirs[j] != direction:  # only the peer's pure ACKs may lie between
        if not _is_pure_ack(_flags_of(packets[j]), lengths[j] - _headers_length(packets[j])):
            return False
        j -= 1
    if j < 0:
        return False
    prev_payload = lengths[j] - _headers_length(packets[j])
    if prev_payload <= 0 or (seqs[j] + prev_payload - seq) & 0xFFFFFFFF:
        return False
    merged = coalesce(packets[j], cur, max_bytes)
    if merged is None:
        return False
    packets[j] = merged
    lengths[j] += payload_len
    return True


def _flags_of(packet: bytes) -> int:
    from .decode import parse_ip

    d = parse_ip(bytes(packet))
    return d.flags if type(d) is Decoded and d.proto == 6 else 0x04  # not TCP: never merged


def tcp_coalesce(packets, directions, max_bytes: int) -> tuple[list, list]:
    """:class:`FlowTable`'s write coalescing applied to one flow's packets (sequence numbers as on the
    wire or written back by :func:`.samples.restore_headers`): returns the merged packets and, for
    each, the index of the first original packet it holds."""
    from .decode import parse_ip

    sample = {"packets": [], "directions": [], "seqs": [], "lengths": []}
    first = []
    for i, (p, direction) in enumerate(zip(packets, directions)):
        d = parse_ip(bytes(p))
        if type(d) is Decoded and d.proto == 6:
            if merge_segment(sample, bytes(p), direction, d.seq, tcp_payload_length(d), d.flags, max_bytes):
                continue
            seq, length = d.seq, d.ip_len
        else:
            seq, length = 0, len(p)
        sample["packets"].append(bytes(p))
        sample["directions"].append(direction)
        sample["seqs"].append(seq)
        sample["lengths"].append(length)
        first.append(i)
    return sample["packets"], first


def tcp_normalize(packets, directions) -> list:
    """The TCP normalisation of :class:`FlowTable` applied to one flow's packets (from the IP header;
    sequence numbers as on the wire or as :func:`.samples.restore_headers` writes them back): per
    packet ``None`` (kept) or the reason it is left out. Non-TCP packets are always kept."""
    from .decode import parse_ip

    state = TcpNormalizer()
    out = []
    for p, direction in zip(packets, directions):
        d = parse_ip(bytes(p))
        if type(d) is not Decoded or d.proto != 6:
            out.append(None)
            continue
        out.append(state.check(int(direction), d.seq, tcp_payload_length(d), d.flags))
    return out


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


def parse_five_tuple(text: str) -> tuple[str, tuple[str, int], tuple[str, int]]:
    """The inverse of :meth:`Flow.five_tuple`: ``("tcp", (client host, port), (server host, port))``, hosts as
    written (IPv6 ones in brackets); ValueError when ``text`` is not in that form."""
    proto, endpoints = text.split(" ", 1)
    client, server = endpoints.split("-", 1)  # addresses never contain '-' (IPv6 ones are bracketed)

    def endpoint(e: str) -> tuple[str, int]:
        host, port = e.rsplit(":", 1)
        return host, int(port)

    return proto, endpoint(client), endpoint(server)


def _pair_key(proto: int, a: tuple, b: tuple) -> tuple:
    return (proto, a, b) if a <= b else (proto, b, a)


class FlowTable:
    """Assigns packets to flows. ``add`` returns ``True`` when the packet is kept in its flow's
    sample (one of the first ``max_packets``), ``False`` when it was only counted (the sample is
    full), or a reason string when TCP normalisation left it out of the sample.

    ``tunnels`` (``"decap"`` / ``"outer"``) is how the packets given to ``add`` are to be decoded
    (``decode(linktype, frame, table.tunnels)``): the table does not decode, but it carries the setting
    with the others of flow assembly, so a reader handed a table (``predict``) decodes as ``prepare`` did."""

    def __init__(self, max_packets=8, max_bytes=64, ttl="mask", anonymize_packets=True,
                 udp_timeout=60.0, tcp_timeout=3600.0, normalize_tcp=True, coalesce_tcp=False, tunnels="decap"):
        from .decode import TUNNEL_MODES

        if tunnels not in TUNNEL_MODES:
            raise ValueError(f"tunnels must be one of {', '.join(TUNNEL_MODES)}, not {tunnels!r}")
        self.tunnels = tunnels
        self.max_packets = max_packets
        self.normalize_tcp = normalize_tcp
        self.coalesce_tcp = coalesce_tcp
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.anon = anonymize_packets
        self.udp_timeout = udp_timeout
        self.tcp_timeout = tcp_timeout
        self.open: dict = {}
        self.done: list[Flow] = []
        self.n = 0
        self.taken = (None,) * max_packets  # what a flow holds once its sample is taken (see take_sample)

    @staticmethod
    def key(d: Decoded) -> tuple:
        """The direction-free flow key of a packet: protocol + the unordered pair of endpoints."""
        return _pair_key(d.proto, (d.src, d.sport), (d.dst, d.dport))

    def add(self, ts: float, d: Decoded, index: int | None = None) -> bool:
        """``index``: the number a new flow gets (default: flows created so far; ``prepare`` passes the
        packet's position in the capture, so that flows numbered in separate processes sort alike)."""
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
            n = self.n if index is None else index
            if d.proto == 6 and (d.flags & 0x12) == 0x12:  # first packet seen is a SYN/ACK
                f = Flow(n, d.proto, d.version, b, a, None, ts)
            else:
                f = Flow(n, d.proto, d.version, a, b, d.seq if syn else None, ts)
            f.header_fields = hidden_header_fields(d)
            self.n += 1
            self.open[key] = f
        f.count += 1
        f.nbytes += d.ip_len
        if ts > f.last:
            f.last = ts
        if len(f.packets) < self.max_packets:
            if f.tcp is not None:
                direction = 0 if a == f.client else 1
                if self.normalize_tcp:
                    reason = f.tcp.check(direction, d.seq, tcp_payload_length(d), d.flags)
                    if reason is not None:
                        f.dropped += 1
                        return reason
                rel = f.tcp.relative(direction, d.seq)
                if self.coalesce_tcp and f.packets:
                    stored = anonymize(d, self.max_bytes, self.ttl) if self.anon else bytes(d.ip[: self.max_bytes])
                    sample = {"packets": f.packets, "directions": f.directions, "seqs": f.seqs, "lengths": f.lengths}
                    if merge_segment(sample, stored, direction, rel, tcp_payload_length(d), d.flags, self.max_bytes):
                        f.merged += 1
                        return True
                f.seqs.append(rel)
            f.packets.append(anonymize(d, self.max_bytes, self.ttl) if self.anon else bytes(d.ip[: self.max_bytes]))
            f.directions.append(0 if a == f.client else 1)
            f.lengths.append(d.ip_len)
            f.times.append(ts)
            return True
        return False

    def take_sample(self, f: Flow) -> tuple[list, list]:
        """Hand over a flow's stored packets and directions, and go on counting the flow without storing
        more. For a flow holding ``max_packets`` packets the sample is final: ``predict`` classifies it then
        and keeps only the flow's counters until it ends, so an open flow costs a few hundred bytes instead
        of its packets. ``f.packets is table.taken`` tells a flow whose sample was taken."""
        sample = (f.packets, f.directions)
        f.packets = f.directions = f.lengths = f.times = f.seqs = self.taken  # len() == max_packets: full
        return sample

    def sample_left(self, f: Flow) -> tuple[list, list] | None:
        """A flow's packets and directions, or None when :meth:`take_sample` already handed them over."""
        return None if f.packets is self.taken else (f.packets, f.directions)

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

"""Traffic-shaping attacks: seeded transforms of a flow's packets, applied *before* tokenization.

Every attack takes a flow (packets starting at the IP header, directions 0/1, relative timestamps)
and returns a new flow that a real sender could put on the wire:

* IPv4 total length / IPv6 payload length / UDP length are set to the new on-wire length, header
  checksums are recomputed (over the bytes the packet has), TCP sequence numbers advance by the
  bytes each segment carries and later segments and the peer's acknowledgements are shifted by the
  bytes an attack inserted into the stream (on anonymised flows these fields are zero and are zeroed
  again, but on full captures the transforms keep sequence semantics);
* packets stay within the 1500-byte MTU, TTL in 1..255, window in 0..65535, TCP options well-formed.

**Truncated packets.** Prepared datasets store each packet cut to its first ``max_bytes`` (64) bytes
while the IP header keeps the original total length. An attack first *materialises* such a packet:
the header and the stored payload prefix are kept, the payload bytes that were never stored are
filled with seeded random bytes (what an encrypted payload looks like). It then edits the complete
packet and cuts the result back to the flow's stored length, so a transformed packet is represented
exactly as ``prepare`` represents a real one: full on-wire length in the header, first M bytes
stored. Where a later segment of a split starts beyond the stored prefix, the model therefore sees
filler bytes instead of the (unknown) real continuation — a documented approximation
(``docs/robustness.md``).

Attacks (``name`` → strength parameter):

``padding``  bytes added per data packet (random bytes before the payload; capped by the MTU;
             ``1500`` fills every data packet to the MTU). Cooperating endpoints (an evasion tunnel)
             strip them.
``split``    each TCP data segment is split into up to N smaller segments (PSH/FIN on the last).
``chaff``    chaff packets per real packet (≤ 1: probability; 1 = one after every packet): TCP
             retransmitted duplicates, out-of-window segments (sequence number 2^31 away, dropped by
             the receiver) and, for UDP, dummy datagrams, with random payload and the flow's headers.
``normalize`` fixed packet size S: TCP data is re-segmented to payloads that fit S and every data
             packet is padded to exactly S bytes (what defensive shaping tools do).
``headers``  fraction of each field's valid range the fields anonymisation keeps may move: TTL / hop
             limit (one value per direction, 1..255), TCP window (0..65535), MSS (536..65535) and
             window-scale (0..14) option values and the order of the SYN's TCP options.
"""

from __future__ import annotations

import hashlib
import numbers
import struct
from dataclasses import dataclass, field

import numpy as np

from ..data.anonymize import anonymize
from ..data.decode import Decoded, parse_ip
from ..data.headers import payload_start

__all__ = [
    "Flow", "Attack", "Padding", "Split", "Chaff", "Normalize", "Headers", "ATTACKS", "DEFAULT_BUDGETS",
    "make_attack", "packet_info", "reanonymize", "row_seed", "MTU", "attack_columns", "attacked_dataset",
]

MTU = 1500
TCP, UDP = 6, 17
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class Flow:
    """One flow: packets from the IP header, directions (0 client→server, 1 back), relative times.
    ``editable[i]`` lists byte ranges ``(start, end)`` of packet i that an attack inserted and a
    white-box attacker may choose freely (padding, chaff payload)."""

    packets: list
    directions: list
    timestamps: list | None = None
    editable: list | None = None

    def __post_init__(self):
        self.packets = [bytes(p) for p in self.packets]
        self.directions = [int(d) for d in self.directions]
        if self.timestamps is None:
            self.timestamps = [i * 1e-3 for i in range(len(self.packets))]
        self.timestamps = [float(t) for t in self.timestamps]
        if self.editable is None:
            self.editable = [[] for _ in self.packets]

    @property
    def ip_lengths(self) -> list[int]:
        out = []
        for p in self.packets:
            info = packet_info(p)
            out.append(info["ip_len"] if info else len(p))
        return out


def packet_info(p: bytes) -> dict | None:
    """Header layout of one packet (from the IP header), or None when it does not parse as TCP/UDP
    or its TCP/UDP header is not fully stored."""
    d = parse_ip(bytes(p))
    if type(d) is not Decoded:
        return None
    hdr_end = payload_start(p, d.l4, d.proto)
    if len(p) < hdr_end:
        return None
    ip_len = d.ip_len if d.version == 4 else 40 + ((p[4] << 8) | p[5])
    if ip_len < hdr_end:
        return None
    return {"version": d.version, "proto": d.proto, "l4": d.l4, "hdr_end": hdr_end, "ip_len": ip_len,
            "flags": d.flags, "truncated": len(p) < ip_len, "decoded": d}


def row_seed(seed: int, *parts) -> int:
    """A stable 63-bit seed from a base seed and any identifying parts (row index, attack name...)."""
    h = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def reanonymize(packet: bytes, max_bytes: int = 64, ttl: str = "mask", enabled: bool = True) -> bytes:
    """The packet as `traffic-moe prepare` would store it (anonymised, first ``max_bytes`` bytes)."""
    if not enabled:
        return bytes(packet[:max_bytes])
    d = parse_ip(bytes(packet))
    if type(d) is not Decoded:
        return bytes(packet[:max_bytes])
    return anonymize(d, max_bytes, ttl)


# ------------------------------------------------------------------------------------ packet model
@dataclass
class _Pkt:
    """A parsed packet being edited: full header, full (materialised) payload, bookkeeping."""

    hdr: bytearray | None  # None: not TCP/UDP (passed through unchanged in ``raw``)
    payload: bytes
    direction: int
    ts: float
    info: dict | None
    raw: bytes = b""
    group: int = 0  # index of the original packet it comes from
    seq_rel: int = 0  # offset of its first payload byte in the original's (new) payload
    grow: int = 0  # bytes this packet adds to its direction's stream (padding)
    chaff: bool = False  # not part of the stream (duplicate / out-of-window / dummy)
    seq_abs: int | None = None  # chaff: explicit sequence number
    editable: list = field(default_factory=list)  # payload ranges (start, end)

    @property
    def proto(self):
        return self.info["proto"] if self.info else None

    @property
    def flags(self) -> int:
        return self.hdr[self.info["l4"] + 13] if self.info and self.proto == TCP else 0

    def set_flags(self, flags: int):
        self.hdr[self.info["l4"] + 13] = flags & 0xFF

    def copy(self, **changes) -> "_Pkt":
        new = _Pkt(bytearray(self.hdr) if self.hdr is not None else None, self.payload, self.direction, self.ts,
                   self.info, self.raw, self.group, self.seq_rel, self.grow, self.chaff, self.seq_abs,
                   list(self.editable))
        for k, v in changes.items():
            setattr(new, k, v)
        return new

    @property
    def size(self) -> int:
        return len(self.hdr) + len(self.payload) if self.hdr is not None else len(self.raw)


def _materialise(flow: Flow, rng: np.random.Generator) -> tuple[list[_Pkt], bool]:
    out = []
    truncated = False
    for i, (p, d, t) in enumerate(zip(flow.packets, flow.directions, flow.timestamps)):
        info = packet_info(p)
        if info is None:
            out.append(_Pkt(None, b"", d, t, None, raw=bytes(p), group=i))
            continue
        known = bytes(p[info["hdr_end"] : info["ip_len"]])
        missing = info["ip_len"] - info["hdr_end"] - len(known)
        if missing > 0:
            truncated = True
            known += rng.bytes(missing)
        out.append(_Pkt(bytearray(p[: info["hdr_end"]]), known, d, t, info, group=i))
    return out, truncated


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _assemble(pkts: list[_Pkt], snap: int | None) -> Flow:
    """Bytes of the edited packets: lengths, sequence/ack shifts, checksums, then the stored cut."""
    inserted = [0, 0]
    base = {}
    packets, dirs, times, editable = [], [], [], []
    for k in pkts:
        if k.hdr is None:
            packets.append(k.raw if snap is None else k.raw[:snap])
            dirs.append(k.direction)
            times.append(k.ts)
            editable.append([])
            continue
        info = k.info
        b = bytearray(k.hdr)
        l4 = info["l4"]
        total = len(b) + len(k.payload)
        if info["version"] == 4:
            struct.pack_into(">H", b, 2, total)
        else:
            struct.pack_into(">H", b, 4, total - 40)
        d = k.direction
        if info["proto"] == TCP:
            seq, ack = struct.unpack_from(">II", b, l4 + 4)
            if k.chaff:
                if k.seq_abs is not None:
                    seq = k.seq_abs
            else:
                if k.group not in base:
                    base[k.group] = inserted[d]
                seq = seq + base[k.group] + k.seq_rel
            if b[l4 + 13] & ACK:
                ack = ack + inserted[1 - d]
            struct.pack_into(">II", b, l4 + 4, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF)
        else:
            struct.pack_into(">H", b, l4 + 4, total - l4)
        if not k.chaff:
            inserted[d] += k.grow
        full = b + k.payload
        if info["version"] == 4:  # header checksum, then the TCP/UDP checksum over the pseudo-header
            full[10:12] = b"\0\0"
            struct.pack_into(">H", full, 10, _checksum(bytes(full[:l4])))
            pseudo = bytes(full[12:20]) + struct.pack(">BBH", 0, info["proto"], total - l4)
        else:
            pseudo = bytes(full[8:40]) + struct.pack(">IxxxB", total - l4, info["proto"])
        csum_at = l4 + (16 if info["proto"] == TCP else 6)
        full[csum_at : csum_at + 2] = b"\0\0"
        c = _checksum(pseudo + bytes(full[l4:]))
        struct.pack_into(">H", full, csum_at, c if (c or info["proto"] == TCP) else 0xFFFF)
        out = bytes(full) if snap is None else bytes(full[: max(snap, 0)])
        packets.append(out)
        dirs.append(d)
        times.append(k.ts)
        hdr_len = len(b)
        editable.append([(hdr_len + s, min(hdr_len + e, len(out))) for s, e in k.editable if hdr_len + s < len(out)])
    return Flow(packets, dirs, times, editable)


def _is_data(k: _Pkt) -> bool:
    if k.hdr is None or not k.payload:
        return False
    return k.proto == UDP or not (k.flags & (SYN | RST))


# ----------------------------------------------------------------------------------------- attacks
class Attack:
    """A seeded flow transform. ``attack(flow, seed)`` returns a new :class:`Flow`."""

    name = "attack"
    unit = ""
    #: valid strengths: (lowest, highest or None, whole numbers only)
    limits = (0, None, False)

    def __init__(self, strength):
        lo, hi, whole = self.limits
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or strength != strength:
            raise ValueError(f"{self.name}: strength must be a number ({self.unit}), got {strength!r}")
        if whole and strength != int(strength):
            raise ValueError(f"{self.name}: strength must be a whole number ({self.unit}), got {strength!r}")
        if strength < lo or (hi is not None and strength > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"{self.name}: strength must be {bound} ({self.unit}), got {strength!r}")
        self.strength = int(strength) if whole else float(strength)

    def __repr__(self):
        return f"{type(self).__name__}({self.strength!r})"

    def edit(self, pkts: list[_Pkt], rng: np.random.Generator) -> list[_Pkt]:
        raise NotImplementedError

    def __call__(self, flow: Flow, seed: int = 0, snap: int | None = None) -> Flow:
        """Transform ``flow``. Packets that were stored truncated are cut back to ``snap`` bytes
        (default: the longest stored packet of the flow); complete packets stay complete."""
        if not isinstance(flow, Flow):
            flow = Flow(*flow)
        rng = np.random.default_rng(row_seed(seed, self.name, self.strength))
        pkts, truncated = _materialise(flow, rng)
        edited = self.edit(pkts, rng)
        if truncated and snap is None:
            snap = max((len(p) for p in flow.packets), default=0)
        return _assemble(edited, snap if truncated else None)


def _random_payload(rng, n: int) -> bytes:
    return rng.bytes(int(n))


class Padding(Attack):
    """``strength`` bytes of padding added to every data packet (capped so the packet fits the MTU).
    ``position='start'`` puts them before the application data (visible to a byte model; the
    evasion tool's peer strips them), ``'end'`` after it (only lengths change)."""

    name = "padding"
    unit = "bytes/packet"
    limits = (0, 65535, True)

    def __init__(self, strength: int, position: str = "start", fill: str = "random"):
        super().__init__(strength)
        self.position, self.fill = position, fill

    def edit(self, pkts, rng):
        out = []
        for k in pkts:
            if _is_data(k):
                add = max(0, min(self.strength, MTU - k.size))
                if add:
                    pad = _random_payload(rng, add) if self.fill == "random" else bytes(add)
                    if self.position == "start":
                        k = k.copy(payload=pad + k.payload, grow=k.grow + add, editable=[(0, add)])
                    else:
                        k = k.copy(payload=k.payload + pad, grow=k.grow + add,
                                   editable=[(len(k.payload), len(k.payload) + add)])
            out.append(k)
        return out


def _segment(k: _Pkt, sizes: list[int], gap: float = 1e-6) -> list[_Pkt]:
    """Split TCP packet ``k`` into consecutive segments of the given payload sizes."""
    flags = k.flags
    out = []
    start = 0
    for j, n in enumerate(sizes):
        last = j == len(sizes) - 1
        piece = k.copy(payload=k.payload[start : start + n], seq_rel=k.seq_rel + start, ts=k.ts + j * gap,
                       grow=k.grow if last else 0,
                       editable=[(max(s - start, 0), min(e - start, n)) for s, e in k.editable if e > start and s < start + n])
        piece.set_flags(flags if last else flags & ~(PSH | FIN))
        out.append(piece)
        start += n
    return out


class Split(Attack):
    """Each TCP data segment split into ``strength`` segments (fewer when it has fewer bytes)."""

    name = "split"
    unit = "segments/segment"
    limits = (1, None, True)

    def __init__(self, strength: int):
        super().__init__(strength)

    def edit(self, pkts, rng):
        out = []
        for k in pkts:
            if self.strength > 1 and _is_data(k) and k.proto == TCP and len(k.payload) > 1:
                n = min(self.strength, len(k.payload))
                cuts = np.linspace(0, len(k.payload), n + 1).round().astype(int)
                out.extend(_segment(k, np.diff(cuts).tolist()))
            else:
                out.append(k)
        return out


class Chaff(Attack):
    """``strength`` chaff packets per real packet (1.0: one after every packet; below 1: each real
    packet is followed by one with that probability; above 1: floor + a Bernoulli rest)."""

    name = "chaff"
    unit = "chaff/packet"
    limits = (0, None, False)
    KINDS = ("duplicate", "out_of_window", "dummy")

    def __init__(self, strength: float, max_payload: int = 1400):
        super().__init__(strength)
        self.max_payload = max_payload

    def _one(self, template: _Pkt, last_data: _Pkt | None, rng, ts: float) -> _Pkt:
        if template.proto == TCP:
            if last_data is not None and last_data.direction == template.direction and rng.random() < 0.5:
                return last_data.copy(ts=ts, chaff=True, editable=[])  # a retransmission: the receiver drops it
            n = int(rng.integers(1, self.max_payload + 1))
            k = template.copy(payload=_random_payload(rng, n), ts=ts, chaff=True, grow=0, editable=[(0, n)])
            k.set_flags(ACK | PSH)
            seq = struct.unpack_from(">I", k.hdr, k.info["l4"] + 4)[0]
            k.seq_abs = (seq + (1 << 31) + int(rng.integers(0, 1 << 20))) & 0xFFFFFFFF  # out of any window
            return k
        n = int(rng.integers(1, self.max_payload + 1))  # UDP dummy datagram
        return template.copy(payload=_random_payload(rng, n), ts=ts, chaff=True, grow=0, editable=[(0, n)])

    def edit(self, pkts, rng):
        out = []
        last_data = None
        last_by_dir: dict[int, _Pkt] = {}
        for i, k in enumerate(pkts):
            out.append(k)
            if k.hdr is None:
                continue
            last_by_dir[k.direction] = k
            if _is_data(k):
                last_data = k
            count = int(np.floor(self.strength)) + int(rng.random() < self.strength - np.floor(self.strength))
            nxt = pkts[i + 1].ts if i + 1 < len(pkts) else k.ts + 1e-3
            for c in range(count):
                d = int(rng.integers(0, 2))
                template = last_by_dir.get(d, k)
                ts = k.ts + (nxt - k.ts) * (c + 1) / (count + 1)
                chaff = self._one(template, last_data, rng, ts)
                chaff.direction = template.direction
                out.append(chaff)
        return out


class Normalize(Attack):
    """Every data packet made exactly ``strength`` bytes long (IP total length): larger TCP segments
    are re-segmented, smaller packets are padded at the end (zeros)."""

    name = "normalize"
    unit = "bytes"
    limits = (1, 65535, True)

    def __init__(self, strength: int, fill: str = "zero"):
        super().__init__(strength)
        self.fill = fill

    def edit(self, pkts, rng):
        out = []
        for k in pkts:
            if not _is_data(k):
                out.append(k)
                continue
            cap = self.strength - len(k.hdr)
            if cap <= 0:
                out.append(k)
                continue
            pieces = [k]
            if len(k.payload) > cap and k.proto == TCP:
                n = -(-len(k.payload) // cap)
                pieces = _segment(k, [cap] * (n - 1) + [len(k.payload) - cap * (n - 1)])
            for p in pieces:
                add = max(0, cap - len(p.payload))
                if add:
                    pad = bytes(add) if self.fill == "zero" else _random_payload(rng, add)
                    p = p.copy(payload=p.payload + pad, grow=p.grow + add,
                               editable=p.editable + [(len(p.payload), len(p.payload) + add)])
                out.append(p)
        return out


def _tcp_options(hdr: bytearray, l4: int, end: int) -> list[bytes] | None:
    opts, i = [], l4 + 20
    while i < end:
        kind = hdr[i]
        if kind == 0:
            return opts + [bytes(hdr[i:end])]  # EOL and what follows stays last
        if kind == 1:
            opts.append(b"\x01")
            i += 1
            continue
        if i + 1 >= end or hdr[i + 1] < 2 or i + hdr[i + 1] > end:
            return None
        opts.append(bytes(hdr[i : i + hdr[i + 1]]))
        i += hdr[i + 1]
    return opts


class Headers(Attack):
    """Header fields that anonymisation keeps, each moved by up to ``strength`` × its valid range:
    TTL (one value per direction, as one stack would send), TCP window, MSS and window-scale values,
    and (with probability ``strength``) the order of the SYN's options."""

    name = "headers"
    unit = "fraction of range"
    limits = (0, 1, False)
    RANGES = {"ttl": (1, 255), "window": (0, 65535), "mss": (536, 65535), "wscale": (0, 14)}

    def __init__(self, strength: float):
        super().__init__(strength)

    def _move(self, value: int, field_name: str, rng) -> int:
        lo, hi = self.RANGES[field_name]
        span = (hi - lo) * self.strength
        if self.strength >= 1:
            return int(rng.integers(lo, hi + 1))
        return int(np.clip(round(value + rng.uniform(-span, span)), lo, hi))

    def edit(self, pkts, rng):
        ttl = {}
        out = []
        for k in pkts:
            if k.hdr is None:
                out.append(k)
                continue
            k = k.copy()
            h, info = k.hdr, k.info
            at = 8 if info["version"] == 4 else 7
            if k.direction not in ttl:
                ttl[k.direction] = self._move(h[at] or 64, "ttl", rng)
            h[at] = ttl[k.direction]
            if info["proto"] == TCP:
                l4 = info["l4"]
                if not (h[l4 + 13] & RST):
                    w = struct.unpack_from(">H", h, l4 + 14)[0]
                    struct.pack_into(">H", h, l4 + 14, self._move(w, "window", rng))
                opts = _tcp_options(h, l4, info["hdr_end"])
                if opts:
                    new = []
                    for o in opts:
                        if o[0] == 2 and len(o) == 4:
                            o = b"\x02\x04" + struct.pack(">H", self._move(struct.unpack(">H", o[2:])[0], "mss", rng))
                        elif o[0] == 3 and len(o) == 3:
                            o = b"\x03\x03" + bytes([self._move(o[2], "wscale", rng)])
                        new.append(o)
                    if h[l4 + 13] & SYN and rng.random() < self.strength:
                        tail = [new.pop()] if new and new[-1][:1] == b"\x00" else []
                        order = rng.permutation(len(new))
                        new = [new[j] for j in order] + tail
                    h[l4 + 20 : info["hdr_end"]] = b"".join(new)
            out.append(k)
        return out


ATTACKS = {"padding": Padding, "split": Split, "chaff": Chaff, "normalize": Normalize, "headers": Headers}

# the budgets `traffic-moe robustness` reports by default (issue 6: padding up to the full MTU,
# splitting into up to 4, one chaff packet per real packet, header fields anywhere in their range)
DEFAULT_BUDGETS = {
    "padding": [16, 64, 256, 1500],
    "split": [2, 4],
    "chaff": [0.25, 0.5, 1.0],
    "normalize": [1500, 512, 256],
    "headers": [0.25, 1.0],
}


def make_attack(name: str, strength) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](strength)


# ------------------------------------------------------------------------------- datasets of flows
def attack_columns(dataset, attack: Attack | None, seed: int = 0, max_packets: int = 8, max_bytes: int = 64,
                   ttl: str = "mask", anonymized: bool = True, tokenizer=None, packet_bytes: int | None = None,
                   header_layout: str = "full", normalize_tcp: bool = False, coalesce_tcp: bool = False) -> dict:
    """Apply ``attack`` to every flow of a prepared split (rows with ``packets``/``directions``/
    ``timestamps``) and return the columns `prepare` would have written for the shaped traffic:
    TCP-normalised when ``normalize_tcp`` (as ``prepare`` does by default: retransmitted and
    out-of-window segments left out; needs the ``tcp_seq`` column), re-anonymised, first
    ``max_packets`` packets, first ``max_bytes`` bytes, re-tokenized. The attack shapes *every
    stored* packet (``prepare --store-packets`` can store more than the model reads), so after
    normalisation the model's window is filled with real packets as it would be on the wire.
    With ``coalesce_tcp`` (as ``prepare --tcp-coalesce``) the segments of one TCP write are then merged.
    ``editable`` (per flow, per packet, byte ranges) marks the bytes the attack inserted (of a merged
    packet, those of its first segment);
    ``normalized_out`` counts the packets normalisation left out, by reason.
    ``tokenizer`` defaults to the one the dataset was prepared with (``packet_bytes``, ``header_layout``)."""
    from collections import Counter

    from ..data.flows import tcp_coalesce, tcp_normalize
    from ..data.samples import encode_packets, get_tokenizer, restore_headers, tokenizer_settings

    if tokenizer is None:
        tokenizer = get_tokenizer(None, tokenizer_settings({"max_packets": max_packets, "max_bytes": max_bytes,
                                                            "packet_bytes": packet_bytes, "header_layout": header_layout}))
    if (normalize_tcp or coalesce_tcp) and "tcp_seq" not in dataset.column_names:
        raise ValueError("TCP normalisation / coalescing of shaped flows needs the `tcp_seq` column (datasets prepared before it "
                         "existed: prepare them again, or pass normalize_tcp=False)")
    cols = {k: [] for k in ("packets", "directions", "timestamps", "ip_lengths", "editable")}
    dropped = Counter()
    times = dataset["timestamps"] if "timestamps" in dataset.column_names else [None] * len(dataset)
    seqs = dataset["tcp_seq"] if "tcp_seq" in dataset.column_names else [None] * len(dataset)
    for i, (packets, dirs, ts, sq) in enumerate(zip(dataset["packets"], dataset["directions"], times, seqs)):
        flow = Flow(restore_headers(packets, sq) if sq else packets, dirs, ts)
        if attack is not None:
            flow = attack(flow, seed=row_seed(seed, i), snap=max_bytes)
        if normalize_tcp:
            reasons = tcp_normalize(flow.packets, flow.directions)
            if any(reasons):
                dropped.update(r for r in reasons if r)
                keep = [j for j, r in enumerate(reasons) if r is None]
                flow = Flow([flow.packets[j] for j in keep], [flow.directions[j] for j in keep],
                            [flow.timestamps[j] for j in keep], [flow.editable[j] for j in keep])
        if coalesce_tcp:
            merged, first = tcp_coalesce(flow.packets, flow.directions, max_bytes)
            if len(merged) < len(flow.packets):
                flow = Flow(merged, [flow.directions[j] for j in first], [flow.timestamps[j] for j in first],
                            [flow.editable[j] for j in first])
        n = max_packets
        cols["packets"].append([reanonymize(p, max_bytes, ttl, anonymized) for p in flow.packets[:n]])
        cols["directions"].append(flow.directions[:n])
        cols["timestamps"].append(flow.timestamps[:n])
        cols["ip_lengths"].append(flow.ip_lengths[:n])
        cols["editable"].append([[(s, min(e, max_bytes)) for s, e in r if s < max_bytes] for r in flow.editable[:n]])
    enc = encode_packets(cols["packets"], cols["directions"], tokenizer)
    for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids"):
        cols[k] = list(enc[k])
    cols["normalized_out"] = dict(dropped)
    return cols


def attacked_dataset(dataset, attack: Attack | None, seed: int = 0, **options):
    """``dataset`` (a prepared split) with its model input replaced by that of the shaped flows."""
    from datasets import Dataset

    cols = attack_columns(dataset, attack, seed=seed, **options)
    cols.pop("editable")
    cols.pop("normalized_out")
    data = {k: cols[k] for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids", "packets",
                                 "directions", "timestamps", "ip_lengths")}
    data["label"] = list(dataset["label"])
    return Dataset.from_dict(data, features=None).cast_column("label", dataset.features["label"])

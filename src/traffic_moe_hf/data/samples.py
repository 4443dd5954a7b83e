"""One capture file → samples (rows) + packet/flow accounting; helpers to go back from packets.

``process_file`` is what ``traffic-moe prepare`` runs per file (in a worker process with
``--num-proc``).  Accounting is exact: ``packets_total == packets_used + sum(packets_skipped)`` and
``flows == flows_used + sum(flows_skipped)`` for every file.

Tunnels (``PrepareConfig.tunnels``, ``prepare --tunnels``): ``"decap"`` (default) reads the packet a tunnel
carries — GRE, ERSPAN, IP-in-IP, VXLAN, Geneve, GTP-U; see :mod:`.decode` — and drops the outer headers;
``tunnels_decapsulated`` counts the tunnel headers removed, per kind (a packet in two nested tunnels
counts once for each). ``"outer"`` reads the outer packet only.

Packet skip reasons (besides the decode reasons in :mod:`.decode`):
``beyond_max_packets`` (the flow's packets after its first ``store_packets``; flow level only),
``tcp_retransmission`` / ``tcp_out_of_window`` (left out by TCP normalisation, see :mod:`.flows`),
``flow_unlabeled`` / ``flow_too_short`` (all packets of flows skipped for that reason).

Round trip for later pipeline stages (traffic-shaping attacks edit ``packets`` then re-encode):
:func:`encode_packets` turns (packets, directions) into model input with the project's tokenizer,
:func:`write_pcap` writes packets (starting at the IP header) to a raw-IP pcap, and
:func:`traffic_moe_hf.data.decode.parse_ip` re-parses one packet's headers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .decode import IP_TUNNEL_PROTOS, UDP_TUNNEL_PORTS, Decoded, decapsulate, decode, parse_ip
from .flows import FlowTable, bursts
from .headers import IPV4_HEADER_LENGTH
from .reader import CaptureError, linktype_name, open_capture

__all__ = ["PrepareConfig", "process_file", "encode_packets", "write_pcap", "restore_headers", "COLUMNS", "get_tokenizer",
           "tokenizer_settings", "tunnels_record"]

COLUMNS = (
    "input_ids", "attention_mask", "packet_ids", "direction_ids", "label", "packets", "directions",
    "ip_lengths", "timestamps", "burst_packets", "burst_bytes", "source_file", "flow_id",
    "packet_index", "packet_count", "byte_count", "start_time", "end_time", "five_tuple", "header_fields",
    "tcp_seq",
)


@dataclass
class PrepareConfig:
    level: str = "flow"  # flow | packet
    max_packets: int = 8  # packets per flow the model reads
    store_packets: int | None = None  # packets per flow stored (>= max_packets; None: max_packets)
    normalize_tcp: bool = True  # leave retransmitted / out-of-window TCP segments out (see .flows)
    coalesce_tcp: bool = False  # merge the segments of one TCP write into one packet (see .flows)
    max_bytes: int = 128  # bytes stored per packet, from the IP header
    packet_bytes: int = 64  # byte tokens per packet, after the header layout
    header_layout: str = "compact"  # compact | full (see tokenization_traffic_moe)
    ttl: str = "mask"
    anonymize: bool = True
    tunnels: str = "decap"  # decap (read the packet a tunnel carries) | outer (see .decode)
    udp_timeout: float = 60.0
    tcp_timeout: float = 3600.0
    min_packets: int = 1
    label_mode: str = "dir"  # dir | file | csv
    csv_labels: object = None  # CsvLabels
    tokenizer: str | None = None  # path for AutoTokenizer.from_pretrained, None = TrafficTokenizer()
    tokenize: bool = True
    root_label: dict = field(default_factory=dict)  # file -> label for dir/file modes

    def __post_init__(self):
        from .decode import TUNNEL_MODES

        if self.tunnels not in TUNNEL_MODES:  # before any file is read (the CLI's choices say the same)
            raise ValueError(f"tunnels must be one of {', '.join(TUNNEL_MODES)}, not {self.tunnels!r}")


_TOKENIZERS: dict = {}


def tokenizer_settings(options) -> dict:
    """``TrafficTokenizer`` arguments for data prepared with ``options`` (a :class:`PrepareConfig`, or
    the ``options`` of a dataset's report.json). Data prepared before header layouts existed was
    tokenized with the full layout and ``max_bytes`` tokens per packet."""
    get = options.get if isinstance(options, dict) else lambda key, default=None: getattr(options, key, default)
    max_bytes = int(get("max_bytes", 64) or 64)
    return {"max_packets": int(get("max_packets", 8) or 8), "max_packet_bytes": int(get("packet_bytes", max_bytes) or max_bytes),
            "header_layout": get("header_layout", "full") or "full", "capture_bytes": max_bytes}


def tunnels_record(data) -> dict:
    """What a checkpoint records of the tunnel mode its training data was read with (``traffic_flow_options``,
    which ``predict`` reads): ``{}`` for ``decap`` (the default, also what ``predict`` assumes without a record),
    ``{"tunnels": "outer"}`` otherwise. ``data``: a prepared dataset folder (its report.json) or the report's
    ``options``; a dataset prepared before tunnels were decapsulated (no ``tunnels`` option) read them as outer."""
    if not isinstance(data, dict):
        import json
        from pathlib import Path

        report = Path(data) / "report.json"
        data = json.loads(report.read_text()).get("options", {}) if report.is_file() else {"tunnels": "decap"}
    tunnels = data.get("tunnels", "outer")
    return {} if tunnels == "decap" else {"tunnels": tunnels}


def get_tokenizer(path: str | None = None, settings: dict | None = None):
    """The project's tokenizer (cached per process): from a folder, or ``TrafficTokenizer(**settings)``."""
    key = (path, tuple(sorted((settings or {}).items())))
    tok = _TOKENIZERS.get(key)
    if tok is None:
        if path:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
            if "direction_ids" not in tok.model_input_names:  # a dense baseline's (BERT) folder: the dataset's
                tok.model_input_names = list(type(tok).model_input_names)  # columns, the class's own names
        else:
            from ..tokenization_traffic_moe import TrafficTokenizer

            tok = TrafficTokenizer(**(settings or {}))
        _TOKENIZERS[key] = tok
    return tok


def encode_packets(packets, directions, tokenizer=None):
    """Model input for one flow (list of packets from the IP header, list of 0/1 directions) or a
    batch (list of flows, list of direction lists), with ``tokenizer``'s packet and byte limits and
    header layout (default: ``TrafficTokenizer()``). Returns the tokenizer's ``BatchEncoding``."""
    tok = tokenizer if tokenizer is not None else get_tokenizer(None)
    single = len(packets) > 0 and isinstance(packets[0], (bytes, bytearray, memoryview))
    flows = [list(packets)] if single else [list(p) for p in packets]
    dirs = [list(directions)] if single else [list(d) for d in directions]
    return tok(flows, directions=dirs, padding=False)


_ENDPOINTS = {4: (bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])),  # documentation prefixes (RFC 5737 / 3849)
              6: (bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002"))}
_PORTS = (49152, 9)


def restore_headers(packets, seqs=None, directions=None):
    """Anonymised ``packets`` made re-readable as one flow: with ``directions`` each gets placeholder
    addresses and ports (documentation prefixes; client ``:49152``, server ``:9``) so the two sides
    are told apart again; with ``seqs`` (a dataset's ``tcp_seq`` column, relative to the first segment
    of each direction) TCP sequence numbers are written back, so TCP normalisation reads the stream
    as it was. Checksums stay zero, as anonymisation left them. Re-anonymising gives the input back."""
    out = []
    for i, p in enumerate(packets):
        p = bytes(p)
        d = parse_ip(p)
        if type(d) is not Decoded:
            out.append(p)
            continue
        b = bytearray(p)
        if directions is not None and i < len(directions):
            a, z = _ENDPOINTS[d.version]
            src, dst = (a, z) if directions[i] == 0 else (z, a)
            at = 12 if d.version == 4 else 8
            b[at : at + 2 * len(a)] = src + dst
            sport, dport = _PORTS if directions[i] == 0 else _PORTS[::-1]
            if len(b) >= d.l4 + 4:
                b[d.l4 : d.l4 + 4] = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
        if seqs and i < len(seqs) and d.proto == 6 and len(b) >= d.l4 + 8:
            b[d.l4 + 4 : d.l4 + 8] = (int(seqs[i]) & 0xFFFFFFFF).to_bytes(4, "big")
        out.append(bytes(b))
    return out


def write_pcap(path, packets, timestamps=None, start_time: float = 0.0, seqs=None, directions=None):
    """Write packets that start at the IP header to a pcap with link type RAW (101).
    ``timestamps`` are relative seconds (as in the dataset) added to ``start_time``. For anonymised
    packets pass ``directions`` and ``seqs`` (the dataset's columns): :func:`restore_headers` then
    makes the capture re-read as the same flow, directions and TCP stream included."""
    import dpkt

    if seqs is not None or directions is not None:
        packets = restore_headers(packets, seqs, directions)
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, snaplen=65535, linktype=101)
        for i, p in enumerate(packets):
            ts = start_time + (timestamps[i] if timestamps is not None else i * 1e-3)
            w.writepkt(bytes(p), ts=ts)


def _empty_columns():
    return {c: [] for c in COLUMNS}


def flow_shard(d: Decoded, shards: int) -> int:
    """Which of ``shards`` processes handles the flow of ``d`` when one capture is split over processes:
    the XOR of the port bytes and of the addresses' last bytes, modulo ``shards``. Cheap (the raw-byte
    form in :func:`process_file` skips the decode of other processes' packets), the same in every
    process, and the same for both directions of a flow. Ephemeral ports spread flows evenly."""
    return (d.sport >> 8 ^ d.sport & 255 ^ d.dport >> 8 ^ d.dport & 255 ^ d.src[-1] ^ d.dst[-1]) % shards


def process_file(path: str, cfg: PrepareConfig, display_name: str | None = None, shard: int = 0, shards: int = 1,
                 on_progress=None, arrow_chunk: int | None = None) -> dict:
    """Read one capture and build its samples. Never raises for bad input: an unreadable file is
    returned with ``error`` set, a damaged one with ``warning``.

    ``shards > 1`` splits one capture over processes by flow: this call reads every record but
    decodes and assembles only the flows whose endpoints :func:`flow_shard` gives to ``shard``
    (records that decode to no flow belong to shard 0). Shard 0 alone reports the file's totals
    (``packets_total``, link types, warning); the others report only what they used or skipped, so the
    shards' accounts add up to the file's. Flows keep the position of their first packet in the
    capture as their number, so ``prepare`` can put the shards' rows back in one process's order.

    ``on_progress(bytes_read)`` is called every 8192 records (progress bars of large captures).

    ``arrow_chunk=N`` (what ``prepare`` uses): rows are built N flows at a time and the bulky columns
    returned as ``pyarrow.ChunkedArray`` with a dedup key per row in ``_key`` (bounded memory on large
    captures); default: every column a Python list."""
    name = display_name or path
    res = {
        "file": name, "error": None, "warning": None, "format": None,
        "packets_total": 0, "packets_used": 0, "packets_skipped": Counter(),
        "ip_protocols_skipped": Counter(), "link_types": Counter(), "tunnels_decapsulated": Counter(),
        "flows": 0, "flows_used": 0, "flows_skipped": Counter(), "columns": _empty_columns(),
        "flows_label_ambiguous": 0, "label_rows_matched": set(),
    }
    try:
        rs = open_capture(path)
    except CaptureError as e:
        res["error"] = str(e)
        return res
    res["format"] = rs.format
    keep = max(cfg.max_packets, cfg.store_packets or 0) if cfg.level == "flow" else max(cfg.max_packets, 1)
    table = FlowTable(keep, cfg.max_bytes, cfg.ttl, cfg.anonymize, cfg.udp_timeout, cfg.tcp_timeout,
                      normalize_tcp=cfg.normalize_tcp, coalesce_tcp=cfg.coalesce_tcp, tunnels=cfg.tunnels)
    add = table.add
    skipped = res["packets_skipped"]
    protos = res["ip_protocols_skipped"]
    lts = Counter()
    decap = cfg.tunnels == "decap"
    tunnels = Counter()  # this record's tunnel headers, counted once the record is known to be this shard's
    tunnel_ports = UDP_TUNNEL_PORTS
    total = 0
    beyond = 0
    with rs:
        for ts, lt, frame in rs:
            total += 1
            lts[lt] += 1
            if not total & 8191 and on_progress is not None:
                on_progress(rs.position())
            # fast path for the common case (Ethernet, no VLAN, IPv4): one call instead of three
            if lt == 1 and frame[12:14] == b"\x08\x00":
                owner = shard
                if shards > 1:  # flow_shard from the raw bytes of an unfragmented IPv4 TCP/UDP packet
                    p = 14 + IPV4_HEADER_LENGTH[frame[14]]
                    if (p >= 34 and len(frame) >= p + 4 and frame[14] >> 4 == 4 and frame[23] in (6, 17)
                            and not (frame[20] & 0x3F or frame[21])
                            and not (decap and frame[23] == 17 and ((frame[p] << 8 | frame[p + 1]) in tunnel_ports
                                                                    or (frame[p + 2] << 8 | frame[p + 3]) in tunnel_ports))):
                        if (frame[p] ^ frame[p + 1] ^ frame[p + 2] ^ frame[p + 3] ^ frame[29] ^ frame[33]) % shards != shard:
                            continue  # another process's flow: not even decoded here
                    else:
                        owner = None
                d = parse_ip(frame[14:])
                if decap and (type(d) is Decoded and d.proto == 17 and (d.dport in tunnel_ports or d.sport in tunnel_ports)
                              or type(d) is tuple and d[1] in IP_TUNNEL_PROTOS):  # decode.is_tunnel, inline
                    d = decapsulate(frame[14:], d, tunnels)
            else:
                owner = None if shards > 1 else shard
                d = decode(lt, frame, cfg.tunnels, tunnels)
            if owner is None:  # sharded, and only a full decode tells whose packet this is
                owner = flow_shard(d, shards) if type(d) is Decoded else 0
                if owner != shard:
                    tunnels.clear()
                    continue
            if tunnels:
                res["tunnels_decapsulated"].update(tunnels)
                tunnels.clear()
            if type(d) is Decoded:
                kept = add(ts, d, total)
                if kept is not True:
                    if kept is False:
                        beyond += 1
                    else:
                        skipped[kept] += 1
            elif type(d) is tuple:
                skipped["not_tcp_udp"] += 1
                protos[d[1]] += 1
            else:
                skipped[d] += 1
    if shard == 0:
        res["warning"] = rs.warning
        res["packets_total"] = total
        res["link_types"] = Counter({linktype_name(k): v for k, v in lts.items()})
    res["ip_protocols_skipped"] = Counter({_proto_name(k): v for k, v in protos.items()})
    if beyond:
        skipped["beyond_max_packets"] += beyond
    flows = table.finish()  # in order of their first packets
    if shards == 1:  # numbered 0, 1, ... here; sharded flows keep their first packet's position (see above)
        for i, f in enumerate(flows):
            f.index = i
    res["flows"] = len(flows)
    _build_rows(res, flows, cfg, name, path, positions=shards > 1, chunk=arrow_chunk)
    return res


def _proto_name(p: int) -> str:
    from .decode import IPPROTO_NAMES

    return IPPROTO_NAMES.get(p, f"proto_{p}")


def _build_rows(res, flows, cfg, name, path, positions=False, chunk=None):
    """Rows of the kept flows into ``res["columns"]``; with ``positions``, also ``res["flow_position"]``:
    per row, the position of its flow's first packet in the capture (how ``prepare.merge_shards`` puts
    the rows of a capture split over processes back in order).

    ``chunk``: build, tokenize and convert the rows ``chunk`` flows at a time (:func:`columns_to_arrow`),
    freeing each flow's packets once its rows exist: the bulky columns are then ``pyarrow.ChunkedArray``
    and a large capture never holds all its rows as Python lists (about 3x the memory). ``None``: plain
    Python lists (what ``predict`` and the tests read)."""
    cols = res["columns"]
    skipped = res["packets_skipped"]
    fskip = res["flows_skipped"]
    file_label = cfg.root_label.get(path)
    used = 0
    kept = []
    labels = []
    for f in flows:
        if f.count < cfg.min_packets:
            fskip["too_short"] += 1
            _skip_flow_packets(skipped, f, "flow_too_short")
            continue
        if cfg.csv_labels is not None:
            label, matched, rules = cfg.csv_labels.lookup_all(f.proto, f.client, f.server, f.start, f.last)
            if len(matched) > 1:
                res["flows_label_ambiguous"] += 1
            res["label_rows_matched"].update(rules)
        else:
            label = file_label
        if label is None:
            fskip["unlabeled"] += 1
            _skip_flow_packets(skipped, f, "flow_unlabeled")
            continue
        kept.append(f)
        labels.append(label)
        used += len(f.packets) + f.merged
    flows.clear()  # the kept flows live on in `kept` only, each released once its rows are built
    res["flows_used"] = len(kept)
    res["packets_used"] = used
    step = chunk or max(len(kept), 1)
    arrow_chunks = {}
    for lo in range(0, len(kept), step):
        part = _empty_columns() if chunk else cols
        for j in range(lo, min(lo + step, len(kept))):
            _flow_rows(part, kept[j], labels[j], cfg, name, res if positions else None)
            kept[j] = None
        if not chunk:
            _tokenize_rows(part, cfg)
        else:
            _tokenize_rows_arrow(part, cfg)
            columns_to_arrow(part)
            for k, v in part.items():
                if hasattr(v, "type"):  # a pyarrow array
                    arrow_chunks.setdefault(k, []).append(v)
                else:
                    cols.setdefault(k, []).extend(v)
    if chunk:
        _tokenize_rows(cols, cfg)  # only drops the token columns when not tokenizing
        cols.setdefault("_key", [])
        for k, t in _arrow_types().items():
            if k in cols:
                cols[k] = pa_chunked(arrow_chunks.get(k, []), t)


def _skip_flow_packets(skipped: Counter, f, reason: str) -> None:
    """A skipped flow's packets go under ``reason``: those in its sample and those counted only (past
    ``max_packets``, which reading put under ``beyond_max_packets``); packets TCP normalisation left out
    keep their own reason."""
    beyond = f.count - len(f.packets) - f.merged - f.dropped
    skipped[reason] += len(f.packets) + f.merged + beyond
    if beyond:
        skipped["beyond_max_packets"] -= beyond
        if not skipped["beyond_max_packets"]:
            del skipped["beyond_max_packets"]


def _flow_rows(cols, f, label, cfg, name, positions_of=None):
    """The row(s) of one flow: one at flow level, one per stored packet at packet level."""
    fid = f"{name}#{f.index}"
    t0 = f.times[0]
    rel = [t - t0 for t in f.times]
    bs = bursts(f.directions, f.lengths)
    meta = (name, fid, f.count, f.nbytes, f.start, f.last, f.five_tuple())
    if cfg.level == "flow":
        units = [(f.packets, f.directions, f.lengths, rel, bs, -1, f.seqs)]
    else:
        seqs = f.seqs or [None] * len(f.packets)
        units = [([p], [d], [ln], [t], [(d, 1, ln)], i, [] if q is None else [q])
                 for i, (p, d, ln, t, q) in enumerate(zip(f.packets, f.directions, f.lengths, rel, seqs))]
    if positions_of is not None:
        positions_of.setdefault("flow_position", []).extend([f.index] * len(units))
    for pk, dr, ln, tm, b, pidx, sq in units:
        cols["label"].append(label)
        cols["packets"].append(pk)
        cols["directions"].append(dr)
        cols["ip_lengths"].append(ln)
        cols["timestamps"].append(tm)
        cols["burst_packets"].append([x[1] for x in b])
        cols["burst_bytes"].append([x[2] for x in b])
        cols["source_file"].append(meta[0])
        cols["flow_id"].append(meta[1])
        cols["packet_index"].append(pidx)
        cols["packet_count"].append(meta[2])
        cols["byte_count"].append(meta[3])
        cols["start_time"].append(meta[4])
        cols["end_time"].append(meta[5])
        cols["five_tuple"].append(meta[6])
        cols["header_fields"].append(list(f.header_fields))
        cols["tcp_seq"].append(sq)


def _tokenize_rows(cols, cfg):
    if cfg.tokenize and cols["packets"]:
        enc = encode_packets(cols["packets"], cols["directions"], get_tokenizer(cfg.tokenizer, tokenizer_settings(cfg)))
        for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids"):
            cols[k] = list(enc[k])
    elif not cfg.tokenize:
        for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids"):
            cols.pop(k, None)


def input_key(ids: bytes, directions: bytes) -> bytes:
    """The dedup key of one model input: a digest of its token ids (int32 bytes) and direction ids (bytes)."""
    import hashlib

    return hashlib.blake2b(ids + directions, digest_size=16).digest()


def _tokenize_rows_arrow(cols, cfg):
    """As :func:`_tokenize_rows`, but the token columns become Arrow arrays straight from the tokenizer's
    flat buffers (``encode_flat``), with each row's dedup key (``_key``, as :func:`columns_to_arrow`
    computes it) taken from the same buffers: no Python int per token. A tokenizer folder saved by an
    older version (remote code without ``encode_flat``) goes the list way."""
    tok = get_tokenizer(cfg.tokenizer, tokenizer_settings(cfg)) if cfg.tokenize else None
    if tok is None or not hasattr(tok, "encode_flat") or not cols["packets"]:
        _tokenize_rows(cols, cfg)
        return
    import numpy as np
    import pyarrow as pa

    enc = tok.encode_flat(cols["packets"], cols["directions"])
    offsets, ids, dirs = enc["offsets"], enc["input_ids"], enc["direction_ids"]
    cols["_key"] = [input_key(ids[a:b].tobytes(), dirs[a:b].tobytes()) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    types = _arrow_types()
    arrow_offsets = pa.array(offsets.astype("int32"))
    for k, values in (("input_ids", ids), ("attention_mask", np.ones(len(ids), dtype=np.int8)),
                      ("packet_ids", enc["packet_ids"]), ("direction_ids", dirs)):
        cols[k] = pa.ListArray.from_arrays(arrow_offsets, pa.array(values), type=types[k])


#: the bulky columns, as Arrow types: their Python lists are most of a capture's memory, and Arrow
#: buffers also pickle (worker -> main process) far faster than lists of ints / bytes
_ARROW_TYPES = None


def _arrow_types() -> dict:
    global _ARROW_TYPES
    if _ARROW_TYPES is None:
        import pyarrow as pa

        _ARROW_TYPES = {
            "input_ids": pa.list_(pa.int32()), "attention_mask": pa.list_(pa.int8()),
            "packet_ids": pa.list_(pa.int16()), "direction_ids": pa.list_(pa.int8()),
            "packets": pa.list_(pa.binary()), "directions": pa.list_(pa.int8()),
            "ip_lengths": pa.list_(pa.int32()), "timestamps": pa.list_(pa.float64()),
            "burst_packets": pa.list_(pa.int32()), "burst_bytes": pa.list_(pa.int64()),
            "tcp_seq": pa.list_(pa.int64()),
        }
    return _ARROW_TYPES


def pa_chunked(chunks, arrow_type):
    """One ``pyarrow.ChunkedArray`` from arrays and chunked arrays (no copy)."""
    import pyarrow as pa

    return pa.chunked_array([c for x in chunks for c in (x.chunks if isinstance(x, pa.ChunkedArray) else [x])],
                            type=arrow_type)


def columns_to_arrow(cols):
    """In place: the dedup key per row (``_key``, a digest of its model input: the tokens with their
    directions, or the stored packets + directions when not tokenized), then the bulky columns as
    Arrow arrays."""
    import hashlib
    from array import array

    import pyarrow as pa

    if "_key" in cols:  # set with the tokens (_tokenize_rows_arrow)
        keys = cols["_key"]
    elif cols.get("input_ids") and len(cols["input_ids"]) == len(cols["packets"]):
        keys = [input_key(array("i", ids).tobytes(), bytes(dr)) for ids, dr in zip(cols["input_ids"], cols["direction_ids"])]
    else:
        keys = [hashlib.blake2b(b"".join(len(p).to_bytes(2, "big") + p for p in pk) + bytes(dr), digest_size=16).digest()
                for pk, dr in zip(cols["packets"], cols["directions"])]
    cols["_key"] = keys
    for k, t in _arrow_types().items():
        if k in cols and not hasattr(cols[k], "type"):  # not already an Arrow array
            cols[k] = pa.array(cols[k], type=t)

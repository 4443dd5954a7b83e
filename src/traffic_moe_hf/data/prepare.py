"""``traffic-moe prepare``: captures → leakage-safe Hugging Face ``DatasetDict`` + accounting report.

    traffic-moe prepare INPUT... --out DIR [--labels dir|file|csv:PATH] [--level flow|packet]
                        [--split flow|file|time|none] [--num-proc N] [...]

Writes ``DIR`` in ``save_to_disk`` layout, ``DIR/report.json`` (the accounting: files read /
failed with reasons, packets total = used + skipped by reason, flows, samples per split and label)
and ``DIR/split_report.json``, whole or not at all: built in a hidden folder beside ``DIR`` and moved into
place when complete. Exit status 0 when it wrote a dataset, 1 otherwise (no file read, no sample kept);
a run that writes no dataset leaves an earlier dataset in ``DIR`` as it was, its report.json included.
See ``docs/data.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from ..argtypes import HelpFormatter, at_least, output_folder, positive
from ..options import keyword_arguments, option
from ..progress import library_bars
from .samples import _arrow_types, pa_chunked
from .report import format_report
from .splits import LARGE_GROUPS, check_large_groups
from .workers import ByteProgress, run_parallel

__all__ = ["add_parser", "run", "prepare", "collect_inputs", "format_report"]


def add_parser(subparsers):
    p = subparsers.add_parser(
        "prepare",
        help="captures (pcap/pcapng/gz) -> tokenized, anonymised, leakage-safe datasets.DatasetDict",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    # an option that is a PrepareOptions field (below) takes its default and help from there: one place for both
    o = partial(option, PrepareOptions)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="capture files or directories (searched recursively)")
    p.add_argument("--out", type=output_folder, required=True, help="output directory (DatasetDict save_to_disk layout + report.json)")
    p.add_argument("--labels", **o("labels"))
    p.add_argument("--exclude", action="append", metavar="PATTERN",
                   **o("exclude", default=list(PrepareOptions.exclude)))  # a list: append copies it, run() extends it
    p.add_argument("--exclude-from", default=None, metavar="FILE",
                   help="read --exclude patterns from FILE, one per line (# comments and blank lines ignored)")
    p.add_argument("--label-column", **o("label_column"))
    p.add_argument("--level", choices=("flow", "packet"), **o("level"))
    p.add_argument("--split", choices=("flow", "file", "time", "none"), **o("split"))
    p.add_argument("--split-files-by", choices=("path", "name"), **o("split_files_by"))
    p.add_argument("--split-ratios", type=_ratios, metavar="TRAIN,VAL,TEST",  # dest split_ratios: the field ratios
                   **o("ratios", default=",".join(map(str, PrepareOptions.ratios))))  # read by _ratios, as typed
    p.add_argument("--seed", type=int, **o("seed"))
    p.add_argument("--dedup", choices=("group", "remove", "report"), **o("dedup"))
    p.add_argument("--large-groups", choices=LARGE_GROUPS, **o("large_groups"))
    p.add_argument("--max-packets", type=at_least(1), **o("max_packets"))
    p.add_argument("--store-packets", type=at_least(1), **o("store_packets"))
    # a flag that turns a field off says what it does; its default is still the field's
    p.add_argument("--no-tcp-normalize", dest="normalize_tcp", action="store_false",
                   **o("normalize_tcp", help="keep retransmitted and out-of-window TCP segments in the samples "
                                             "(default: left out and counted, as an IDS stream normaliser does; see "
                                             "docs/data.md)"))
    p.add_argument("--tcp-coalesce", dest="coalesce_tcp", action="store_true", **o("coalesce_tcp"))
    p.add_argument("--max-bytes", type=at_least(1), **o("max_bytes"))
    p.add_argument("--packet-bytes", type=at_least(1), **o("packet_bytes"))
    p.add_argument("--header-layout", choices=("compact", "full"), **o("header_layout"))
    p.add_argument("--min-packets", type=at_least(1), **o("min_packets"))
    p.add_argument("--no-anonymize", dest="anonymize", action="store_false",
                   **o("anonymize", help="keep addresses, ports, IDs, checksums, sequence numbers (NOT recommended; "
                                         "see docs/data.md)"))
    p.add_argument("--ttl", choices=("mask", "keep", "initial"), **o("ttl"))
    p.add_argument("--tunnels", choices=("decap", "outer"), **o("tunnels"))
    p.add_argument("--udp-timeout", type=positive, **o("udp_timeout"))
    p.add_argument("--tcp-timeout", type=positive, **o("tcp_timeout"))
    p.add_argument("--tokenizer", **o("tokenizer"))
    p.add_argument("--num-proc", type=at_least(1), **o("num_proc"))
    p.add_argument("--no-progress", dest="progress", action="store_false", **o("progress", help="no progress bar"))
    p.set_defaults(func=run)
    return p


def _ratios(s: str):
    """``--split-ratios``: three non-negative fractions summing to 1 (an argparse type: a usage error)."""
    try:
        r = tuple(float(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers such as 0.8,0.1,0.1, got {s!r}") from None
    if len(r) != 3 or any(x < 0 for x in r):
        raise argparse.ArgumentTypeError(f"expected three non-negative numbers such as 0.8,0.1,0.1, got {s!r}")
    if abs(sum(r) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"train,validation,test fractions must sum to 1, {s!r} sums to {sum(r):g}")
    return r


def run(args) -> int:
    # the command's own usage errors: one line on stderr and exit status 2, as argparse reports a bad option
    from .labels import LabelCsvError, parse_labels_option

    try:
        mode, csv_path = parse_labels_option(args.labels)
    except ValueError as e:
        print(f"traffic-moe prepare: {e}", file=sys.stderr)
        return 2
    if args.split_files_by != "path" and args.split != "file":
        print(f"traffic-moe prepare: --split-files-by {args.split_files_by}: only with --split file", file=sys.stderr)
        return 2
    if args.exclude_from:
        try:
            with open(args.exclude_from) as f:
                args.exclude = args.exclude + [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            print(f"traffic-moe prepare: --exclude-from {args.exclude_from}: {e.strerror or e}", file=sys.stderr)
            return 2
    try:
        report = _prepare_from_args(args)
    except (LabelCsvError, FileExistsError) as e:
        print(f"traffic-moe prepare: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0 if report.get("samples_total") else 1  # no dataset written: a script's next step must not run


def _prepare_from_args(args) -> dict:
    return prepare(
        args.inputs, args.out, labels=args.labels, label_column=args.label_column, level=args.level, split=args.split,
        ratios=args.split_ratios, seed=args.seed, dedup=args.dedup, large_groups=args.large_groups,
        max_packets=args.max_packets, max_bytes=args.max_bytes, packet_bytes=args.packet_bytes,
        header_layout=args.header_layout, min_packets=args.min_packets,
        store_packets=args.store_packets, normalize_tcp=args.normalize_tcp, coalesce_tcp=args.coalesce_tcp,
        anonymize=args.anonymize, ttl=args.ttl, udp_timeout=args.udp_timeout, tcp_timeout=args.tcp_timeout,
        tunnels=args.tunnels, tokenizer=args.tokenizer, num_proc=args.num_proc, progress=args.progress, exclude=args.exclude,
        split_files_by=args.split_files_by,
    )


def collect_inputs(inputs, exclude=None, excluded=None):
    """Files to read: files given directly and, for directories, every non-hidden file below them
    (sorted; a non-capture file is reported as failed with its reason, never silently ignored).
    Returns ``([(path, display_name, root)], {not_read: reason}, repeated)``: not read are inputs that do
    not exist and, inside folders, dangling links and named pipes (which would block the run). A file reached twice (named
    twice, or named and inside a folder also named) is read once and listed in ``repeated``. Display
    names are unique: two inputs with the same name (``a/x.pcap``, ``b/x.pcap``) are told apart by as
    much of their paths as differs — the name is the file's identity in flow ids, splits by file and
    the per-file accounting, so a clash merged two captures' flows and dropped one file's line."""
    out = []
    missing = {}  # input or file -> why it is not read
    repeated = []
    seen = set()
    exclude = os.path.realpath(exclude) if exclude else None  # prepare's --out inside an input folder
    # (`excluded`, a list, receives each folder left out for it: the one place that decides this)

    def add(p, name, root):
        real = os.path.realpath(p)
        if real in seen:
            repeated.append(p)  # the path as reached: a display name can be ambiguous here
            return
        seen.add(real)
        out.append((p, name, root))

    for inp in inputs:
        if os.path.isdir(inp):
            root = os.path.abspath(inp)
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                kept = [d for d in dirnames if not exclude or os.path.realpath(os.path.join(dirpath, d)) != exclude]
                if len(kept) < len(dirnames) and excluded is not None:
                    excluded.append(exclude)
                dirnames[:] = [d for d in kept if not d.startswith(".")]
                for fn in sorted(filenames):
                    if not fn.startswith("."):
                        p = os.path.join(dirpath, fn)
                        name = os.path.relpath(p, os.path.dirname(root))
                        if os.path.isfile(p):
                            add(p, name, root)
                        else:  # a named pipe in a folder would block the run forever; a dangling link names nothing
                            missing[name] = ("broken symbolic link" if os.path.islink(p) and not os.path.exists(p)
                                             else "not a regular file (named pipe, socket or device): skipped")
        elif os.path.exists(inp):  # named explicitly: also a pipe (`prepare <(zcat x.pcap.gz)`), read to its end
            add(os.path.abspath(inp), os.path.basename(inp), os.path.dirname(os.path.abspath(inp)))
        else:
            missing[inp] = "no such file or directory"
    by_name = {}
    for j, (_p, name, _r) in enumerate(out):
        by_name.setdefault(name, []).append(j)
    for name, js in by_name.items():
        if len(js) > 1:
            paths = [out[j][0] for j in js]
            common = os.path.commonpath(paths)
            for j, p in zip(js, paths):
                out[j] = (p, os.path.relpath(p, common), out[j][2])
    return out, missing, repeated


def _apply_exclude(files, patterns):
    """``files`` without those matching any ``--exclude`` pattern (shell style, against the path as
    reached, its absolute path, and its display name); returns ``(kept, [display names left out])``."""
    import fnmatch

    if not patterns:
        return files, []
    kept, left_out = [], []
    for p, name, root in files:
        if any(fnmatch.fnmatch(x, pat) for pat in patterns for x in (p, os.path.abspath(p), name)):
            left_out.append(name)
        else:
            kept.append((p, name, root))
    return kept, left_out


def _per_source(inputs, files, per_file) -> dict:
    """Files, packets and flows per command-line input (a corpus from several sources says what each gave)."""
    roots = [(inp, os.path.abspath(inp)) for inp in inputs]
    out = {inp: {"files": 0, "files_read": 0, "packets": 0, "packets_used": 0, "flows": 0, "samples": 0} for inp in inputs}
    for p, name, _root in files:
        a = os.path.abspath(p)
        src = next((inp for inp, r in roots if a == r or a.startswith(r.rstrip(os.sep) + os.sep)), None)
        if src is None:
            continue
        s = out[src]
        s["files"] += 1
        if name in per_file:
            s["files_read"] += 1
            s["packets"] += per_file[name]["packets"]
            s["packets_used"] += per_file[name]["used"]
            s["flows"] += per_file[name]["flows"]
            s["samples"] += per_file[name].get("samples", 0)
    return out


def _work(item, on_progress=None):
    path, name, cfg, shard, shards = item
    from .samples import process_file

    t = time.perf_counter()
    # The cyclic garbage collector is paused while one file is processed: decoding allocates
    # millions of short-lived, acyclic objects, and each full collection walks the whole heap
    # (torch, datasets, earlier results), which made per-file times jump 2-3x at random. Objects
    # are freed by reference counting as usual; collection resumes between files.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            res = process_file(path, cfg, name, shard, shards, on_progress, arrow_chunk=ARROW_CHUNK)
        except Exception as e:  # a bug, not bad input: report it against the file instead of dying
            res = {"file": name, "error": f"internal error: {type(e).__name__}: {e}", "warning": None,
                   "packets_total": 0, "packets_used": 0, "packets_skipped": Counter(), "flows": 0,
                   "flows_used": 0, "flows_skipped": Counter(), "columns": None,
                   "ip_protocols_skipped": Counter(), "link_types": Counter(), "format": None}
    finally:
        if gc_was_enabled:
            gc.enable()
    res["seconds"] = time.perf_counter() - t
    return res


#: flows whose rows are built, tokenized and turned into Arrow at a time (bounds memory on large captures)
ARROW_CHUNK = 2048


@dataclass
class PrepareOptions:
    """:func:`prepare`'s keyword arguments (same names and defaults), for ``HfArgumentParser`` or a saved run; also
    the defaults and help of ``traffic-moe prepare``'s options (:func:`add_parser`). A help text is an argparse
    string that names the command's flags and writes out no default (see :mod:`traffic_moe_hf.options`)."""

    labels: str = field(default="dir", metadata={"help": (
        "dir (parent directory name), file (file name), csv:PATH (a CSV of 5-tuples [+ time range] and labels, or "
        "a Zeek conn.log in TSV or JSON form) or none (an unlabelled pretraining corpus: no label column; the "
        "report counts flows and packets per input)")})
    label_column: str | None = field(default=None, metadata={"help": (
        "with csv:PATH, the column holding the label (default: label/class/category), e.g. service (Zeek's DPI "
        "verdict) or detailed-label (IoT-23)")})
    level: str = field(default="flow", metadata={"help": "one sample per flow or per packet"})
    split: str = field(default="flow", metadata={"help": (
        "split unit: flow (stratified), file, time (per label, chronological) or none (all -> test)")})
    ratios: tuple[float, float, float] = field(default=(0.8, 0.1, 0.1), metadata={"help": (
        "train,validation,test fractions, summing to 1")})
    seed: int = field(default=0, metadata={"help": "seed of the random split"})
    dedup: str = field(default="group", metadata={"help": (
        "identical model inputs: group (split flows sharing an input together; with --split flow at flow level "
        "only, else remove), remove (from the later split) or report")})
    max_packets: int = field(default=8, metadata={"help": "packets per flow the model reads (first N)"})
    max_bytes: int = field(default=128, metadata={"help": "bytes stored per packet from the IP header (first M)"})
    packet_bytes: int = field(default=64, metadata={"help": (
        "byte tokens per packet the model sees, after the header layout")})
    header_layout: str = field(default="compact", metadata={"help": (
        "model input: compact leaves out the header fields anonymisation masks, so more payload fits in "
        "--packet-bytes; full keeps the packet as stored")})
    min_packets: int = field(default=1, metadata={"help": "skip flows with fewer packets"})
    anonymize: bool = field(default=True, metadata={"help": (
        "mask addresses, ports, IDs, checksums, sequence numbers (default); False keeps them (--no-anonymize: NOT"
        " recommended; see docs/data.md)")})
    ttl: str = field(default="mask", metadata={"help": (
        "IPv4 TTL / IPv6 hop limit: mask to 0, keep, or round up to the initial value")})
    udp_timeout: float = field(default=60.0, metadata={"help": "UDP flow idle timeout in seconds"})
    tcp_timeout: float = field(default=3600.0, metadata={"help": "TCP flow idle timeout in seconds"})
    tokenizer: str | None = field(default=None, metadata={"help": (
        "tokenizer folder (AutoTokenizer); default: TrafficTokenizer()")})
    num_proc: int = field(default=1, metadata={"help": (
        "worker processes: parallel by file; a capture larger than its share of the input (e.g. the only one) is "
        "split over the processes by flow")})
    progress: bool = field(default=True, metadata={"help": "a progress bar (False: none, as --no-progress)"})
    save: bool = field(default=True, metadata={"help": (
        "write the dataset to `out`; False writes nothing and returns the DatasetDict in report[\"_dataset\"] (no "
        "command-line option)")})
    store_packets: int | None = field(default=None, metadata={"help": (
        "packets stored per flow (default: --max-packets); more than the model reads lets `traffic-moe robustness` "
        "shape flows and still fill the model's window with real packets")})
    normalize_tcp: bool = field(default=True, metadata={"help": (
        "leave retransmitted and out-of-window TCP segments out of the samples, counted, as an IDS stream "
        "normaliser does (default); False keeps them (--no-tcp-normalize; see docs/data.md)")})
    coalesce_tcp: bool = field(default=False, metadata={"help": (
        "merge the segments of one TCP write (no PSH/FIN before the last) into one packet, so a write split by a "
        "smaller MSS or an evasion tool reads as the write it was (default off)")})
    large_groups: str = field(default="train", metadata={"help": (
        "with --dedup group: train sends a group of identical inputs larger than the validation/test share of its "
        "label to train, so one input repeated many times cannot dominate an evaluation split; 'any' splits it "
        "like any group (before 2026-11-29)")})
    exclude: tuple[str, ...] = field(default=(), metadata={"help": (
        "leave out capture files whose path (as given, or its name inside an input folder) matches one of these "
        "shell patterns (one per --exclude, repeatable; counted in the report), e.g. the held-out captures of a "
        "task")})
    split_files_by: str = field(default="path", metadata={"help": (
        "with --split file: the unit is the capture's path, or its file name (name), so that files of one name in "
        "several label folders (one source capture written once per label, as split-by-label.py does) fall on one "
        "side of the split")})
    tunnels: str = field(default="decap", metadata={"help": (
        "decap: read the packet a GRE / ERSPAN / IP-in-IP / VXLAN / Geneve / GTP-U tunnel carries (outer headers "
        "dropped; counted per tunnel kind); outer: the outer packet only")})


def prepare(inputs, out, options: PrepareOptions | None = None, **overrides):
    """Library entry point of ``traffic-moe prepare``; returns the report (also saved as JSON). The options are
    the fields of :class:`PrepareOptions`: keyword arguments (``prepare(inputs, out, labels="file")``), a
    ``PrepareOptions``, or both (the keywords override its fields; see :mod:`traffic_moe_hf.options`).
    With ``save=False`` nothing is written and the ``DatasetDict`` is returned in
    ``report["_dataset"]``."""
    return _prepare(inputs, out, **keyword_arguments(PrepareOptions, options, overrides, "prepare"))


def _prepare(inputs, out, *, labels, label_column, level, split, ratios, seed, dedup, max_packets, max_bytes,
             packet_bytes, header_layout, min_packets, anonymize, ttl, udp_timeout, tcp_timeout, tokenizer, num_proc,
             progress, save, store_packets, normalize_tcp, coalesce_tcp, large_groups, exclude, split_files_by,
             tunnels):
    """:func:`prepare`'s body: its keyword-only parameters are :class:`PrepareOptions`' fields (the defaults are
    there only; :func:`prepare` passes them all)."""
    from .labels import CsvLabels, LabelCsvError, label_from_path, parse_labels_option
    from .samples import PrepareConfig

    t0 = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(i) for i in inputs]
    mode, csv_path = parse_labels_option(labels)
    if label_column and mode != "csv":
        raise LabelCsvError(f"--label-column {label_column}: only with --labels csv:PATH (labels come from {mode} names)")
    out_excluded = []
    files, missing, repeated = collect_inputs(inputs, exclude=out if save else None, excluded=out_excluded)
    files, left_out = _apply_exclude(files, exclude)
    if tokenizer:  # a tokenizer folder decides the model input: its limits and layout
        from .samples import get_tokenizer

        tok = get_tokenizer(tokenizer)
        max_packets, packet_bytes = tok.max_packets, tok.max_packet_bytes
        header_layout = getattr(tok, "header_layout", "full")
        max_bytes = getattr(tok, "capture_bytes", packet_bytes)
    check_large_groups(large_groups)  # before any file is read
    if save and out and os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out}: exists and is not a folder")
    if min(max_packets, max_bytes, packet_bytes) < 1:
        raise ValueError("max_packets, max_bytes and packet_bytes must be at least 1")
    store_packets = max(store_packets or max_packets, max_packets)
    cfg = PrepareConfig(level=level, max_packets=max_packets, max_bytes=max_bytes, ttl=ttl,
                        store_packets=store_packets, normalize_tcp=normalize_tcp, coalesce_tcp=coalesce_tcp,
                        packet_bytes=packet_bytes, header_layout=header_layout,
                        anonymize=anonymize, udp_timeout=udp_timeout, tcp_timeout=tcp_timeout,
                        min_packets=min_packets, label_mode=mode, tokenizer=tokenizer, tunnels=tunnels)
    report = {
        "inputs": inputs, "out": os.fspath(out) if out else None,
        "options": {"labels": labels, "label_column": label_column, "level": level, "split": split, "ratios": list(ratios), "seed": seed,
                    "dedup": dedup, "large_groups": large_groups, "max_packets": max_packets, "store_packets": store_packets,
                    "normalize_tcp": normalize_tcp, "coalesce_tcp": coalesce_tcp, "max_bytes": max_bytes,
                    "packet_bytes": packet_bytes, "header_layout": header_layout,
                    "min_packets": min_packets, "anonymize": anonymize, "ttl": ttl, "tunnels": tunnels,
                    "udp_timeout": udp_timeout, "tcp_timeout": tcp_timeout, "tokenizer": tokenizer,
                    "num_proc": num_proc},
        "files_total": len(files) + len(missing), "files_read": 0,
        "files_failed": dict(missing), "files_warnings": {}, "files_split": {},
        "files_repeated": repeated,
    }
    if split_files_by != "path":
        if split != "file":
            raise ValueError(f"--split-files-by {split_files_by}: only with --split file")
        report["options"]["split_files_by"] = split_files_by
    if exclude:
        report["options"]["exclude"] = list(exclude)
        report["files_excluded"] = left_out
    if out_excluded:
        report["out_inside_input"] = f"{out} lies inside an input folder: not read as input"
    if mode == "csv":
        cfg.csv_labels = CsvLabels(csv_path, label_column)
        report["label_csv"] = cfg.csv_labels.summary()
    else:
        cfg.root_label = {p: label_from_path(p, mode) for p, _n, _r in files}
    # parallel by file, biggest files first so the last worker is not left with the largest one; a file
    # larger than a fair share of the input (e.g. the only one) is split over the processes by flow
    sizes = [_size(p) for p, _n, _r in files]
    total_size = sum(sizes)
    shards = [num_proc if num_proc > 1 and size * num_proc > total_size else 1 for size in sizes]
    order = sorted(((i, k) for i in range(len(files)) for k in range(shards[i])), key=lambda ik: (-sizes[ik[0]] / shards[ik[0]], ik))
    items = [(files[i][0], files[i][1], cfg, k, shards[i]) for i, k in order]
    parts = [[None] * n for n in shards]
    parallel = num_proc > 1 and len(items) > 1
    bar = progress_of = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_size, unit="B", unit_scale=True, desc="prepare", file=sys.stderr, dynamic_ncols=True)
        progress_of = ByteProgress(bar, [sizes[i] / shards[i] for i, _k in order], [sizes[i] for i, _k in order], parallel)

    def done(j, res):
        i, k = order[j]
        parts[i][k] = res
        if bar is not None:
            progress_of.finished(j)
            bar.set_postfix(packets=sum(r["packets_total"] for p in parts for r in p if r))

    if parallel:
        if tokenizer is None and cfg.tokenize:
            from .samples import get_tokenizer, tokenizer_settings

            get_tokenizer(None, tokenizer_settings(cfg))  # build once before forking
        run_parallel(items, min(num_proc, len(items)), _work, done, progress_of)
    else:
        for j, it in enumerate(items):
            done(j, _work(it, progress_of and progress_of.callback(j)))
    if bar is not None:
        bar.close()
    results = [p[0] if len(p) == 1 else merge_shards(p) for p in parts]
    t_read = time.perf_counter() - t0
    ds, report = _assemble(results, report, cfg, split, ratios, seed, dedup, large_groups)
    report["sources"] = _per_source(inputs, files, report.get("per_file", {}))
    t_assemble = time.perf_counter() - t0 - t_read

    def timing():
        elapsed = time.perf_counter() - t0
        report["timing"] = {"read_and_samples_s": round(t_read, 3), "split_and_arrow_s": round(t_assemble, 3),
                            "total_s": round(elapsed, 3),
                            "packets_per_s": round(report["packets_total"] / elapsed, 1) if elapsed > 0 else None}

    if save and out and ds is None and os.path.isfile(os.path.join(out, "dataset_dict.json")):
        # a run that produced nothing (a mistyped input, nothing decodable) leaves an earlier dataset alone, its
        # report.json included: that describes the data beside it (finetune and evaluate read its options)
        report["not_written"] = f"{out} holds an earlier dataset: left as it was"
    elif save and out:
        _write_folder(out, ds, report, progress, timing)
    if "timing" not in report:
        timing()
    if not save:
        report["_dataset"] = ds
    return report


def _write_folder(out, ds, report, progress, timing) -> None:
    """The dataset (``save_to_disk`` layout), ``report.json`` and ``split_report.json`` built in a hidden folder
    beside ``out`` and moved into its place only when complete (:mod:`..atomic`): a run failing or interrupted
    while writing leaves an earlier dataset in ``out`` byte for byte as it was. A second ``prepare`` into the
    same folder replaces the first: split folders of the earlier run (``datasets`` layout: ``state.json`` and
    ``dataset_info.json`` inside) that this run does not write are removed (``--split none`` after a flow split
    used to leave the old train/validation beside the new test, ``report["splits_replaced"]``); anything else
    in the folder (a user's notes) is carried over to the new one."""
    from ..atomic import atomic_folder

    stale = []
    for name in ("train", "validation", "test"):
        folder = os.path.join(out, name)
        if (ds is not None and name not in ds
                and all(os.path.isfile(os.path.join(folder, f)) for f in ("state.json", "dataset_info.json"))):
            stale.append(name)
    if ds is not None:
        report["splits_replaced"] = stale
    with atomic_folder(out, carry=lambda name: name not in stale and name != "dataset_dict.json") as staging:
        if ds is not None:
            with library_bars(progress, transformers=False):
                ds.save_to_disk(str(staging))
        timing()
        with open(staging / "report.json", "w") as f:
            json.dump(report, f, indent=1, sort_keys=False)
        with open(staging / "split_report.json", "w") as f:
            json.dump(report["split_report"], f, indent=1)


def merge_shards(parts: list[dict]) -> dict:
    """One file's result from the results of its shards (``samples.process_file(..., shard, shards)``):
    counts added up, rows put back in the order of their flows' first packets, flows renumbered
    0, 1, ... as one process numbers them — the same rows, in the same order, as without sharding."""
    import pyarrow as pa

    failed = [p for p in parts if p["error"]]
    if failed:
        return failed[0]
    out = dict(parts[0])  # shard 0 carries the file's totals, link types and warning
    out.pop("flow_position", None)
    for k in ("packets_used", "flows", "flows_used", "flows_label_ambiguous"):
        out[k] = sum(p.get(k, 0) for p in parts)
    for k in ("packets_skipped", "ip_protocols_skipped", "flows_skipped", "tunnels_decapsulated"):
        out[k] = sum((Counter(p[k]) for p in parts), Counter())
    out["label_rows_matched"] = set().union(*(p.get("label_rows_matched", ()) for p in parts))
    out["seconds"] = sum(p.get("seconds", 0.0) for p in parts)
    out["shard_flows"] = [p["flows"] for p in parts]
    cols = [p["columns"] for p in parts]
    # per row, the position of its flow's first packet in the capture (process_file with shards > 1):
    # rows sort by it, then by packet, and flows are renumbered by its rank
    position = [q for p in parts for q in p.get("flow_position", ())]
    packet = [i for c in cols for i in c["packet_index"]]
    if len(position) != len(packet):
        raise ValueError(f"{out['file']}: shard results without one flow position per row")
    perm = sorted(range(len(position)), key=lambda r: (position[r], packet[r]))
    rank = {q: n for n, q in enumerate(sorted(set(position)))}
    merged = {}
    for k in cols[0]:
        if isinstance(cols[0][k], (pa.Array, pa.ChunkedArray)):
            merged[k] = pa_chunked([c[k] for c in cols], cols[0][k].type).take(pa.array(perm, type=pa.int64()))
        else:
            flat = [v for c in cols for v in c[k]]
            merged[k] = [flat[r] for r in perm]
    merged["flow_id"] = [f"{out['file']}#{rank[position[r]]}" for r in perm]
    out["columns"] = merged
    return out


def _size(p):
    try:
        return os.path.getsize(p)
    except OSError:
        return 0


def _assemble(results, report, cfg, split, ratios, seed, dedup, large_groups):
    from .splits import assign_splits, dedup_across_splits, duplicate_groups, labels_missing

    skipped, protos, lts, fskip = Counter(), Counter(), Counter(), Counter()
    cols = None
    for r in results:
        if r["error"]:
            report["files_failed"][r["file"]] = r["error"]
            continue
        report["files_read"] += 1
        if r["warning"]:
            report["files_warnings"][r["file"]] = r["warning"]
        if r.get("shard_flows"):  # one capture split over processes by flow (prepare's --num-proc)
            report["files_split"][r["file"]] = {"processes": len(r["shard_flows"]), "flows": r["shard_flows"]}
        skipped.update(r["packets_skipped"])
        protos.update(r["ip_protocols_skipped"])
        lts.update(r["link_types"])
        fskip.update(r["flows_skipped"])
        c = r["columns"]
        if cols is None:
            cols = {k: [] for k in c}
        for k, v in c.items():
            if k in _arrow_types():
                cols[k].append(v)
            else:
                cols[k].extend(v)
    ok = [r for r in results if not r["error"]]
    report["packets_total"] = sum(r["packets_total"] for r in ok)
    report["packets_used"] = sum(r["packets_used"] for r in ok)
    report["packets_skipped"] = dict(sorted(skipped.items()))
    report["ip_protocols_skipped"] = dict(protos.most_common())
    report["link_types"] = dict(lts.most_common())
    report["tunnels_decapsulated"] = dict(sum((Counter(r.get("tunnels_decapsulated", {})) for r in ok), Counter()).most_common())
    report["flows"] = sum(r["flows"] for r in ok)
    report["flows_used"] = sum(r["flows_used"] for r in ok)
    report["flows_skipped"] = dict(fskip)
    if "label_csv" in report:
        report["label_csv"]["flows_ambiguous"] = sum(r.get("flows_label_ambiguous", 0) for r in ok)
        matched = set().union(*(r.get("label_rows_matched", ()) for r in ok))
        # usable rows that matched no flow prepare kept (other captures, times, or only too-short flows)
        report["label_csv"]["rows_matching_no_flow"] = cfg.csv_labels.rule_count - len(matched)
    report["per_file"] = {r["file"]: {"format": r.get("format"), "packets": r["packets_total"],
                                     "used": r["packets_used"], "flows": r["flows"],
                                     "seconds": round(r.get("seconds", 0.0), 4)} for r in ok}
    cols = cols or {}
    n = len(cols.get("label", []))
    # split by flow unit
    flow_first = {}
    for i in range(n):
        fid = cols["flow_id"][i]
        if fid not in flow_first:
            flow_first[fid] = i
    fids = list(flow_first)
    fi = [flow_first[f] for f in fids]
    groups = None
    if dedup == "group" and (split != "flow" or cfg.level == "packet"):
        # file/time splits have fixed units; grouping would override them. Packet level: flows linked by
        # any identical packet (a bare ACK or SYN is the same in every TCP flow once anonymised, a
        # server greeting the same in every flow of a service) form one component holding nearly every
        # flow, which went to train whole and left validation/test with no TCP class (measured on
        # loopback9 and tls9); removing a later split's copies of earlier inputs keeps every split usable
        dedup = "remove"
    elif dedup == "group" and n:
        group_of = duplicate_groups(cols["flow_id"], cols["_key"])
        groups = [group_of[f] for f in fids]
    unit_of = os.path.basename if report["options"].get("split_files_by") == "name" else (lambda f: f)
    fsplits, split_report = assign_splits(fids, [cols["label"][i] for i in fi], [unit_of(cols["source_file"][i]) for i in fi],
                                          [cols["start_time"][i] for i in fi], split, ratios, seed, groups=groups,
                                          large_groups=large_groups)
    fsplit = dict(zip(fids, fsplits))
    splits = [fsplit[cols["flow_id"][i]] for i in range(n)]
    keep, dup_report = dedup_across_splits(cols.get("_key", []), splits, cols.get("label", []),
                                           "remove" if dedup == "group" else dedup)
    dup_report["policy"] = dedup
    split_report["duplicates"] = dup_report
    if cfg.label_mode != "none":  # what the splits hold once the copies of earlier inputs are removed
        missing = labels_missing(splits, cols.get("label", []), ratios, keep)
        split_report.pop("labels_missing", None)
        if missing:
            split_report["labels_missing"] = missing
    # leakage check, recorded: no flow id in two splits
    seen = {}
    crossing = 0
    for i in range(n):
        if keep[i]:
            s = seen.setdefault(cols["flow_id"][i], splits[i])
            crossing += s != splits[i]
    split_report["flows_in_several_splits"] = crossing
    unlabelled = cfg.label_mode == "none"
    names = [] if unlabelled else sorted(set(cols.get("label", [])))
    for name, kept in Counter(cols["source_file"][i] for i in range(n) if keep[i]).items():
        report["per_file"][name]["samples"] = kept  # what each file gave the dataset (sources sum them)
    samples = {}
    ds = None
    removed = Counter()
    for i in range(n):
        if not keep[i]:
            removed[f"duplicate_of_earlier_split:{splits[i]}"] += 1
    if n:
        from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Sequence, Value

        feats = {
            "input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8")),
            "packet_ids": Sequence(Value("int16")), "direction_ids": Sequence(Value("int8")),
            "label": ClassLabel(names=names), "packets": Sequence(Value("binary")),
            "directions": Sequence(Value("int8")), "ip_lengths": Sequence(Value("int32")),
            "timestamps": Sequence(Value("float64")), "burst_packets": Sequence(Value("int32")),
            "burst_bytes": Sequence(Value("int64")), "source_file": Value("string"),
            "flow_id": Value("string"), "packet_index": Value("int32"), "packet_count": Value("int64"),
            "byte_count": Value("int64"), "start_time": Value("float64"), "end_time": Value("float64"),
            "five_tuple": Value("string"), "header_fields": Sequence(Value("int32")),
            "tcp_seq": Sequence(Value("int64")),
        }
        feats = Features({k: v for k, v in feats.items() if k in cols and not (unlabelled and k == "label")})
        cols.pop("_key", None)
        lab_id = {x: j for j, x in enumerate(names)}
        # pyarrow directly with the Features' schema: datasets' from_dict would re-encode every
        # value in Python (encode_example) and hash the data for a fingerprint, ~3x the cost of
        # reading the captures. The result is the same Arrow table and Features.
        import hashlib

        import pyarrow as pa
        from datasets.table import InMemoryTable

        schema = feats.arrow_schema
        arrays = []
        for name in schema.names:
            v = cols[name]
            if name == "label":
                v = [lab_id[x] for x in v]
            if name in _arrow_types():
                arrays.append(pa_chunked(v, schema.field(name).type))
            else:
                arrays.append(pa.chunked_array([pa.array(v, type=schema.field(name).type)]))
        shared = InMemoryTable(pa.Table.from_arrays(arrays, schema=schema))
        opts = json.dumps(report["options"], sort_keys=True, default=str)
        dd = {}
        for s in [x for x in ("train", "validation", "test") if x in set(splits)]:
            idx = [i for i in range(n) if keep[i] and splits[i] == s]
            if not idx:
                continue
            fp = hashlib.sha256(f"{opts}|{s}|{len(idx)}|{cols['flow_id'][idx[0]]}|{cols['flow_id'][idx[-1]]}".encode()).hexdigest()[:16]
            # an indices mapping onto the one table, not a copy of the rows per split: save_to_disk
            # writes batch by batch through it, so a large capture's rows exist once in memory
            dd[s] = Dataset(shared, info=DatasetInfo(features=feats), split=s, fingerprint=fp,
                            indices_table=InMemoryTable(pa.table({"indices": pa.array(idx, type=pa.uint64())})))
            samples[s] = ({"(unlabelled)": len(idx)} if unlabelled
                          else dict(sorted(Counter(cols["label"][i] for i in idx).items())))
        ds = DatasetDict(dd)
    report["labels"] = names
    report["samples"] = samples
    report["samples_built"] = n
    report["samples_total"] = sum(sum(v.values()) for v in samples.values())
    report["samples_removed"] = dict(removed)
    report["split_report"] = split_report
    return ds, report

"""``traffic-moe predict``: a label and its probability for every flow of new captures.

    traffic-moe predict CAPTURE... --model CKPT --out FILE.csv      (or FILE.json)
    tcpdump -i eth0 -w - | traffic-moe predict - --model CKPT --out verdicts.csv
    traffic-moe predict CAPTURE... --model CKPT1 --model CKPT2 --out FILE.csv   (an ensemble: probabilities averaged)
    traffic-moe predict CAPTURE... --model CKPT --reject-below 0.9998 --out FILE.csv   (open set: `unknown` below it)

Flows are assembled and anonymised exactly as `traffic-moe prepare` made the model's training data
(TCP normalisation and coalescing, TTL mode, anonymisation: recorded in the checkpoint by finetune), with
the packet and byte limits of the model's tokenizer. A packet-level model classifies each of a flow's
first N packets alone; the flow's label and probability are from the mean of their probabilities.
The ``packets`` column: the flow's packet count — from a file its total; from a stream the count when
its verdict was written (its first N packets, or all when it ended sooner). From standard input (``-``) each flow's verdict is written as soon
as the flow has its first N packets, or when it goes idle or the stream ends; idle flows are evicted,
so memory stays bounded on an endless stream. Progress and throughput go to standard error.
A file named by ``--out`` appears complete when the run ends (until then its rows go to a hidden
``.NAME.*.tmp.csv`` beside it; ``--out -`` writes them to standard output as they come); a run that reads no
capture, or fails, leaves an earlier file of that name as it was.
With ``--reject-below P`` a flow whose top class probability is below P gets the label ``unknown`` (its
nearest class in the column ``closest_label``): a closed-set model otherwise names one of its classes for
any flow at all. ``traffic-moe evaluate --ood`` measures which P keeps 99 / 95 / 90 % of the model's own
flows and how much foreign traffic each rejects.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter

import torch

from ..argtypes import HelpFormatter, at_least, output_file, positive, probability
from ..errors import TrafficMoeError
from ..progress import honours_progress
from .open_set import UNKNOWN


FIELDS = ["file", "five_tuple", "start_time", "packets", "label", "probability"]


def add_parser(subparsers):
    p = subparsers.add_parser(
        "predict", help="classify the flows of captures (or of a live pcap stream on stdin)",
        description=__doc__, formatter_class=HelpFormatter,
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files, directories, or - for stdin")
    p.add_argument("--model", required=True, action="append",
                   help="fine-tuned checkpoint folder; repeat it for an ensemble (--model A --model B: each flow's class "
                        "probabilities are the models' mean; they must share labels and input settings)")
    p.add_argument("--out", required=True, type=output_file, help="output .csv or .json (- for stdout CSV)")
    p.add_argument("--batch-size", type=at_least(1), default=None,
                   help="flows per forward pass (default 64 for files; 16 for a stream, at most: a stream's batch "
                        "is what arrived within 20 ms, and 16 measured the same flows/s as 64 at 2/3 the memory)")
    p.add_argument("--bf16", action="store_true",
                   help="run the model in bfloat16 (CPUs with AVX-512 BF16/AMX, GPUs); on a 2-core AVX-512 BF16 CPU "
                        "measured -1%% to +13%% flows/s for 2.5-3x the peak memory on a large capture in three runs "
                        "(benchmarks/efficiency/bench_predict.py)")
    p.add_argument("--udp-timeout", type=positive, default=60.0, help="UDP flow idle timeout, seconds (default 60)")
    p.add_argument("--tcp-timeout", type=positive, default=3600.0, help="TCP flow idle timeout, seconds (default 3600)")
    p.add_argument("--reject-below", type=probability, default=None, metavar="P",
                   help="label a flow `unknown` when its top class probability is below P (its nearest class goes "
                        "to the column closest_label); `traffic-moe evaluate --ood` reports the P that keeps "
                        "99/95/90%% of the model's own flows and what each rejects of foreign traffic")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if "-" in args.captures:
        if len(args.captures) > 1:
            raise TrafficMoeError("predict: '-' (stdin) cannot be combined with other captures")
        summary = predict_stream(sys.stdin.buffer, args.model, args.out, udp_timeout=args.udp_timeout,
                                 tcp_timeout=args.tcp_timeout, bf16=args.bf16, batch_size=args.batch_size or 16,
                                 reject_below=args.reject_below)
    else:
        summary = predict_files(args.captures, args.model, args.out, batch_size=args.batch_size or 64, progress=args.progress,
                                udp_timeout=args.udp_timeout, tcp_timeout=args.tcp_timeout, bf16=args.bf16,
                                reject_below=args.reject_below)
    # the command's own output: its summary line, on stderr so that `--out -` leaves stdout to the rows
    print(json.dumps(summary), file=sys.stderr)
    return 0 if summary["files_read"] > 0 else 1


class Classifier:
    """A checkpoint's model and tokenizer, classifying flows given as (packets, directions)."""

    def __init__(self, model_path, bf16: bool = False):
        from transformers import AutoTokenizer

        from .evaluate import class_names, load_classifier

        self.model = load_classifier(model_path)
        if torch.cuda.is_available():
            self.model = self.model.cuda()
        if bf16:
            self.model = self.model.to(torch.bfloat16)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.dense = self.model.config.model_type == "bert"
        self.names = class_names(self.model)

    @property
    def max_packets(self) -> int:
        return self.tokenizer.max_packets

    @property
    def _saved_options(self) -> dict:
        return getattr(self.model.config, "traffic_flow_options", None) or {}

    @property
    def flow_options(self) -> dict:
        """Flow assembly and anonymisation as in the checkpoint's training data — TCP normalisation and
        coalescing, TTL mode, anonymised or not (finetune records them in the config as
        ``traffic_flow_options``; older checkpoints: prepare's defaults). ``FlowTable`` keywords."""
        saved = self._saved_options
        return {"normalize_tcp": bool(saved.get("normalize_tcp", True)), "coalesce_tcp": bool(saved.get("coalesce_tcp", False)),
                "ttl": saved.get("ttl", "mask"), "anonymize_packets": bool(saved.get("anonymize", True)),
                **({"tunnels": saved["tunnels"]} if "tunnels" in saved else {})}  # absent: decap, FlowTable's default

    @property
    def level(self) -> str:
        """``flow`` or ``packet``: what one training sample of the checkpoint was."""
        return self._saved_options.get("level", "flow")

    @property
    def max_packet_bytes(self) -> int:
        return self.tokenizer.max_packet_bytes

    @property
    def capture_bytes(self) -> int:
        """Bytes of each packet kept before the tokenizer's header layout (as `prepare` stored them)."""
        return getattr(self.tokenizer, "capture_bytes", self.tokenizer.max_packet_bytes)

    @torch.inference_mode()
    def __call__(self, flows: list[list[bytes]], directions: list[list[int]]) -> tuple[list[str], list[float]]:
        if self.level == "packet":  # a packet-level model: each packet alone, the flow's verdict their mean
            owner = [i for i, flow in enumerate(flows) for _ in flow[: self.max_packets]]
            probabilities = self._probabilities([[p] for flow in flows for p in flow[: self.max_packets]],
                                                [[d] for ds in directions for d in ds[: self.max_packets]])
            index = torch.tensor(owner)
            sums = torch.zeros(len(flows), probabilities.shape[-1]).index_add_(0, index, probabilities)
            probabilities = sums / torch.bincount(index, minlength=len(flows)).clamp(min=1).unsqueeze(-1)
        else:
            probabilities = self._probabilities(flows, directions)
        best = probabilities.max(-1)
        return [self.names[i] for i in best.indices.tolist()], best.values.tolist()

    def _probabilities(self, flows, directions) -> torch.Tensor:
        batch = self.tokenizer(flows, directions=directions, padding=True, pad_to_multiple_of=8, return_tensors="pt")
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        if self.dense:  # the tokenizer of a dense folder names the directions token_type_ids (older ones did not)
            batch.pop("packet_ids", None)
            if "direction_ids" in batch:
                batch["token_type_ids"] = batch.pop("direction_ids")
        return self.model(**batch).logits.float().softmax(-1).cpu()


class Ensemble(Classifier):
    """Several fine-tuned checkpoints with the same labels, reading flows alike (packets per flow, tokens and
    stored bytes per packet, header layout, flow assembly, sample level); a flow's class probabilities are the
    members' mean. Members may differ in anything else (pretraining seed, dense or MoE). Measured on tls9 few-shot
    (docs/results/few-shot.md, "Ensembles of the pretrainings"): four tiny MoEs from four pretraining seeds 0.981 macro-F1
    at 10 flows per class against 0.971 for one on average."""

    def __init__(self, model_paths, bf16: bool = False):
        self.members = [Classifier(path, bf16=bf16) for path in model_paths]
        first = self.members[0]
        self.model, self.tokenizer, self.dense, self.names = first.model, first.tokenizer, first.dense, first.names
        for path, member in zip(model_paths[1:], self.members[1:]):
            differ = [what for what, a, b in (
                ("labels", sorted(member.names), sorted(first.names)),
                ("packets per flow", member.max_packets, first.max_packets),
                ("tokens per packet", member.max_packet_bytes, first.max_packet_bytes),
                ("stored bytes per packet", member.capture_bytes, first.capture_bytes),
                ("header layout", getattr(member.tokenizer, "header_layout", "full"),
                 getattr(first.tokenizer, "header_layout", "full")),
                ("flow assembly", member.flow_options, first.flow_options),
                ("sample level", member.level, first.level)) if a != b]
            if differ:
                raise TrafficMoeError(f"predict: {path} differs from {model_paths[0]} in {', '.join(differ)}: the models "
                                     "of an ensemble must share labels and read flows alike")
        self.orders = [[member.names.index(n) for n in first.names] for member in self.members]

    def _probabilities(self, flows, directions) -> torch.Tensor:
        return torch.stack([member._probabilities(flows, directions)[:, order]
                            for member, order in zip(self.members, self.orders)]).mean(0)


def make_classifier(model_path, bf16: bool = False) -> Classifier:
    """One checkpoint folder, or a list of them (an :class:`Ensemble` when there is more than one)."""
    paths = [model_path] if isinstance(model_path, (str, os.PathLike)) else list(model_path)
    if not paths:
        raise TrafficMoeError("predict: no --model given")
    return Classifier(paths[0], bf16=bf16) if len(paths) == 1 else Ensemble(paths, bf16=bf16)


class _Writer:
    """Rows to CSV (streamed, flushed per row) or JSON (written at the end). With ``reject_below`` a row whose
    probability is below it is labelled ``unknown``, its class kept as ``closest_label`` (counted in ``unknown``).

    A file named by ``out`` is written whole or not at all (:mod:`..atomic`): rows go to a hidden temporary
    beside it (``.NAME.*.tmp.csv``, created at the first row), which :meth:`commit` moves into place;
    :meth:`discard` (a run that read no capture, or failed) leaves an earlier file of that name as it was.
    ``-`` is standard output, written as rows come."""

    def __init__(self, out, reject_below: float | None = None):
        self.json = str(out).lower().endswith(".json")
        self.rows = []
        self.reject_below, self.unknown = reject_below, 0
        self.out = out
        self.file = self.target = None
        self.fields = FIELDS + (["closest_label"] if reject_below is not None else [])
        if out == "-" and not self.json:
            self._start(sys.stdout)

    def _start(self, file):
        self.file = file
        self.csv = csv.DictWriter(file, fieldnames=self.fields)
        self.csv.writeheader()

    def write(self, row):
        if self.reject_below is not None:  # a new row: the caller's stays as it was
            rejected = float(row["probability"]) < self.reject_below
            self.unknown += rejected
            row = {**row, "label": UNKNOWN if rejected else row["label"], "closest_label": row["label"]}
        if self.json:  # numbers as JSON numbers (the CSV's text keeps its fixed 6 decimals)
            self.rows.append({**row, "start_time": float(row["start_time"]), "probability": float(row["probability"])})
        else:
            if self.file is None:
                self._open()
            self.csv.writerow(row)
            self.file.flush()

    def _open(self):
        from ..atomic import AtomicFile

        self.target = AtomicFile(self.out, "w", newline="")
        self._start(self.target.file)

    def commit(self):
        """The output complete: into place (a CSV with no row: its header)."""
        if self.json:  # (``-`` is always CSV)
            from ..atomic import write_text

            write_text(self.out, json.dumps(self.rows, indent=1))
            return
        if self.file is None:
            self._open()
        if self.target is not None:
            self.target.commit()
        else:
            self.file.flush()

    def discard(self):
        """Nothing to keep: the temporary removed, an earlier ``out`` untouched."""
        if self.target is not None:
            self.target.discard()


@honours_progress
def predict_files(captures, model_path, out, batch_size=64, progress=True, udp_timeout=60.0, tcp_timeout=3600.0,
                  bf16=False, pool=None, reject_below=None) -> dict:
    """Classify every flow of capture files; rows in each file's flow order (first packets). ``model_path``: a
    checkpoint folder, or a list of folders classifying as an :class:`Ensemble`.

    Each file is read once, flows assembled as they arrive (as on a stream): a flow is classified as soon
    as its sample is complete (its first N packets) or it ends, and its packets are dropped then; the flow
    is only counted until it ends. Ready flows wait in a pool of ``pool`` (default 8 batches), sorted by
    length there so short flows are not padded to the longest (length bucketing). Memory is thus the
    open flows' counters plus one small row per flow, not every flow's packets (benchmarks/efficiency/bench_predict.py)."""
    from ..data.prepare import collect_inputs

    classifier = make_classifier(model_path, bf16=bf16)
    files, missing, repeated = collect_inputs(captures)
    # notices to the command's user, one plain line each on stderr (not warnings/logging: see errors.py)
    for m, why in missing.items():
        print(f"predict: {m}: {why}", file=sys.stderr)
    if repeated:
        print(f"predict: reached more than once, read once: {', '.join(repeated)}", file=sys.stderr)
    if not files and not missing:
        print(f"predict: no files found in {', '.join(captures)} (empty folders; hidden files are not read)", file=sys.stderr)
    writer = _Writer(out, reject_below)
    try:
        summary = _predict_files(files, classifier, writer, batch_size, progress, udp_timeout, tcp_timeout, pool,
                                 missing)
    except BaseException:
        writer.discard()
        raise
    if summary["files_read"]:
        writer.commit()
    else:
        writer.discard()
        if out != "-":
            print(f"predict: no capture read: {out} not written" + (" (the earlier file is left as it was)"
                                                                    if os.path.exists(out) else ""), file=sys.stderr)
    if reject_below is not None:
        summary["flows_unknown"] = writer.unknown
    return summary


def _predict_files(files, classifier, writer, batch_size, progress, udp_timeout, tcp_timeout, pool, missing) -> dict:
    from tqdm.auto import tqdm

    from ..data.flows import FlowTable
    from ..data.reader import CaptureError, open_capture

    summary = {"files_read": 0, "files_failed": dict(missing), "files_warnings": {},
               "flows": 0, "packets_total": 0, "packets_used": 0, "packets_skipped": Counter(), "seconds": 0.0,
               "max_open_flows": 0, "threads": torch.get_num_threads()}
    pool = pool or 8 * batch_size
    n, cap = classifier.max_packets, classifier.max_packet_bytes
    started = time.perf_counter()
    # one bar for all inputs, in bytes read; the postfix names the capture and counts its classified flows
    sizes = [os.path.getsize(path) if os.path.isfile(path) else 0 for path, _n, _r in files]
    bar = tqdm(total=sum(sizes), desc="predict", unit="B", unit_scale=True, disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    done_bytes = 0
    for (path, name, _root), size in zip(files, sizes):
        base, done_bytes = done_bytes, done_bytes + size
        bar.update(base - bar.n)  # the captures before this one are done (read or failed)
        try:
            records = open_capture(path)
        except CaptureError as err:
            summary["files_failed"][name] = str(err)
            bar.write(f"predict: {name}: {err}", file=sys.stderr)  # above the bar, not inside it
            continue
        bar.set_postfix_str(f"reading {name}", refresh=False)
        table = FlowTable(max_packets=n, max_bytes=classifier.capture_bytes, udp_timeout=udp_timeout,
                          tcp_timeout=tcp_timeout, **classifier.flow_options)
        pending: list[tuple[int, list, list]] = []  # (flow index, packets, directions) waiting for the model
        verdicts: dict[int, tuple[str, float]] = {}
        rows: dict[int, tuple[str, float, int]] = {}  # flow index -> five-tuple, start, packets (final)

        def classify_pending():
            # length bucketing inside the pool: batches of flows of similar length
            pending.sort(key=lambda item: sum(min(len(p), cap) + 1 for p in item[1]))
            for lo in range(0, len(pending), batch_size):
                batch = pending[lo : lo + batch_size]
                labels, probabilities = classifier([b[1] for b in batch], [b[2] for b in batch])
                verdicts.update(zip((b[0] for b in batch), zip(labels, probabilities)))
            pending.clear()
            if progress:
                bar.set_postfix_str(f"{name}: {len(verdicts):,} flows classified", refresh=False)

        def ready(flow, sample):
            pending.append((flow.index, *sample))
            if len(pending) >= pool:
                classify_pending()

        def closed(flow, sample):
            rows[flow.index] = (flow.five_tuple(), flow.start, flow.count)
            if sample is not None:
                ready(flow, sample)

        def on_progress(position, base=base, size=size):
            bar.update(base + min(position, size) - bar.n)

        _read_flows(records, table, n, summary, ready, closed, on_progress if progress else None, evict=False)
        for flow in table.finish():
            closed(flow, table.sample_left(flow))
        classify_pending()
        summary["files_read"] += 1
        if records.warning:  # read up to the damage: its flows are classified, the file is named
            summary["files_warnings"][name] = records.warning
            bar.write(f"predict: {name}: {records.warning}", file=sys.stderr)
        for index in sorted(rows):
            five_tuple, start, count = rows.pop(index)
            label, probability = verdicts.pop(index)
            writer.write({"file": name, "five_tuple": five_tuple, "start_time": f"{start:.6f}", "packets": count,
                          "label": label, "probability": f"{probability:.6f}"})
            summary["flows"] += 1
    bar.set_postfix_str(f"{summary['flows']:,} flows", refresh=False)
    bar.update(bar.total - bar.n)
    bar.close()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["flows_per_second"] = round(summary["flows"] / summary["seconds"], 1) if summary["seconds"] else None
    summary["packets_per_second"] = round(summary["packets_total"] / summary["seconds"], 1) if summary["seconds"] else None
    return summary


def predict_stream(stream, model_path, out, udp_timeout=60.0, tcp_timeout=3600.0, bf16=False, batch_size=16,
                   max_wait=0.02, reject_below=None) -> dict:
    """Classify flows from a pcap byte stream as they complete (see module docstring). Flows are cut by
    the same idle timeouts as in files, so a stream gives the verdicts its capture file gives (when its
    timestamps never go back: see ``_read_flows``).

    Reading and classifying run side by side: this thread reads and assembles flows and hands each ready
    flow to a classifier thread, which takes what has arrived — up to ``batch_size`` flows, waiting at
    most ``max_wait`` seconds after the first — into one forward pass (torch releases the GIL while it
    computes). On a busy link flows are classified in full batches; on a quiet one a verdict waits at most
    ``max_wait`` plus one forward pass. One flow per forward pass, as before, was 64% of the file path's
    flows/s; batched, 92% (benchmarks/efficiency/bench_predict.py)."""
    from ..data.flows import FlowTable
    from ..data.reader import CaptureError, open_capture

    classifier = make_classifier(model_path, bf16=bf16)
    writer = _Writer(out, reject_below)
    n = classifier.max_packets
    table = FlowTable(max_packets=n, max_bytes=classifier.capture_bytes, udp_timeout=udp_timeout,
                      tcp_timeout=tcp_timeout, **classifier.flow_options)
    summary = {"files_read": 0, "files_failed": {}, "files_warnings": {}, "flows": 0, "packets_total": 0,
               "packets_used": 0, "packets_skipped": Counter(), "flows_evicted": 0, "max_open_flows": 0,
               "threads": torch.get_num_threads()}

    waiting: queue.Queue = queue.Queue(maxsize=4 * batch_size)  # bounded: a slow model holds the reader back
    failure: list[BaseException] = []

    def classify_ready():
        """The classifier thread: batches of ready flows -> rows, until the ``None`` sent at the end."""
        try:
            finished = False
            while not finished:
                first = waiting.get()
                if first is None:
                    return
                batch = [first]
                deadline = time.monotonic() + max_wait
                while len(batch) < batch_size:
                    try:
                        item = waiting.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if item is None:
                        finished = True
                        break
                    batch.append(item)
                labels, probabilities = classifier([b[0] for b in batch], [b[1] for b in batch])
                for (_p, _d, row), label, probability in zip(batch, labels, probabilities):
                    writer.write({**row, "label": label, "probability": f"{probability:.6f}"})
                summary["flows"] += len(batch)
        except BaseException as err:  # re-raised by the reader, which stops feeding
            failure.append(err)

    worker = threading.Thread(target=classify_ready, name="predict-classifier", daemon=True)

    def hand_over(item):
        while True:
            if failure:
                raise failure[0]
            try:
                waiting.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def ready(flow, sample):  # a flow with its first n packets: its verdict now (the flow is counted on)
        hand_over((*sample, {"file": "-", "five_tuple": flow.five_tuple(), "start_time": f"{flow.start:.6f}",
                             "packets": flow.count}))

    def closed(flow, sample):  # ended or idled out before it had n packets (sample None: classified already)
        if sample is not None:
            ready(flow, sample)

    started = time.perf_counter()
    try:
        records = open_capture(stream)
    except CaptureError as err:
        summary["files_failed"]["-"] = str(err)
        print(f"predict: -: {err}", file=sys.stderr)  # as for a file: a notice to the command's user (errors.py)
        writer.discard()  # nothing read: an earlier --out file stays as it was
        return summary
    summary["files_read"] = 1
    worker.start()
    # Ctrl-C on `tcpdump -w - | traffic-moe predict -` reaches both: tcpdump's exit may close the stream before
    # this process handles its SIGINT. While reading, SIGINT ends the reading (KeyboardInterrupt, caught
    # below); once reading is over it is only recorded, so it cannot cut the classification of the open flows
    reading = [True]

    def on_sigint(_signum, _frame):
        summary["interrupted"] = True
        if reading[0]:
            raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        try:
            try:
                _read_flows(records, table, n, summary, ready, closed)
            finally:
                reading[0] = False
        except KeyboardInterrupt:  # Ctrl-C on a live capture: the end of the stream, not the loss of its open flows
            summary["interrupted"] = True
        if summary.get("interrupted"):  # notices to the command's user (errors.py)
            print("predict: -: interrupted; classifying the flows still open", file=sys.stderr)
        if records.warning:  # a stream cut mid-record (a killed tcpdump): its flows are still classified below
            summary["files_warnings"]["-"] = records.warning
            print(f"predict: -: {records.warning}", file=sys.stderr)
        for flow in table.finish():
            closed(flow, table.sample_left(flow))
    except BaseException:
        writer.discard()  # a failed run: an earlier --out file stays as it was
        raise
    finally:
        if worker.is_alive():  # the end mark after the last flow (also when reading failed), then wait
            hand_over(None)
            worker.join()
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if failure:
        writer.discard()
        raise failure[0]
    writer.commit()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    if reject_below is not None:
        summary["flows_unknown"] = writer.unknown
    return summary


def _read_flows(records, table, n, summary, ready, closed, on_progress=None, evict=True):
    """Both paths' reader: records -> flows. ``ready(flow, sample)`` once a flow holds its first ``n`` packets
    (``sample`` = its packets and directions, taken from the flow, which is counted on); ``closed(flow,
    sample)`` once a flow ends — a new SYN on its ports or an idle gap longer than its timeout — with
    ``sample`` None when it was taken already. The caller closes the flows still open at the end
    (``table.finish()``). ``on_progress(bytes_read)`` every 8192 records.

    ``evict``: every ``udp_timeout / 4`` seconds of capture time, flows idle longer than their timeout
    *at the current packet's time* are closed and dropped, so an endless stream holds only the flows still
    open. That equals ``prepare``'s assembly (which closes an idle flow at its next packet) only while
    timestamps never go back; a capture file whose clock jumps (merged or damaged captures) would get other
    flows than ``prepare`` makes of it, so files are read with ``evict=False``."""
    from ..data.decode import Decoded, decode

    skipped = summary["packets_skipped"]
    taken = table.taken
    sweep_every = table.udp_timeout / 4
    last_sweep = None
    with records:
        for ts, linktype, frame in records:
            summary["packets_total"] += 1
            if on_progress is not None and not summary["packets_total"] & 8191:
                on_progress(records.position() or 0)
            d = decode(linktype, frame, table.tunnels)
            if type(d) is not Decoded:  # same reasons as prepare's report
                skipped["not_tcp_udp" if type(d) is tuple else d] += 1
                continue
            kept = table.add(ts, d)
            if kept is True:
                summary["packets_used"] += 1
            else:  # False: after the packets the model reads (still part of a classified flow)
                skipped["beyond_max_packets" if kept is False else kept] += 1
            for flow in table.done:  # closed by a new SYN or an idle gap: final
                closed(flow, table.sample_left(flow))
            table.done.clear()
            flow = table.open.get(table.key(d))
            if flow is not None and flow.packets is not taken and len(flow.packets) == n:
                ready(flow, table.take_sample(flow))
            if evict and (last_sweep is None or ts - last_sweep >= sweep_every):
                last_sweep = ts
                for key, flow in list(table.open.items()):
                    if ts - flow.last > (table.tcp_timeout if flow.proto == 6 else table.udp_timeout):
                        del table.open[key]
                        summary["flows_evicted"] += 1
                        closed(flow, table.sample_left(flow))
            if len(table.open) > summary["max_open_flows"]:
                summary["max_open_flows"] = len(table.open)

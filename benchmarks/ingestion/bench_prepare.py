"""Speed of `traffic-moe prepare` on ../shared/data/loopback9, side by side in one run with
(a) a bare dpkt loop that only decodes every packet (Ethernet -> IP -> TCP/UDP) and
(b) a scapy per-packet pipeline like the ones today's traffic models ship (PcapReader, per packet
    IP/TCP/UDP layer access, 5-tuple flow dict, header masking through scapy fields, raw bytes).

Also, with --num-proc 2 against 1 process: the three tasks' folders together (parallel by file), and
the same captures written into one file (parallel by flow inside it: the case of one large capture).

usage: python benchmarks/ingestion/bench_prepare.py [DATA_DIR] [--repeats 3] [--scapy-packets 8000] [--no-one-capture]
Writes benchmarks/ingestion/results/prepare.json and prepare.md. Not a test: timings depend on the machine.
Each figure is the median of --repeats runs (scapy: one run over its first --scapy-packets packets,
it is ~100x slower). prepare runs in-process (imports excluded, as for the baselines) and writes
its DatasetDict to a temporary directory (saving included).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parents[2] / "shared" / "data" / "loopback9"


def bare_dpkt(files):
    import dpkt

    n = 0
    for p in files:
        with open(p, "rb") as f:
            for _ts, buf in dpkt.pcap.Reader(f):
                ip = dpkt.ethernet.Ethernet(buf).data
                if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                    n += 1
    return n


def scapy_pipeline(files, limit):
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.utils import PcapReader

    flows = {}
    n = 0
    for p in files:
        for pkt in PcapReader(p):
            n += 1
            if IP not in pkt:
                continue
            ip = pkt[IP]
            l4 = ip[TCP] if TCP in ip else (ip[UDP] if UDP in ip else None)
            if l4 is None:
                continue
            key = (ip.proto,) + tuple(sorted([(ip.src, l4.sport), (ip.dst, l4.dport)]))
            pk = ip.copy()
            pk.src, pk.dst, pk.id, pk.ttl, pk.chksum = "0.0.0.0", "0.0.0.0", 0, 0, 0
            pk[l4.__class__].sport = pk[l4.__class__].dport = 0
            pk[l4.__class__].chksum = 0
            if TCP in pk:
                pk[TCP].seq = pk[TCP].ack = 0
            flows.setdefault(key, []).append(bytes(pk)[:64])
            if n >= limit:
                return n
    return n


def run_prepare(data, num_proc):
    from traffic_moe_hf.data.prepare import prepare

    with tempfile.TemporaryDirectory() as out:
        r = prepare(data if isinstance(data, list) else [data], out, labels="file", num_proc=num_proc, progress=False)
    return r["packets_total"], r


def timed(fn, repeats):
    ts, res = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts, res


def interleaved(*fns, repeats):
    """Time functions in turn (a b c a b c ...), so drifting load on a shared machine hits each alike.
    Returns per function (median seconds, all seconds, last result)."""
    times = [[] for _ in fns]
    results = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            results[i] = fn()
            times[i].append(time.perf_counter() - t)
    return [(statistics.median(ts), ts, r) for ts, r in zip(times, results)]


def _spin(n=2_000_000):
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def machine_scaling(repeats):
    """What two processes gain on this machine for pure-Python work with no I/O and no shared data:
    two units of `_spin` in one process against one unit in each of two forked processes, alternated.
    The ceiling `--num-proc 2` is measured against (cores shared with neighbours, turbo clocks)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()

    def two():
        ps = [ctx.Process(target=_spin) for _ in range(2)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()

    (t1, a1, _), (t2, a2, _) = interleaved(lambda: (_spin(), _spin()), two, repeats=repeats)
    ratios = sorted(x / y for x, y in zip(a1, a2))
    return {"seconds_1": round(t1, 4), "seconds_2": round(t2, 4), "ratio": round(t1 / t2, 2),
            "ratios_all": [round(r, 2) for r in ratios]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scapy-packets", type=int, default=8000)
    ap.add_argument("--larger", nargs="*", default=[str(DEFAULT.parent / t) for t in ("loopback9", "tls9", "attack10")],
                    help="also time --num-proc 2 against 1 process on these inputs together (default: the three tasks)")
    ap.add_argument("--no-one-capture", action="store_true",
                    help="skip timing the --larger inputs written into one capture (split over processes by flow)")
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.data, "*.pcap")))
    if not files:
        sys.exit(f"no captures in {a.data}")
    import datasets  # noqa: F401  (imports outside the timings)
    import dpkt  # noqa: F401

    run_prepare(a.data, 1)  # warm-up: page cache, tokenizer build, lazy imports
    rows = {}
    total = sum(1 for _ in _records(files))
    (tb, allb, _), (t1, all1, res1), (t2, all2, res2) = interleaved(
        lambda: bare_dpkt(files), lambda: run_prepare(a.data, 1), lambda: run_prepare(a.data, 2), repeats=a.repeats)
    rows["bare dpkt decode loop (a)"] = (total, tb, allb)
    rows["traffic-moe prepare, 1 process"] = (res1[0], t1, all1)
    report = res1[1]
    rows["traffic-moe prepare, --num-proc 2"] = (res2[0], t2, all2)
    scaling = machine_scaling(max(a.repeats, 5))
    t, all_t, n = timed(lambda: scapy_pipeline(files, a.scapy_packets), 1)
    rows[f"scapy per-packet pipeline (b), first {n} packets"] = (n, t, all_t)
    larger = None
    if a.larger and all(os.path.isdir(d) for d in a.larger):
        (l1, la1, lr1), (l2, la2, lr2) = interleaved(lambda: run_prepare(a.larger, 1), lambda: run_prepare(a.larger, 2), repeats=a.repeats)
        larger = {"inputs": [os.path.basename(d) for d in a.larger], "packets": lr1[0], "files": len(lr1[1]["per_file"]),
                  "seconds_1": round(l1, 4), "seconds_2": round(l2, 4), "all_1": [round(x, 4) for x in la1],
                  "all_2": [round(x, 4) for x in la2], "ratio": round(l1 / l2, 2)}
    one = None
    if a.larger and all(os.path.isdir(d) for d in a.larger) and not a.no_one_capture:
        with tempfile.TemporaryDirectory() as tmp:
            big = os.path.join(tmp, "one-capture.pcap")
            n_one = one_capture(a.larger, big)
            (o1, oa1, or1), (o2, oa2, or2) = interleaved(lambda: run_prepare([big], 1), lambda: run_prepare([big], 2), repeats=a.repeats)
        one = {"inputs": [os.path.basename(d) for d in a.larger], "packets": n_one,
               "flows": or1[1]["flows"], "split": or2[1]["files_split"], "seconds_1": round(o1, 4), "seconds_2": round(o2, 4),
               "all_1": [round(x, 4) for x in oa1], "all_2": [round(x, 4) for x in oa2], "ratio": round(o1 / o2, 2)}
    pps = {k: v[0] / v[1] for k, v in rows.items()}
    kb = list(rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}, Python {platform.python_version()}"
    ratios = {
        "prepare / bare dpkt": pps[kb[1]] / pps[kb[0]],
        "prepare / scapy": pps[kb[1]] / pps[kb[3]],
        "num-proc 2 / 1": pps[kb[2]] / pps[kb[1]],
    }
    result = {"data": a.data, "machine": machine, "packets": total, "flows": report["flows"],
              "rows": {k: {"packets": v[0], "seconds_median": round(v[1], 4), "seconds_all": [round(x, 4) for x in v[2]],
                           "packets_per_s": round(pps[k])} for k, v in rows.items()},
              "ratios": {k: round(v, 2) for k, v in ratios.items()},
              "prepare_options": report["options"], "prepare_timing_last": report["timing"], "larger": larger,
              "machine_scaling": scaling,
              "one_capture": one}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "prepare.json").write_text(json.dumps(result, indent=1))
    md = [f"Machine: {machine}. Data: loopback9 ({total} packets, {report['flows']} flows, 9 pcaps); "
          f"median of {a.repeats} runs, the three pipelines alternated; prepare defaults (flow level, 8 packets, 128 bytes stored and 64 tokens per packet in the compact header layout, anonymised, "
          "tokenized, stratified split, dedup, Arrow + save_to_disk).", "",
          "| pipeline | packets | seconds | packets/s |", "|---|---:|---:|---:|"]
    for k, v in rows.items():
        md.append(f"| {k} | {v[0]} | {v[1]:.3f} | {pps[k]:,.0f} |")
    md += ["", "| ratio | value | target |", "|---|---:|---:|",
           f"| prepare (1 process) / bare dpkt decode | {ratios['prepare / bare dpkt']:.2f}x | >= 1.0x |",
           f"| prepare (1 process) / scapy pipeline | {ratios['prepare / scapy']:.1f}x | >= 20x |",
           f"| prepare --num-proc 2 / 1 process | {ratios['num-proc 2 / 1']:.2f}x | >= 1.7x |", "",
           f"The machine's own two-process ceiling, measured in the same run: pure-Python work (no I/O, nothing shared) "
           f"in two forked processes against one process, alternated, median of {len(scaling['ratios_all'])}: "
           f"**{scaling['ratio']:.2f}x** (each pair: {', '.join(f'{r:.2f}' for r in scaling['ratios_all'])}).", ""]
    if larger:
        md += [f"Larger input ({' + '.join(larger['inputs'])}: {larger['packets']} packets, {larger['files']} files; "
               f"runs alternated, median of {a.repeats}): 1 process {larger['seconds_1']:.3f} s, --num-proc 2 "
               f"{larger['seconds_2']:.3f} s: **{larger['ratio']:.2f}x**.", ""]
    if one:
        md += [f"One capture (the Ethernet pcaps of {' + '.join(one['inputs'])} written into one file: {one['packets']} packets, "
               f"{one['flows']} flows; split over the processes by flow; runs alternated, median of {a.repeats}): 1 process "
               f"{one['seconds_1']:.3f} s, --num-proc 2 {one['seconds_2']:.3f} s: **{one['ratio']:.2f}x**.", ""]
    (HERE / "results" / "prepare.md").write_text("\n".join(md))
    print("\n".join(md))


def one_capture(dirs, out):
    """Write every Ethernet pcap of ``dirs`` into one capture (file after file), the case of a user
    with one large capture; returns its packet count."""
    import dpkt

    n = 0
    with open(out, "wb") as g:
        w = dpkt.pcap.Writer(g, linktype=1, snaplen=262144)
        for p in sorted(f for d in dirs for f in glob.glob(os.path.join(d, "*.pcap"))):
            with open(p, "rb") as f:
                r = dpkt.pcap.Reader(f)
                if r.datalink() != 1:
                    continue
                for ts, buf in r:
                    w.writepkt(buf, ts)
                    n += 1
    return n


def _records(files):
    from traffic_moe_hf.data.reader import iter_records

    for p in files:
        yield from iter_records(p)


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()

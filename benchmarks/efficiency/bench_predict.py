"""Throughput and peak memory of `traffic-moe predict` on large captures: a file, the same file piped as a
stream (`predict -`), and bf16, each in a fresh process.

Captures: benchmarks/ingestion/bench_prepare.py's `one_capture` (every Ethernet pcap of the three tasks in
../shared/data written into one file: 109 MB, 11,634 flows) and bench_prepare_memory.py's five
time-shifted copies of it (546 MB, 58,170 flows). Model: `tiny`, fine-tuned for one epoch on the demo
captures shipped in data/demo (its verdicts do not matter here, only its cost; the tables' models are
`tiny` too). Reported: wall time of the command (start-up and model load included), the flows/s
predict itself reports, and the process's peak RSS.

usage: python benchmarks/efficiency/bench_predict.py [--copies 5] [--json benchmarks/efficiency/results/predict.json]
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# runs argv (stdin from a file when the first argument is "<PATH") in a child and prints its exit status,
# peak RSS in KB and the last line of its standard error (predict's JSON summary)
_MEASURE = (
    "import resource, subprocess, sys\n"
    "argv = sys.argv[1:]\n"
    "stdin = open(argv.pop(0)[1:], 'rb') if argv[0].startswith('<') else None\n"
    "r = subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "print((r.stderr.strip().splitlines() or [''])[-1])\n"
)


def measure(argv) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    head, summary = out.split("\n", 1)
    rc, kb = head.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(argv)}: exit status {rc}")
    summary = json.loads(summary)
    return {"wall_s": round(wall, 1), "flows": summary["flows"], "seconds": summary["seconds"],
            "flows_per_s": round(summary["flows"] / summary["seconds"], 1), "peak_rss_mb": round(int(kb) / 1024, 1)}


def main() -> int:
    sys.path.insert(0, str(REPO / "benchmarks" / "ingestion"))  # bench_prepare_memory (and its bench_prepare)
    from bench_prepare_memory import large_captures

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--json", default=str(HERE / "results" / "predict.json"))
    args = parser.parse_args()
    cli = [sys.executable, "-m", "traffic_moe_hf.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one, many = large_captures(tmp, args.copies)  # first: it says what is missing before minutes of work
        data, model = os.path.join(tmp, "demo"), os.path.join(tmp, "model")
        subprocess.run([*cli, "prepare", str(REPO / "data" / "demo" / "loopback9"), "--labels", "file", "--out", data,
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*cli, "finetune", "--data", data, "--config", "tiny", "--out", model, "--epochs", "1",
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs = [("file", one, []), ("file", many, []), ("stream (predict -)", many, []), ("file, --bf16", many, ["--bf16"])]
        for how, capture, extra in runs:
            source = ["<" + capture, *cli, "predict", "-"] if how.startswith("stream") else [*cli, "predict", capture]
            row = {"how": how, "capture": Path(capture).name, "bytes": os.path.getsize(capture),
                   **measure([*source, "--model", model, "--out", os.path.join(tmp, "out.csv"), "--no-progress", *extra])}
            rows.append(row)
            print(row, flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'unknown CPU'}",
              "python": sys.version.split()[0], "model": "tiny, fine-tuned 1 epoch on data/demo", "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    lines = ["| how | capture | MB | flows | predict flows/s | wall s | peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['how']} | {r['capture']} | {r['bytes'] / 1e6:.0f} | {r['flows']:,} | {r['flows_per_s']:,.0f} | "
              f"{r['wall_s']} | {r['peak_rss_mb']:,.0f} |" for r in rows]
    Path(args.json).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

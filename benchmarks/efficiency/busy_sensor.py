"""`traffic-moe predict` on a busy sensor: flows/s with the machine as it is and beside one more CPU-bound
process, alternated side by side in one run (issue 28, item 2).

On a sensor, predict shares the cores with tcpdump or Zeek. torch starts one thread per core; beside a busy
process its threads wait for the one that lost its core. This measures, on ../shared/data/loopback9 (9
captures, ~2,000 flows; ``--captures`` a subset):

- ``torch default``: ``--threads`` = every usable core (what predict did before the option existed);
- ``--threads 1``;
- ``new default``: no option (the cores not busy now, read from /proc/stat; at least 1),

each under two loads, alternated in rounds: *baseline* (the machine as it is: whatever else runs on it is
recorded, e.g. a background training job) and *+1 busy* (baseline plus one pure-Python busy loop started
before the run and stopped after it). Reported per setting: median flows/s (predict's own figure, model load
excluded) under each load and their ratio (target: +1 busy >= 0.6x baseline). Each run is a fresh process.

Model: `tiny`, fine-tuned for one epoch on the demo captures in data/demo (its verdicts do not matter, only
its cost), cached under --work.

usage: python benchmarks/efficiency/busy_sensor.py [--rounds 3] [--work /tmp/busy_sensor]
       [--json benchmarks/efficiency/results/busy_sensor.json]
Not a test: figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = REPO.parent / "shared" / "data" / "loopback9"
BUSY = "while True:\n    pass\n"


def model(work: Path) -> Path:
    out = work / "model"
    if (out / "config.json").is_file():
        return out
    from traffic_moe_hf.data.prepare import prepare
    from traffic_moe_hf.recipes.finetune import finetune

    prepare([str(REPO / "data" / "demo" / "loopback9")], str(work / "demo"), labels="file", progress=False)
    finetune(str(work / "demo"), str(out), config="tiny", epochs=1, batch_size=32, lr=2e-3, progress=False)
    return out


def others() -> list[str]:
    """The other processes using a CPU now (ps: %CPU over their lifetime >= 20), for the record."""
    try:
        ps = subprocess.run(["ps", "-eo", "pcpu=,args="], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    rows = []
    for line in ps.splitlines():
        cpu, _, args = line.strip().partition(" ")
        if float(cpu) >= 20 and "busy_sensor" not in args and "while True" not in args:
            rows.append(f"{cpu}% {args[:120]}")
    return rows


def run_predict(captures: list[str], model_dir: Path, threads: int | None, out: Path) -> dict:
    argv = [sys.executable, "-m", "traffic_moe_hf.cli", "predict", *captures, "--model", str(model_dir),
            "--out", str(out), "--no-progress"] + ([] if threads is None else ["--threads", str(threads)])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    load = os.getloadavg()[0]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    return {"flows": summary["flows"], "seconds": summary["seconds"], "flows_per_s": summary["flows_per_second"],
            "threads": summary.get("threads"), "load_1min_before": round(load, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/busy_sensor")
    parser.add_argument("--data", default=str(DATA), help="folder of captures (default ../shared/data/loopback9)")
    parser.add_argument("--captures", default=None,
                        help="comma-separated capture names of --data to classify (default: all), e.g. dns,http,mqtt,ssh "
                             "to keep the run within ~10 minutes on a loaded machine")
    parser.add_argument("--json", default=str(HERE / "results" / "busy_sensor.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = model(work)
    from traffic_moe_hf.threads import usable_cores

    cores = usable_cores()
    captures = ([str(Path(args.data) / f"{name}.pcap") for name in args.captures.split(",")] if args.captures
                else [args.data])
    settings = {"torch default": cores, "--threads 1": 1, "new default": None}
    runs = []
    started = time.time()
    background = others()
    for round_ in range(args.rounds):
        for load in ("baseline", "+1 busy"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "+1 busy" else None
            try:
                if busy is not None:
                    time.sleep(1.0)  # the busy loop running before predict starts
                for name, threads in settings.items():
                    row = {"round": round_, "load": load, "setting": name,
                           **run_predict(captures, model_dir, threads, work / "verdicts.csv")}
                    runs.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                if busy is not None:
                    busy.terminate()
                    busy.wait()
    table = {}
    for name in settings:
        medians = {load: statistics.median(r["flows_per_s"] for r in runs if r["setting"] == name and r["load"] == load)
                   for load in ("baseline", "+1 busy")}
        table[name] = {**{f"{k} flows/s": round(v, 1) for k, v in medians.items()},
                       "ratio": round(medians["+1 busy"] / medians["baseline"], 2),
                       "threads used": sorted({r["threads"] for r in runs if r["setting"] == name})}
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"({cores} usable), Python {platform.python_version()}",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "data": "../shared/data/" + Path(args.data).name + (f" ({args.captures})" if args.captures else ""),
        "other_processes_at_start": background,
        "minutes": round((time.time() - started) / 60, 1),
        "table": table,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# predict on a busy sensor ({record['date']})", "",
             f"Machine: {record['machine']}. Data: {record['data']}. Command: `{record['command']}`. "
             f"Medians of {args.rounds} alternated rounds; flows/s as predict reports it (model load excluded).", "",
             "Other processes using a CPU when the run started (baseline = these; +1 busy = these plus one "
             "pure-Python busy loop):", ""] + [f"- `{p}`" for p in background or ["none"]] + [
             "", "| threads | baseline flows/s | +1 busy flows/s | ratio | threads used |", "|---|---:|---:|---:|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['baseline flows/s']} | {row['+1 busy flows/s']} | {row['ratio']} | "
                     f"{', '.join(map(str, row['threads used']))} |")
    Path(args.json).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

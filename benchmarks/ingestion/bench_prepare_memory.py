"""Peak memory of `traffic-moe prepare` on one large capture, and what each additional flow costs.

Builds two captures from the three tasks' pcaps in ../shared/data (benchmarks/ingestion/bench_prepare.py's
`one_capture`: every Ethernet pcap written into one file; and K time-shifted copies of it, so the
flows repeat as new flows), runs `traffic-moe prepare CAPTURE --out DIR` on each in a fresh process
and reads that process's peak RSS. The difference divided by the difference in flows is the memory
per additional flow, the figure that decides whether a capture fits in memory.

usage: python benchmarks/ingestion/bench_prepare_memory.py [--copies 5] [--json OUT]
Not a test: figures depend on the machine and the Python/torch build (the process itself, with torch
and datasets imported, is several hundred MB of the peak).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"

_MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_mb(argv) -> float:
    """Peak RSS (MB) of a command run alone in a fresh child of a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, check=True).stdout
    rc, kb = out.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(argv)}: exit status {rc}")
    return int(kb) / 1024


def shifted_copies(src: str, dst: str, copies: int) -> int:
    """``copies`` copies of capture ``src``, each 10^6 s later than the one before (flows repeat as new flows)."""
    import dpkt

    with open(src, "rb") as f:
        records = list(dpkt.pcap.Reader(f))
    with open(dst, "wb") as g:
        w = dpkt.pcap.Writer(g, linktype=1, snaplen=262144)
        for k in range(copies):
            for ts, buf in records:
                w.writepkt(buf, ts + k * 1e6)
    return len(records) * copies


def large_captures(tmp: str, copies: int) -> dict:
    """The two large captures of this benchmark and of bench_predict.py, written into ``tmp``: the three
    tasks' Ethernet pcaps in one file, and ``copies`` time-shifted copies of it. Returns path -> packets."""
    sys.path.insert(0, str(HERE))
    from bench_prepare import one_capture

    dirs = [str(SHARED / t) for t in ("loopback9", "tls9", "attack10")]
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
        raise SystemExit(f"needs {missing}")
    one = os.path.join(tmp, "one.pcap")
    many = os.path.join(tmp, f"x{copies}.pcap")
    packets = {one: one_capture(dirs, one)}
    packets[many] = shifted_copies(one, many, copies)
    return packets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--json", default=str(HERE / "results" / "prepare_memory.json"))
    args = parser.parse_args()
    cli = [sys.executable, "-m", "traffic_moe_hf.cli", "prepare"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        packets = large_captures(tmp, args.copies)
        one, many = packets
        for path in (one, many):
            out = os.path.join(tmp, "out-" + Path(path).stem)
            mb = peak_rss_mb([*cli, path, "--out", out, "--no-progress"])
            report = json.loads(Path(out, "report.json").read_text())
            rows.append({"capture": Path(path).name, "bytes": os.path.getsize(path), "packets": packets[path],
                         "flows": report["flows"], "peak_rss_mb": round(mb, 1)})
            print(rows[-1], flush=True)
        imports = peak_rss_mb([sys.executable, "-c", "import datasets, traffic_moe_hf.data.prepare, "
                               "traffic_moe_hf.data.samples as s; s.get_tokenizer(None, s.tokenizer_settings(s.PrepareConfig()))"])
    per_flow_kb = (rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]) * 1024 / (rows[1]["flows"] - rows[0]["flows"])
    result = {"rows": rows, "imports_only_peak_rss_mb": round(imports, 1), "kb_per_additional_flow": round(per_flow_kb, 2),
              "python": sys.version.split()[0]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"imports alone: {imports:.0f} MB; per additional flow: {per_flow_kb:.1f} KB -> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The sv17 transfer task and the pretraining corpus that must never see its held-out captures.

    .venv/bin/python benchmarks/foundation/make_corpus.py [--work runs/foundation]

1. sv17: ``../shared/tools/split-by-label.py`` writes one pcap per (nDPI label, source capture) from
   suricata-verify's captures; ``traffic-moe prepare --labels dir --split file --split-files-by name
   --split-ratios 0.6,0.1,0.3`` splits them so that no source capture is on two sides (one capture that
   holds flows of two labels is one unit; with ``--split-files-by path`` 27 captures were).
2. The held-out list (``benchmarks/foundation/sv17-heldout.txt``): every source capture with a flow in
   sv17's validation or test split, by its path under ``../shared/data/public``, plus every byte-identical
   copy of one elsewhere under ``public/`` (zeek's and suricata's test traces share some captures).
3. The corpus: one command, unlabelled, the public captures less the held-out list::

       traffic-moe prepare ../shared/data/public/{suricata-verify/pcaps,zeek-traces,tcpdump-tests} --labels none --exclude-from benchmarks/foundation/sv17-heldout.txt \\
           --split-ratios 0.95,0.05,0 --out WORK/corpus-public

   plus the train splits of loopback9 / tls9 / attack10 prepared with the defaults (pretrain reads
   only ``train`` of every dataset it is given).
Everything is prepared with ``prepare``'s defaults (8 packets x 64 bytes, compact header layout), the
model input the shipped checkpoint reads.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
PUBLIC = SHARED / "data" / "public"
SV = PUBLIC / "suricata-verify"
HELDOUT = Path(__file__).with_name("sv17-heldout.txt")
CLI = [sys.executable, "-m", "traffic_moe_hf.cli"]


def run(cmd):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "foundation")
    ap.add_argument("--skip-corpus", action="store_true", help="only sv17 and the held-out list")
    a = ap.parse_args(argv)
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    src = work / "sv17-src"
    if not src.is_dir():
        run([sys.executable, SHARED / "tools" / "split-by-label.py", SV / "pcaps", SV / "flows-ndpi.tsv", src])
    sv17 = work / "sv17"
    # --tunnels outer: nDPI labelled the outer flows (its VXLAN class is the outer UDP flow, not what it carries)
    run([*CLI, "prepare", src, "--labels", "dir", "--split", "file", "--split-files-by", "name", "--tunnels", "outer",
         "--split-ratios", "0.6,0.1,0.3", "--out", sv17, "--no-progress"])
    # split-by-label names a file <test path with / as __>.pcap; map back to the source captures
    original = {}
    for line in (SV / "flows-ndpi.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            f = line.split("\t")[0]
            original[f.replace("/", "__").rsplit(".", 1)[0] + ".pcap"] = f
    splits = json.loads((sv17 / "split_report.json").read_text())["files"]
    side = collections.defaultdict(set)
    for s, names in splits.items():
        for n in names:
            side[original[os.path.basename(n)]].add(s)
    crossing = [f for f, ss in side.items() if len(ss) > 1]
    if crossing:
        raise SystemExit(f"source captures on two sides of sv17's split: {crossing[:5]}")
    held = sorted(f for f, ss in side.items() if ss & {"validation", "test"})
    held_hashes = {sha(SV / "pcaps" / f) for f in held}
    copies = sorted(str(p.relative_to(PUBLIC.parent)) for p in PUBLIC.rglob("*")
                    if p.is_file() and p.stat().st_size > 0 and not p.is_relative_to(SV / "pcaps")
                    and p.suffix not in (".tsv", ".md", ".txt") and sha(p) in held_hashes)
    lines = ["# sv17's validation and test source captures (and byte-identical copies) - never pretrained on.",
             "# Written by benchmarks/foundation/make_corpus.py; patterns match prepare's display names and paths."]
    lines += [f"*/suricata-verify/pcaps/{f}" for f in held] + [f"*/{c}" for c in copies]
    HELDOUT.write_text("\n".join(lines) + "\n")
    print(f"held out: {len(held)} source captures + {len(copies)} identical copies elsewhere -> {HELDOUT}")
    if a.skip_corpus:
        return
    run([*CLI, "prepare", SV / "pcaps", PUBLIC / "zeek-traces", PUBLIC / "tcpdump-tests", "--labels", "none", "--exclude-from", HELDOUT, "--split-ratios", "0.95,0.05,0",
         "--out", work / "corpus-public", "--no-progress"])
    for name in ("loopback9", "tls9", "attack10"):
        run([*CLI, "prepare", SHARED / "data" / name, "--labels", "file", "--out", work / name, "--no-progress"])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Summarise `traffic-moe robustness` JSON files as one Markdown table: per model, the macro-F1 drop in
points under each black-box attack at its strongest reported budget, and the worst drop over every
attack and budget. usage: python benchmarks/robustness/robustness_summary.py LABEL=FILE.json[:model,...] ..."""

from __future__ import annotations

import json
import sys

STRONGEST = (("padding", "1500"), ("split", "4"), ("chaff", "1.0"), ("normalize", "256"), ("headers", "1.0"))


def rows(label: str, path: str, only: list[str] | None) -> list[str]:
    report = json.loads(open(path).read())
    models = report.get("models") or {report.get("name", "model"): report}
    out = []
    for name, m in models.items():
        if only and name not in only:
            continue
        clean = m["clean"]["macro_f1"]
        drops = {(a, b): 100 * (clean - r["macro_f1"]) for a, by in m["attacks"].items() for b, r in by.items()
                 if not a.startswith(("whitebox", "pgd"))}
        worst = max(drops, key=drops.get)
        cells = [f"{drops[k]:.1f}" if k in drops else "–" for k in STRONGEST]
        out.append(f"| {label} {name} | {clean:.3f} | " + " | ".join(cells)
                   + f" | {drops[worst]:.1f} ({worst[0]} {worst[1]}) |")
    return out


def main(argv: list[str]) -> int:
    lines = ["| model | clean macro-F1 | " + " | ".join(f"{a} {b}" for a, b in STRONGEST) + " | worst drop (where) |",
             "|---|---:|" + "---:|" * len(STRONGEST) + "---|"]
    for arg in argv:
        label, spec = arg.split("=", 1)
        path, _, names = spec.partition(":")
        lines += rows(label, path, names.split(",") if names else None)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

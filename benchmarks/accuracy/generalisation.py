#!/usr/bin/env python3
"""Generalisation: models trained by benchmarks/accuracy/real_tasks.py on one task's captures, evaluated on the
same classes captured again under other conditions and prepared separately (`prepare --split none`),
labels matched by name — beside the random forest trained on the same training flows.

The shifted captures are made with ../shared/tools' generators (real servers and clients) under a
different loopback MTU, e.g.

    MTU=700 ../shared/tools/gen-loopback-traffic.sh 40 /tmp/shift/loopback9-mtu700
    MTU=700 ../shared/tools/gen-tls-traffic.sh 40 /tmp/raw && ../shared/tools/cut-flows.py /tmp/raw /tmp/shift/tls9-mtu700 64

usage: python benchmarks/accuracy/generalisation.py --real runs/real TASK=CAPTURE_DIR [TASK=CAPTURE_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", default="runs/real", help="output folder of benchmarks/accuracy/real_tasks.py")
    parser.add_argument("shifted", nargs="+", metavar="TASK=DIR")
    parser.add_argument("--condition", default="loopback MTU 700 (1500 in training)")
    parser.add_argument("--shots", nargs="*", type=int, default=[10],
                        help="also evaluate the few-shot checkpoints with these k (mean over seeds)")
    args = parser.parse_args()

    from datasets import load_from_disk

    from traffic_moe_hf.data.prepare import prepare
    from traffic_moe_hf.recipes.baselines import random_forest
    from traffic_moe_hf.recipes.common import label_names
    from traffic_moe_hf.recipes.evaluate import evaluate

    real = Path(args.real)
    report = {"condition": args.condition, "tasks": {}}
    for item in args.shifted:
        task, capture_dir = item.split("=", 1)
        shifted = real / "data" / f"{task}-shifted"
        if not (shifted / "dataset_dict.json").is_file():  # with the task's own input settings
            options = json.loads((real / "data" / task / "report.json").read_text())["options"]
            same = {k: options[k] for k in ("max_packets", "max_bytes", "packet_bytes", "header_layout", "ttl") if k in options}
            prepare([capture_dir], str(shifted), labels="file", split="none", progress=False, **same)
        rows = {}
        few = {}
        for folder in sorted((real / "ckpt" / task).iterdir()):
            if not (folder / "config.json").is_file():
                continue
            if "shot" in folder.name:
                name, _, _seed = folder.name.rpartition("-")
                if int(name.rsplit("-", 1)[1].removesuffix("shot")) in args.shots:
                    result = evaluate(str(shifted), str(folder), split="test", audit=False)
                    few.setdefault(name, []).append(result["macro_f1"])
                continue
            result = evaluate(str(shifted), str(folder), split="test", audit=False)
            rows[folder.name] = {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"], "samples": result["samples"]}
        for name, values in sorted(few.items()):
            rows[name] = {"macro_f1": float(np.mean(values)), "macro_f1_seeds": values}
        train = load_from_disk(str(real / "data" / task))["train"]
        test = load_from_disk(str(shifted))["test"]
        names = label_names(train)
        index = {n: i for i, n in enumerate(names)}
        mapped = np.array([index.get(n, -1) for n in label_names(test)])[np.asarray(test["label"])]
        keep = np.flatnonzero(mapped >= 0)
        for suffix, payload in (("", 32), ("-12b", 12)):  # the baseline's 32 payload bytes, and 12 (see real_tasks.py)
            forest = random_forest(train, test.select(keep), names, labels_eval=mapped[keep], payload_bytes=payload)
            rows[f"random-forest{suffix}"] = {"accuracy": forest["accuracy"], "macro_f1": forest["macro_f1"],
                                              "samples": int(len(keep))}
        in_task = {}
        for name in rows:
            path = real / "runs" / task / f"{name}-all.json"
            if "shot" in name:
                runs = [real / "runs" / task / f"{name}-{seed}.json" for seed in range(len(rows[name]["macro_f1_seeds"]))]
                if all(r.is_file() for r in runs):
                    in_task[name] = float(np.mean([json.loads(r.read_text())["macro_f1"] for r in runs]))
            elif path.is_file():
                in_task[name] = json.loads(path.read_text())["macro_f1"]
        for suffix in ("", "-12b"):
            rf_path = real / "runs" / task / f"random-forest{suffix}-all.json"
            if rf_path.is_file():
                in_task[f"random-forest{suffix}"] = json.loads(rf_path.read_text())["macro_f1"]
        report["tasks"][task] = {"rows": rows, "same_conditions_macro_f1": in_task, "shifted_flows": len(test)}
    (real / "generalisation.json").write_text(json.dumps(report, indent=1))
    lines = [f"Shift: {report['condition']}. Macro-F1 on the test split of the original captures vs on all flows of the "
             "re-captured ones (labels matched by name).", ""]
    for task, t in report["tasks"].items():
        lines += [f"**{task}** ({t['shifted_flows']} shifted flows)", "", "| model | same conditions | shifted |", "|---|---:|---:|"]
        for name, row in t["rows"].items():
            same = t["same_conditions_macro_f1"].get(name)
            lines.append(f"| {name} | {'not measured' if same is None else f'{same:.3f}'} | {row['macro_f1']:.3f} |")
        lines.append("")
    (real / "generalisation.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Known classes captured again under other conditions: the fine-tuned checkpoints of ``transfer.py`` (WORK/transfer/
ckpt/<task>/<row>-<cell>-<seed>) scored on every flow of a re-capture of the same services (data/shifted/: the loopback
MTU at 700 instead of 1500, same servers and clients), prepared with ``prepare``'s defaults (``--labels file --split
none``), labels matched by name — beside the random forests trained on the task's training flows.

    .venv/bin/python benchmarks/foundation/shift.py --work /work/data/foundation \\
        [--shifted tls9=data/shifted/tls9-mtu700 loopback9=data/shifted/loopback9-mtu700] [--name shift --condition TEXT]

Writes WORK/transfer/NAME.json and benchmarks/foundation/results/NAME.md (NAME: ``--name``, default shift). Evaluation only (no training of models:
the checkpoints are transfer.py's); a checkpoint folder without weights is skipped and named.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TITLES = {"moe": "Traffic-MoE mini, shipped v1", "scratch": "Traffic-MoE mini, from scratch", "dense": "dense BERT mini, shipped v1"}


def title(row: str) -> str:
    """A table row's title from its cell name: moe@v3 -> "Traffic-MoE mini, shipped v3"."""
    key, _, version = row.partition("@")
    if version and key in ("moe", "dense"):
        return f"{TITLES[key].rsplit(' ', 1)[0]} {version}"
    return TITLES.get(row, row)


sys.path.insert(0, str(HERE))
from transfer import FORESTS, forest_cells, mean_std  # noqa: E402  (the transfer table's forests and cells)

SHORT = dict(zip(FORESTS, ("classic forest", "token forest")))
SHIFTED = ("tls9=data/shifted/tls9-mtu700", "loopback9=data/shifted/loopback9-mtu700")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "foundation")
    ap.add_argument("--shifted", nargs="*", default=list(SHIFTED), metavar="TASK=DIR")
    ap.add_argument("--condition", default="loopback MTU 700 (1500 in training)")
    ap.add_argument("--name", default="shift",
                    help="the report's name: WORK/transfer/NAME.json, results/NAME.md, the prepared re-captures in "
                         "WORK/shifted/TASK (NAME shift) or WORK/shifted/TASK-NAME (another condition of the same task)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from traffic_moe_hf.atomic import write_text
    from traffic_moe_hf.data.prepare import prepare
    from traffic_moe_hf.recipes.common import device_summary, label_names, load_prepared
    from traffic_moe_hf.recipes.evaluate import evaluate

    report = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": device_summary(),
              "condition": a.condition, "tasks": {}}
    for item in a.shifted:
        task, capture_dir = item.split("=", 1)
        shifted = a.work / "shifted" / (task if a.name == "shift" else f"{task}-{a.name}")
        if not (shifted / "dataset_dict.json").is_file():  # prepare's defaults: what a user would type
            prepare([str(REPO / capture_dir) if not Path(capture_dir).is_absolute() else capture_dir], str(shifted),
                    labels="file", split="none", progress=False)
        train = load_prepared(str(a.work / task))["train"]
        test = load_prepared(str(shifted))["test"]
        names = label_names(train)
        index = {n: i for i, n in enumerate(names)}
        mapped = np.array([index.get(n, -1) for n in label_names(test)])[np.asarray(test["label"])]
        keep = np.flatnonzero(mapped >= 0)
        # the re-capture's flows of known classes, labelled with the training split's ids (for the forests)
        same_rows = test.select(keep).remove_columns("label").add_column("label", mapped[keep].tolist())
        rows, skipped = {}, []
        for folder in sorted((a.work / "transfer" / "ckpt" / task).iterdir()):
            if not (folder / "model.safetensors").is_file():
                skipped.append(folder.name)
                continue
            row, cell, seed = folder.name.rsplit("-", 2)
            result = evaluate(str(shifted), str(folder), split="test", audit=False)
            same = a.work / "transfer" / "runs" / task / f"{folder.name}.json"
            rows.setdefault(row, {}).setdefault(cell, []).append(
                {"seed": int(seed), "shifted": result["macro_f1"], "samples": result["samples"],
                 "same": json.loads(same.read_text())["test_macro_f1"] if same.is_file() else None})
        for title, cells in forest_cells(train, same_rows, names, 10).items():
            rows[SHORT[title]] = {cell: [{"seed": s, "shifted": v, "same": None} for s, v in enumerate(values)]
                                  for cell, values in cells.items()}
        report["tasks"][task] = {"shifted_flows": len(test), "matched_flows": int(len(keep)), "rows": rows,
                                 "skipped": skipped}
    write_text(a.work / "transfer" / f"{a.name}.json", json.dumps(report, indent=1))
    md = markdown(report)
    write_text(HERE / "results" / f"{a.name}.md", md)
    print(md)
    return 0


def markdown(report) -> str:
    def fmt(values):
        return mean_std([v for v in values if v is not None])

    lines = [f"Shift: {report['condition']}. Macro-F1 on every flow of the re-capture (prepare's defaults, labels "
             f"matched by name); in brackets the same checkpoints on the task's own test split. Measured "
             f"{report['date']} on {report['machine']}.", ""]
    for task, t in report["tasks"].items():
        lines += [f"**{task}** ({t['matched_flows']} of {t['shifted_flows']} re-captured flows in known classes)", "",
                  "| model | all data | 1 per class | 5 per class | 10 per class |", "|---|---:|---:|---:|---:|"]
        for row, cells in t["rows"].items():
            out = []
            for cell in ("all", "1", "5", "10"):
                got = cells.get(cell, [])
                if not got:
                    out.append("not measured")
                    continue
                same = fmt([g["same"] for g in got])
                out.append(fmt([g["shifted"] for g in got]) + ("" if same == "not measured" else f" ({same})"))
            lines.append(f"| {title(row)} | " + " | ".join(out) + " |")
        if t["skipped"]:
            lines.append(f"\nSkipped (no weights): {', '.join(t['skipped'])}")
        lines.append("")
    return "\n".join(lines)

if __name__ == "__main__":
    sys.exit(main())

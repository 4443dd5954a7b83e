"""Which classes each row of the transfer table gets wrong: the mean test F1 per class over the cached cells
of ``transfer.py`` that carry it (cells measured since 2026-12-07 afternoon record ``test_per_class_f1`` and
the test confusion matrix; older ones only the macro-F1 and are left out, their count said).

    .venv/bin/python benchmarks/foundation/per_class.py --task attack10 --rows moe@v3 scratch dense@v2.2 --cells 10 \
        [--out benchmarks/foundation/results/per_class_attack10.md]

Reads the repository only (no model, no data): a cell is ``results/<task>/<row>-<cell>-<seed>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cells_of(folder: Path, row: str, cell: str) -> tuple[list[dict], int]:
    """The cached cells of one row and cell (every seed): those with per-class scores, and how many lack them."""
    pattern = re.compile(rf"^{re.escape(row)}-{re.escape(cell)}-(\d+)\.json$")
    found, without = [], 0
    for path in sorted(folder.glob("*.json")):
        if pattern.match(path.name):
            record = json.loads(path.read_text())
            if "test_per_class_f1" in record:
                found.append(record)
            else:
                without += 1
    return found, without


def confusions(records: list[dict]) -> dict[tuple[str, str], int]:
    """Test flows of one true class predicted as another, summed over the records' seeds."""
    total: dict[tuple[str, str], int] = {}
    for record in records:
        labels, matrix = record["test_confusion"]["labels"], record["test_confusion"]["matrix"]
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if i != j and count:
                    total[labels[i], labels[j]] = total.get((labels[i], labels[j]), 0) + count
    return total


def report(task: str, rows: list[str], cells: list[str], results: Path = HERE / "results", top: int = 8) -> str:
    folder = results / task
    if not folder.is_dir():
        raise SystemExit(f"per_class.py: {folder}: no cached cells for task {task!r}")
    columns, notes, absent = [], [], []
    classes: dict[str, int] = {}  # class -> its test flows (the split is the same for every cell)
    for row in rows:
        for cell in cells:
            records, without = cells_of(folder, row, cell)
            if without:
                notes.append(f"{row} {cell}: {without} cached seed(s) without per-class scores left out")
            if not records:
                continue
            columns.append((f"{row}, {cell}", records))
            labels, matrix = records[0]["test_confusion"]["labels"], records[0]["test_confusion"]["matrix"]
            for name, counts in zip(labels, matrix):
                if sum(counts):
                    classes.setdefault(name, sum(counts))
                elif name not in absent:  # an F1 of 0 for a class the test split lacks says nothing
                    absent.append(name)
    if not columns:
        return f"**{task}**: no cached cell of {rows} at {cells} has per-class scores yet.\n"
    lines = [f"**{task}**: test F1 per class, mean over the seeds with per-class scores (n)", "",
             "| class (test flows) | " + " | ".join(f"{title} (n={len(records)})" for title, records in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name in classes:
        values = []
        for _title, records in columns:
            scores = [r["test_per_class_f1"][name] for r in records if name in r["test_per_class_f1"]]
            values.append(f"{statistics.mean(scores):.3f}" if scores else "")
        lines.append(f"| {name} ({classes[name]}) | " + " | ".join(values) + " |")
    for title, records in columns:
        ranked = sorted(confusions(records).items(), key=lambda kv: -kv[1])[:top]
        if ranked:
            lines += ["", f"{title}, the most frequent confusions (test flows, summed over the seeds): "
                      + "; ".join(f"{true} → {predicted} {count}" for (true, predicted), count in ranked)]
    if absent:
        notes.append(f"no test flow of {', '.join(absent)}: left out")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--rows", nargs="+", required=True, help="cell name stems: moe@v3, scratch, dense@v2.2, ...")
    ap.add_argument("--cells", nargs="+", default=["10"], help="all, 1, 5, 10")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    a = ap.parse_args(argv)
    text = report(a.task, a.rows, a.cells, a.results)
    sys.stdout.write(text)
    if a.out:
        from traffic_moe_hf.atomic import write_text  # an earlier report stays whole if this one fails

        write_text(a.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Proof of transfer: the shipped checkpoints fine-tuned with the CLI's DEFAULTS, against the same recipe from
scratch and the random forests, on sv17 (real-world, 17 nDPI labels, split by source capture) and on
loopback9 / tls9 / attack10 — all training data and 1 / 5 / 10 flows per class (seeds 0..S-1).

    .venv/bin/python benchmarks/foundation/transfer.py --work /work/data/foundation \\
        [--tasks sv17 ...] [--rows moe scratch dense] [--cells all 10 ...] [--seeds 10] [--run-seeds 1 2]
        [--all-seeds 3] [--set OPTION=VALUE ...] [--report-only]

Datasets come from ``benchmarks/foundation/make_corpus.py`` (WORK/sv17, WORK/loopback9, ...: prepare's
defaults). Every model row is ``finetune(data, out, init_from=..., shots=k, seed=s)`` with every other option
at its default (what ``traffic-moe finetune --data D --out O --from traffic-moe-mini [--shots k --seed s]``
runs) and ``evaluate`` on the test split; the validation score is recorded beside it. Resumable: each cell is
cached in the repository, benchmarks/foundation/results/<task>/<row>-<cell>-<seed>.json (``--cells-dir``), so a
measurement outlives the work folder; missing cells are "not measured". Writes
WORK/transfer/transfer.json and benchmarks/foundation/results/transfer.md when it covers every task (a run of
some ``--tasks`` only measures their cells: it once overwrote the whole table with one task's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TASKS = ("sv17", "loopback9", "tls9", "attack10")
CELLS = ("all", "1", "5", "10")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def token_forest(train, test, names, seed=0, width=512):
    """Random forest on the first ``width`` token ids of the model input (the issue's second forest)."""
    from sklearn.ensemble import RandomForestClassifier

    from traffic_moe_hf.recipes.common import classification_metrics

    def x(split):
        out = np.zeros((len(split), width), dtype=np.int32)
        for i, ids in enumerate(split["input_ids"]):
            ids = ids[:width]
            out[i, : len(ids)] = ids
        return out

    forest = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1).fit(x(train), np.asarray(train["label"]))
    return classification_metrics(np.asarray(test["label"]), forest.predict(x(test)), names)


#: report-only rows (--previous, --previous-dense): the cached cells of another version of this checkpoint row
REPORT_ROWS = {"previous": "moe", "previous-dense": "dense"}
FORESTS = ("random forest (classic: 8 packets, 32 payload bytes)", "random forest (first 512 token ids)")


def forest_cells(train, evaluated, names, seeds: int) -> dict:
    """Both forests fitted on all of ``train`` (seed 0) and on ``seeds`` draws of 1 / 5 / 10 flows per class (draw s
    with seed s), scored on ``evaluated``: ``{title: {cell: [macro-F1 per seed]}}`` (titles: :data:`FORESTS`)."""
    from traffic_moe_hf.recipes.baselines import random_forest
    from traffic_moe_hf.recipes.common import few_shot

    fits = dict(zip(FORESTS, (lambda tr, s: random_forest(tr, evaluated, names, seed=s),
                              lambda tr, s: token_forest(tr, evaluated, names, seed=s))))
    out = {}
    for title, fit in fits.items():
        cells = {"all": [fit(train, 0)["macro_f1"]]}
        for cell in CELLS[1:]:
            cells[cell] = [fit(few_shot(train, int(cell), s), s)["macro_f1"] for s in range(seeds)]
        out[title] = cells
    return out


def mean_std(values) -> str:
    """A table cell: "not measured", one value, or mean ± std (n) of several."""
    if not values:
        return "not measured"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f} (n={len(values)})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "foundation")
    ap.add_argument("--moe", default="traffic-moe-mini", help="the MoE checkpoint (short name or folder)")
    ap.add_argument("--dense", default="bert-mini", help="the dense checkpoint (short name or folder)")
    ap.add_argument("--scratch-config", default="mini", help="preset of the from-scratch row (the MoE's size)")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--rows", nargs="*", default=["moe", "scratch", "dense"])
    ap.add_argument("--cells", nargs="*", default=list(CELLS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--run-seeds", type=int, nargs="*", default=None,
                    help="measure only these seeds' missing cells (default: 0..--seeds-1, seed by seed); the table "
                         "still shows every cached seed below --seeds")
    ap.add_argument("--version", default=None,
                    help="the checkpoints' version (e.g. v2): their rows' cells are cached apart (moe@v2-10-0.json) and "
                         "titled with it; default: the version 1 cells (moe-10-0.json)")
    ap.add_argument("--dense-version", default=None,
                    help="the dense checkpoint's version where it differs from --version (e.g. v2.1: dense@v2.1-10-0.json)")
    ap.add_argument("--previous", default=None,
                    help="also tabulate this earlier version's cached MoE cells (e.g. v2), in a row of its own; never run")
    ap.add_argument("--previous-dense", default=None,
                    help="the same for another version of the dense checkpoint (e.g. v2.1, or a candidate not shipped)")
    ap.add_argument("--all-seeds", type=int, default=3,
                    help="fine-tuning seeds 0..N-1 of the all-data cell (the data are the same; the seed draws the "
                         "head's initialisation and the batch order)")
    ap.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE",
                    help="a recipe experiment: finetune options other than the defaults (e.g. head_init=probe lr=2e-4; "
                         "values read as JSON where they parse); its cells are cached apart (moe@v3+head_init=probe-all-0.json) "
                         "and the table is not written (it shows the defaults only)")
    ap.add_argument("--cells-dir", type=Path, default=HERE / "results",
                    help="where each cell's JSON is cached, a folder per task (default: the repository's "
                         "benchmarks/foundation/results/, committed; WORK is scratch space a new machine lacks)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    recipe = {}
    for item in a.set:
        name, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item}: expected OPTION=VALUE")
        try:
            recipe[name] = json.loads(value)
        except json.JSONDecodeError:
            recipe[name] = value
    tag = "".join(f"+{k}={v}" for k, v in sorted(recipe.items()))
    from dataclasses import fields

    from traffic_moe_hf.atomic import write_text  # a killed run leaves no half-written cell or table
    from traffic_moe_hf.checkpoints import resolve_checkpoint
    from traffic_moe_hf.recipes.common import device_summary, label_names, load_prepared
    from traffic_moe_hf.recipes.evaluate import evaluate
    from traffic_moe_hf.recipes.finetune import FinetuneOptions, finetune

    own = {"init_from", "config", "shots", "seed", "progress"}  # what the rows and cells set themselves
    settable = {f.name for f in fields(FinetuneOptions)} - own
    for name in recipe:
        if name not in settable:
            ap.error(f"--set {name}: not a finetune option this script leaves at its default (one of: "
                     f"{', '.join(sorted(settable))})")

    # scratch has no checkpoint: its cells are named by preset where that is not the MoE's (scratch@tiny-10-0.json)
    versions = {"moe": a.version, "scratch": None if a.scratch_config == "mini" else a.scratch_config,
                "dense": a.dense_version or a.version,
                "previous": a.previous, "previous-dense": a.previous_dense}

    def shipped(key):
        return f"shipped checkpoint {versions[key]}" if versions[key] else "shipped checkpoint"

    rows = {"moe": (f"Traffic-MoE mini, {shipped('moe')}", dict(init_from=resolve_checkpoint(a.moe))),
            "scratch": (f"Traffic-MoE {a.scratch_config}, from scratch", dict(config=a.scratch_config)),
            "dense": (f"dense BERT mini, {shipped('dense')}", dict(init_from=resolve_checkpoint(a.dense)))}
    if a.previous:  # its cells were cached as moe@<version>-...; a report row only (not in --rows)
        rows = {"moe": rows["moe"], "previous": (f"Traffic-MoE mini, checkpoint {a.previous} (the version before)", {}),
                **{k: v for k, v in rows.items() if k != "moe"}}
    if a.previous_dense:  # the same for dense@<version>-...
        rows["previous-dense"] = (f"dense BERT mini, checkpoint {a.previous_dense} (not the shipped one)", {})
    out = a.work / "transfer"
    runs = a.cells_dir
    table = {}

    def cell_path(task, key, cell, seed):
        stem = REPORT_ROWS.get(key, key)  # a report row reads its version's cells
        versioned = f"{stem}@{versions[key]}" if versions[key] else key
        return runs / task / f"{versioned}{tag}-{cell}-{seed}.json"

    # the runs still missing, cheapest information first: every row and cell at seed 0, then seed 1, ...
    jobs = [] if a.report_only else [
        (task, key, cell, seed) for seed in (a.run_seeds if a.run_seeds is not None else range(a.seeds))
        for task in a.tasks for cell in a.cells for key in a.rows
        if key not in REPORT_ROWS and (cell != "all" or seed < a.all_seeds) and not cell_path(task, key, cell, seed).is_file()]
    for task, key, cell, seed in jobs:
        data = str(a.work / task)
        title, kwargs = rows[key]
        path = cell_path(task, key, cell, seed)
        if path.is_file():  # another process measured it meanwhile
            continue
        folder = out / "ckpt" / task / path.stem
        log(task, title, cell, "seed", seed)
        t = time.perf_counter()
        fin = finetune(data, str(folder), shots=None if cell == "all" else int(cell), seed=seed,
                       progress=False, **kwargs, **recipe)
        test = evaluate(data, str(folder), split="test", audit=False)
        val = evaluate(data, str(folder), split="validation", audit=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"test_macro_f1": test["macro_f1"], "test_accuracy": test["accuracy"],
                                    "validation_macro_f1": val["macro_f1"], "steps": fin.get("steps"),
                                    "seconds": round(time.perf_counter() - t, 1),
                                    "date": time.strftime("%Y-%m-%d", time.gmtime()),
                                    "machine": device_summary(), "threads": a.threads,
                                    "kwargs": {k: str(v) for k, v in {**kwargs, **recipe}.items()},
                                    # which classes a cell gets wrong, for the analysis of the records (not tabulated)
                                    "test_per_class_f1": {n: round(c["f1"], 4) for n, c in test["per_class"].items()},
                                    "test_confusion": {"labels": test["labels"], "matrix": test["confusion_matrix"]}},
                                   indent=1))
        log(" ", path.name, f"test {test['macro_f1']:.3f} validation {val['macro_f1']:.3f}")
    if recipe:  # an experiment's cells are read from their files; the table is the defaults'
        return 0
    if set(a.tasks) != set(TASKS):  # the table holds every task: a run on some would drop the others from it
        log(f"cells of {' '.join(a.tasks)} only: the table (results/transfer.md) is left as it is; "
            "make it with --report-only (all tasks)")
        return 0
    for task in a.tasks:
        data = str(a.work / task)
        prepared = load_prepared(data)
        names = label_names(prepared["train"])
        t_rows = {}
        for key, (title, kwargs) in rows.items():
            cells = {}
            for cell in CELLS:
                seeds = list(range(a.all_seeds if cell == "all" else a.seeds))
                cells[cell] = [json.loads(p.read_text()) for p in (cell_path(task, key, cell, s) for s in seeds)
                               if p.is_file()]
            t_rows[title] = cells
        for title, cells in forest_cells(prepared["train"], prepared["test"], names, a.seeds).items():
            t_rows[title] = {cell: [{"test_macro_f1": v} for v in values] for cell, values in cells.items()}
        table[task] = {"classes": len(names), "train": len(prepared["train"]), "test": len(prepared["test"]), "rows": t_rows}
    machines = sorted({json.loads(p.read_text()).get("machine", "not recorded")
                       for task in a.tasks for p in (runs / task).glob("*.json")})
    report = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": "; ".join(machines), "seeds": a.seeds,
              "moe": a.moe, "dense": a.dense, "tasks": table}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "transfer.json", json.dumps(report, indent=1))
    md = markdown(report)
    (HERE / "results").mkdir(exist_ok=True)
    write_text(HERE / "results" / "transfer.md", md)
    earlier = {rows[key][0] for key in REPORT_ROWS if key in rows}  # the other versions' rows: in the table only
    plot(report, HERE / "results" / "transfer.png", leave_out=earlier)
    print(md)
    return 0


def markdown(report) -> str:
    def cell(got):
        return mean_std([g["test_macro_f1"] for g in got])

    lines = [f"Macro-F1 on each task's test split; fine-tuning with `traffic-moe finetune`'s defaults; few-shot: mean ± "
             f"std over the seeds measured (n). Tabulated {report['date']}; cells measured on: {report['machine']}.", ""]
    for task, t in report["tasks"].items():
        lines += [f"**{task}** ({t['classes']} classes; {t['train']} training flows, {t['test']} test flows)", "",
                  "| model | all data | 1 per class | 5 per class | 10 per class |", "|---|---:|---:|---:|---:|"]
        for title, cells in t["rows"].items():
            lines.append(f"| {title} | " + " | ".join(cell(cells[c]) for c in CELLS) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(report, path: Path, leave_out=()) -> None:
    """The table as a picture: a panel per task, macro-F1 against flows per class (1 / 5 / 10 / all data), a line
    per row but those titled in ``leave_out`` (earlier versions), bars the std over the seeds measured, each point's
    seed count beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from traffic_moe_hf.atomic import atomic_path

    order = (*CELLS[1:], CELLS[0])  # 1 / 5 / 10 flows per class, then all data
    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 4.4), sharey=True, squeeze=False)
    handles = {}
    for ax, task in zip(axes[0], tasks):
        t = report["tasks"][task]
        rows = [title for title in t["rows"] if title not in leave_out]
        for i, title in enumerate(rows):
            xs, ys, es, ns = [], [], [], []
            for x, cell in enumerate(order):
                values = [g["test_macro_f1"] for g in t["rows"][title][cell]]
                xs.append(x + (i - (len(rows) - 1) / 2) * 0.06)  # side by side, so the bars do not hide each other
                ys.append(statistics.mean(values) if values else float("nan"))  # not measured: a gap in the line
                es.append(statistics.pstdev(values) if values else 0.0)
                ns.append(len(values))
            if not any(ns):
                continue
            style = dict(linestyle="--", marker="s") if title.startswith("random forest") else dict(marker="o")
            handles[title] = ax.errorbar(xs, ys, yerr=es, capsize=3, color=f"C{i}", label=title, ms=4, **style)
            if i == 0:  # the shipped MoE: how many seeds stand behind each point
                for x, y, n in ((x, y, n) for x, y, n in zip(xs, ys, ns) if n):
                    ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7, color="C0")
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("training flows per class")
        ax.set_title(f"{task} ({t['classes']} classes, {t['test']} test flows)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test macro-F1 (mean; bars: std over seeds)")
    fig.suptitle(f"Fine-tuned with finetune's defaults against the forests (tabulated {report['date']})", fontsize=10)
    fig.legend(handles=list(handles.values()), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    with atomic_path(path) as tmp:  # a killed run leaves the last picture, not half of one
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

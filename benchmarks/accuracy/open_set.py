"""Open set: how well each few-shot model's confidence tells traffic of other sources from its own classes.

The models are those `real_tasks.py` fine-tuned (one run folder per pretraining seed, as for
`ensemble_fewshot.py`); nothing is trained here. For every model, `evaluate(..., ood=...)` scores the task's
test split (in-distribution) and each foreign dataset (prepared with the same options; samples whose label
the model knows by name, and the labels given with --exclude, left out), and reports the ROC AUC of the top
class probability and the share of foreign flows rejected at the threshold that keeps 95 % of the test
flows (and, for single models, the ROC AUC of the energy score as well). Rows are compared like against like (same support flows per few-shot seed); the ensemble of the
run folders' models per few-shot seed is scored too. With --shifted (the same classes captured under other
conditions, `prepare --split none`) it also reports the cost of that threshold there: the share of those
own-class flows it rejects, the macro-F1 on them, and the accuracy on the flows it keeps and on those it rejects.

    python benchmarks/accuracy/open_set.py --runs runs/sess-30 runs/sess-30s1 runs/sess-30s2 runs/sess-30s3 --task tls9 \\
        --rows traffic-moe-pretrained-lp-ft dense-bert-pretrained-lp-ft dense-bert-pretrained --shots 10 --seeds 10 \\
        --ood runs/sess-30/data/public-zeek runs/sess-30/data/loopback9 runs/sess-30/data/attack10 \\
        --exclude https benign-ssh ssh-bruteforce --shifted runs/sess-30/data/tls9-mtu700 --json benchmarks/accuracy/results/open_set_tls9.json --md benchmarks/accuracy/results/open_set_tls9.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from traffic_moe_hf.recipes.common import classification_metrics, load_prepared  # noqa: E402
from traffic_moe_hf.recipes.evaluate import class_names, ensemble_logits, evaluate, known_labels, load_ensemble  # noqa: E402
from traffic_moe_hf.recipes.open_set import top_probability  # noqa: E402


def shifted_scores(folders: list[Path], shifted: str, result: dict) -> dict:
    """On the shifted captures (own classes, other conditions): the share below the threshold that keeps 95 %
    of the test flows (``result``'s), the macro-F1, and the accuracy on the flows kept and on those rejected —
    of one model or of the ensemble of ``folders`` (scored as ``evaluate`` scores it)."""
    rows = load_prepared(shifted)["test"]
    model, others = load_ensemble([str(f) for f in folders], shifted)
    _mapping, labels, keep = known_labels(rows, model, shifted)
    logits, labels = ensemble_logits(model, others, rows.select(keep)), labels[keep]
    threshold = next(t["threshold"] for t in result["open_set"]["thresholds"] if t["keep"] == 0.95)
    correct = logits.argmax(-1) == labels
    rejected = top_probability(logits) < threshold
    return {"rejected_95": float(rejected.mean()),
            "macro_f1": classification_metrics(labels, logits.argmax(-1), class_names(model))["macro_f1"],
            "accuracy_kept_95": float(correct[~rejected].mean()) if (~rejected).any() else None,
            "accuracy_rejected_95": float(correct[rejected].mean()) if rejected.any() else None}


def summarise(results: list[dict], sources: list[str]) -> dict:
    """Mean and standard deviation over models of each source's AUROC and share rejected at 95 % kept."""
    out = {"models": len(results),
           "macro_f1": [r["macro_f1"] for r in results],
           "accuracy_kept_95": [next(t["accuracy_kept"] for t in r["open_set"]["thresholds"] if t["keep"] == 0.95)
                                for r in results]}
    if "shifted" in results[0]:
        out["shifted"] = {k: [r["shifted"][k] for r in results if r["shifted"].get(k) is not None]
                          for k in ("rejected_95", "macro_f1", "accuracy_kept_95", "accuracy_rejected_95")}
    for source in sources:
        s = [r["open_set"]["sources"][source] for r in results]
        out[source] = {"auroc": [x["auroc"] for x in s], "rejected_95": [x["rejected"]["0.95"] for x in s],
                       "samples": s[0]["samples"], "excluded": s[0]["excluded_known_label"]}
        if all("auroc_energy" in x for x in s):  # single models only (an ensemble's averaged log-probabilities have none)
            out[source]["auroc_energy"] = [x["auroc_energy"] for x in s]
    return out


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="real_tasks.py --out folders, one per pretraining seed")
    p.add_argument("--task", default="tls9")
    p.add_argument("--rows", nargs="+", required=True, help="row slugs, e.g. traffic-moe-pretrained-lp-ft")
    p.add_argument("--shots", nargs="+", type=int, default=[10])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--ood", nargs="+", required=True, help="prepared datasets of other traffic (same options)")
    p.add_argument("--exclude", nargs="*", default=[], help="foreign labels to leave out (a model's class by another name)")
    p.add_argument("--shifted", help="the task's classes captured under other conditions (prepare --split none)")
    p.add_argument("--no-ensemble", dest="ensemble", action="store_false")
    p.add_argument("--json", required=True)
    p.add_argument("--md")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = [Path(r) for r in a.runs]
    data = str(runs[0] / "data" / a.task)
    result = {"task": a.task, "runs": a.runs, "ood": a.ood, "exclude": a.exclude, "shifted": a.shifted, "rows": {},
              "date": time.strftime("%Y-%m-%d")}
    started = time.time()
    for row in a.rows:
        for k in a.shots:
            singles, ensembles = [], []
            for seed in range(a.seeds):
                folders = [r / "ckpt" / a.task / f"{row}-{k}shot-{seed}" for r in runs]
                folders = [f for f in folders if (f / "model.safetensors").is_file()]
                for f in folders:
                    singles.append(evaluate(data, str(f), audit=False, ood=a.ood, ood_exclude=a.exclude))
                    if a.shifted:
                        singles[-1]["shifted"] = shifted_scores([f], a.shifted, singles[-1])
                if a.ensemble and len(folders) > 1:
                    ensembles.append(evaluate(data, [str(f) for f in folders], audit=False, ood=a.ood,
                                              ood_exclude=a.exclude))
                    if a.shifted:
                        ensembles[-1]["shifted"] = shifted_scores(folders, a.shifted, ensembles[-1])
            if not singles:
                continue
            result["rows"][f"{row} {k}"] = summarise(singles, a.ood)
            if ensembles:
                result["rows"][f"{row} {k} ensemble of {len(runs)}"] = summarise(ensembles, a.ood)
            print(f"{row} {k}: {len(singles)} models, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    Path(a.json).write_text(json.dumps(result, indent=1))
    if a.md:
        names = [Path(s).name for s in a.ood]
        lines = ["| model (shots per class) | models | macro-F1 | " + " | ".join(f"{n}: AUROC / rejected at 95 % kept" for n in names)
                 + " | accuracy on the 95 % kept |" + (" shifted: rejected / macro-F1 |" if a.shifted else ""),
                 "|---|---:|---:|" + "---|" * len(names) + "---:|" + ("---|" if a.shifted else "")]
        for name, s in result["rows"].items():
            cells = [f"{mean_std(s[src]['auroc'])} / {mean_std(s[src]['rejected_95'])}" for src in a.ood]
            lines.append(f"| {name} | {s['models']} | {mean_std(s['macro_f1'])} | " + " | ".join(cells)
                         + f" | {mean_std(s['accuracy_kept_95'])} |"
                         + (f" {mean_std(s['shifted']['rejected_95'])} / {mean_std(s['shifted']['macro_f1'])} |"
                            if "shifted" in s else ""))
        lines += ["", "The same models' AUROC with the energy score (log-sum-exp of the logits; single models only):", "",
                  "| model (shots per class) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for name, s in result["rows"].items():
            if all("auroc_energy" in s[src] for src in a.ood):
                lines.append(f"| {name} | " + " | ".join(mean_std(s[src]["auroc_energy"]) for src in a.ood) + " |")
        samples = ", ".join(f"{Path(src).name} {next(iter(result['rows'].values()))[src]['samples']} flows "
                            f"({next(iter(result['rows'].values()))[src]['excluded']} left out)" for src in a.ood)
        Path(a.md).write_text("\n".join(lines) + f"\n\nForeign flows scored: {samples}.\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()

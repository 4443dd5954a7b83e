"""Few-shot ensembles of independently pretrained checkpoints, from models `real_tasks.py` already fine-tuned.

`real_tasks.py --pretrain-seed N --out DIR_N` pretrains the same recipe with several seeds and fine-tunes each
checkpoint on the same few-shot flows (the flows of few-shot seed s depend only on the data and s). This script
averages the class probabilities of those fine-tuned models, per few-shot seed, and scores the average on the
test split exactly as `traffic-moe evaluate` scores one model (macro-F1), beside each member alone. Nothing
is trained here.

    python benchmarks/ensemble_fewshot.py --runs runs/sess-30 runs/sess-30s1 runs/sess-30s2 --task tls9 \\
        --rows traffic-moe-pretrained-lp-ft dense-bert-pretrained-lp-ft --shots 1 5 10 --seeds 10 \\
        --json benchmarks/results/ensemble_fewshot_tls9.json

Every run folder must hold the same prepared data (same `prepare` options, so the same test flows: checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from traffic_moe_hf.recipes.common import classification_metrics, load_prepared, model_view  # noqa: E402
from traffic_moe_hf.progress import library_bars  # noqa: E402
from traffic_moe_hf.recipes.evaluate import known_labels, load_classifier, predict_logits  # noqa: E402


def test_split(run: Path, task: str):
    data = run / "data" / task
    test = load_prepared(str(data))["test"]
    return data, test


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="real_tasks.py --out folders, one per pretraining seed")
    p.add_argument("--task", default="tls9")
    p.add_argument("--rows", nargs="+", required=True, help="row slugs, e.g. traffic-moe-pretrained-lp-ft")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5, 10])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--json", help="write every figure here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    runs = [Path(r) for r in a.runs]
    tests = [test_split(r, a.task) for r in runs]
    ids = [list(t["flow_id"]) for _d, t in tests]
    if any(i != ids[0] for i in ids[1:]):
        raise SystemExit("the run folders' test splits differ: their prepared data is not the same")
    data, test = tests[0]
    result = {"task": a.task, "runs": a.runs, "test_flows": len(test), "rows": {}}
    for row in a.rows:
        per_shot = {}
        for k in a.shots:
            members, ensemble = [], []
            for seed in range(a.seeds):
                folders = [r / "ckpt" / a.task / f"{row}-{k}shot-{seed}" for r in runs]
                if not all((f / "model.safetensors").is_file() for f in folders):
                    continue
                probs, scores = [], []
                for f in folders:
                    with library_bars(False):
                        model = load_classifier(str(f))
                    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
                    _mapping, labels, keep = known_labels(test, model, str(f))
                    view = model_view(test, dense=model.config.model_type == "bert").select(keep)
                    with torch.inference_mode():
                        logits = predict_logits(model, view)
                    prob = torch.as_tensor(logits).float().softmax(-1).numpy()
                    probs.append(prob)
                    scores.append(classification_metrics(labels[keep], prob.argmax(-1), names)["macro_f1"])
                mean = np.mean(probs, axis=0)
                ens = classification_metrics(labels[keep], mean.argmax(-1), names)["macro_f1"]
                members.append(scores)
                ensemble.append(ens)
                print(f"{row} {k}-shot seed {seed}: members {' / '.join(f'{s:.3f}' for s in scores)} -> ensemble {ens:.3f}",
                      flush=True)
            if not ensemble:
                continue
            member_means = [statistics.mean(s[i] for s in members) for i in range(len(runs))]
            per_shot[str(k)] = {
                "seeds": len(ensemble),
                "ensemble": ensemble,
                "ensemble_mean": statistics.mean(ensemble),
                "ensemble_std": statistics.stdev(ensemble) if len(ensemble) > 1 else 0.0,
                "members": members,
                "member_means": member_means,
                "mean_of_members": statistics.mean(x for s in members for x in s),
            }
        result["rows"][row] = per_shot
    print()
    print(f"| {a.task}, {len(runs)} pretrainings | " + " | ".join(f"{k} per class" for k in a.shots) + " |")
    print("|---|" + "---:|" * len(a.shots))
    for row, per_shot in result["rows"].items():
        for what, key in (("members, mean", "mean_of_members"), ("ensemble", "ensemble_mean")):
            cells = []
            for k in a.shots:
                c = per_shot.get(str(k))
                if c is None:
                    cells.append("not measured")
                elif key == "ensemble_mean":
                    cells.append(f"{c['ensemble_mean']:.3f} ± {c['ensemble_std']:.3f} ({c['seeds']} seeds)")
                else:
                    cells.append(f"{c[key]:.3f}")
            print(f"| {row} {what} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Few-shot ensembles of independently pretrained checkpoints, from models `real_tasks.py` already fine-tuned.

`real_tasks.py --pretrain-seed N --out DIR_N` pretrains the same recipe with several seeds and fine-tunes each
checkpoint on the same few-shot flows (the flows of few-shot seed s depend only on the data and s). This script
scores the ensemble of those fine-tuned models, per few-shot seed, on the test split with `evaluate` given all
of them (class probabilities averaged, as `traffic-moe evaluate --model A --model B` does), beside each member's
own score from `real_tasks.py`'s cached result. Nothing is trained here.

    python benchmarks/accuracy/ensemble_fewshot.py --runs runs/sess-30 runs/sess-30s1 runs/sess-30s2 --task tls9 \\
        --rows traffic-moe-pretrained-lp-ft dense-bert-pretrained-lp-ft --shots 1 5 10 --seeds 10 \\
        --json benchmarks/accuracy/results/ensemble_fewshot_tls9.json

Every run folder must hold the same prepared data (same `prepare` options, so the same test flows: checked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from traffic_moe_hf.recipes.common import load_prepared  # noqa: E402
from traffic_moe_hf.recipes.evaluate import evaluate  # noqa: E402


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
    ids = [load_prepared(str(r / "data" / a.task))["test"]["flow_id"] for r in runs]
    if any(i != ids[0] for i in ids[1:]):
        raise SystemExit("the run folders' test splits differ: their prepared data is not the same")
    data = str(runs[0] / "data" / a.task)
    result = {"task": a.task, "runs": a.runs, "test_flows": len(ids[0]), "rows": {}}
    for row in a.rows:
        per_shot = {}
        for k in a.shots:
            members, ensemble = [], []
            for seed in range(a.seeds):
                folders = [r / "ckpt" / a.task / f"{row}-{k}shot-{seed}" for r in runs]
                cached = [r / "runs" / a.task / f"{row}-{k}shot-{seed}.json" for r in runs]
                if not all((f / "model.safetensors").is_file() for f in folders) or not all(c.is_file() for c in cached):
                    continue
                scores = [json.loads(c.read_text())["macro_f1"] for c in cached]
                ens = evaluate(data, [str(f) for f in folders], audit=False)["macro_f1"]
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

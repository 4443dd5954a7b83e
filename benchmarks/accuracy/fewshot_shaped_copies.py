#!/usr/bin/env python3
"""attack10, 10 flows per class, Traffic-MoE from scratch: plain few-shot fine-tuning against the same
with 3 shaped copies per flow (`finetune --adversarial --adv-copies 3 --adv-eps 0`). Same data, split
(training flows capped at 200 per class), steps (300, batch 16, lr 3e-3) and seeds as the few-shot cells
of `benchmarks/accuracy/real_tasks.py`, so the plain runs reproduce its "Traffic-MoE from scratch" cell.
Needs ../shared/data/attack10. Writes under runs/fs (README, real tasks, "attack10, 10 per class").

usage: python benchmarks/accuracy/fewshot_shaped_copies.py prep
       python benchmarks/accuracy/fewshot_shaped_copies.py plain|adv SEEDS   (e.g. 0,1; run plain and adv side by side)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from traffic_moe_hf.data.prepare import prepare
from traffic_moe_hf.recipes.common import few_shot
from traffic_moe_hf.recipes.evaluate import evaluate
from traffic_moe_hf.recipes.finetune import finetune

OUT = Path("runs/fs")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def main(argv: list[str]) -> int:
    full, capped = OUT / "attack10-full", OUT / "attack10"
    mode = argv[0] if argv else ""
    if mode == "prep":
        # large_groups="any": the split of the README table this re-runs (prepare's default before 2026-11-29)
        prepare([str(SHARED / "attack10")], str(full), labels="file", split="flow", progress=False, large_groups="any")
        d = load_from_disk(str(full))
        DatasetDict({"train": few_shot(d["train"], 200, 0), "validation": d["validation"], "test": d["test"]}).save_to_disk(str(capped))
        shutil.copyfile(full / "report.json", capped / "report.json")
        return 0
    if mode not in ("plain", "adv") or len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    if not (capped / "dataset_dict.json").is_file():
        raise SystemExit(f"{capped}: no prepared data; run `python {Path(__file__).name} prep` first")
    adversarial = dict(copies=3, eps=0.0, steps=1, weight=0.5) if mode == "adv" else None
    scores = {}
    for seed in map(int, argv[1].split(",")):
        folder = OUT / f"scratch-{mode}-10shot-{seed}"
        finetune(str(capped), str(folder), config="tiny", shots=10, min_steps=300, batch_size=16, lr=3e-3, seed=seed,
                 progress=False, adversarial=adversarial)
        result = evaluate(str(capped), str(folder), split="test", audit=False)
        scores[seed] = {"macro_f1": result["macro_f1"], "per_class_f1": {k: v["f1"] for k, v in result["per_class"].items()}}
        print(mode, seed, round(result["macro_f1"], 4), flush=True)
    (OUT / f"{mode}.json").write_text(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Generalisation with shaping augmentation: fine-tune the pretrained Traffic-MoE of benchmarks/accuracy/real_tasks.py with
`adversarial=dict(copies=2, eps=0)` (two shaped copies of every training flow: padding, splitting, chaff,
normalisation, header perturbation; no embedding PGD), then evaluate on the task test split and on the
shifted re-captures prepared by benchmarks/accuracy/generalisation.py.

usage: python benchmarks/accuracy/generalisation_aug.py TASK   (after real_tasks.py and generalisation.py)
"""
import json, sys, torch
torch.set_num_threads(1)
from traffic_moe_hf.recipes.finetune import finetune
from traffic_moe_hf.recipes.evaluate import evaluate
task = sys.argv[1]
out = f"runs/real/ckpt-aug/{task}/traffic-moe-pretrained-aug"
finetune(f"runs/real/data/{task}", out, init_from="runs/real/pretrained-moe", epochs=4, batch_size=32, lr=2e-3, patience=2,
         progress=False, adversarial=dict(copies=2, eps=0.0, steps=1, weight=0.5))
same = evaluate(f"runs/real/data/{task}", out, split="test", audit=False)
shifted = evaluate(f"runs/real/data/{task}-shifted", out, split="test", audit=False)
r = {"task": task, "same_macro_f1": same["macro_f1"], "shifted_macro_f1": shifted["macro_f1"]}
json.dump(r, open(f"runs/real/generalisation-aug-{task}.json", "w"))
print("RESULT", r)

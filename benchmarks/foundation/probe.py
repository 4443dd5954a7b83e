"""Cheap transfer check of pretraining checkpoints: a linear probe on frozen features, scored on a VALIDATION split.

    .venv/bin/python benchmarks/foundation/probe.py --data WORK/sv17 CKPT [CKPT ...] [--random mini] [--out probe.json]

For each checkpoint (a pretraining output folder, or one of its ``checkpoints/checkpoint-N`` folders; Traffic-MoE
or the dense BERT) the encoder runs once, frozen, over the train and validation splits; what reaches the
classifier (the features LP-FT's probe reads, ``finetune --head-init probe``) is standardised and a logistic
regression is fitted on train — all of it, and 10 flows per class over 10 seeds — then scored on validation
(macro-F1). ``--random PRESET`` adds the same probe on a randomly initialised model of that preset (what
pretraining must beat). This picks checkpoints by validation only; the test split is never read.
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


def features(model, split):
    from traffic_moe_hf.recipes.evaluate import predict_logits

    model.eval()
    with torch.no_grad():
        _, x = predict_logits(model, split, inputs_of=model.classifier)
    return x.astype(np.float64)


def load(ckpt: str, names: list[str], random_preset: str | None = None, tokenizer=None):
    from transformers import BertForSequenceClassification

    from traffic_moe_hf import TrafficMoeForSequenceClassification
    from traffic_moe_hf.recipes.common import checkpoint_model_type, from_pretrained_quietly, moe_config

    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if random_preset:
        torch.manual_seed(0)
        return TrafficMoeForSequenceClassification(moe_config(random_preset, tokenizer, **labels)), False
    if checkpoint_model_type(ckpt) == "bert":
        return from_pretrained_quietly(BertForSequenceClassification, ckpt, **labels), True
    return from_pretrained_quietly(TrafficMoeForSequenceClassification, ckpt, **labels), False


def probe_scores(xtr, ytr, xva, yva, shots=10, seeds=10):
    from sklearn.linear_model import LogisticRegression

    from traffic_moe_hf.recipes.common import few_shot_indices, macro_f1

    def fit(idx):
        mean, std = xtr[idx].mean(0), xtr[idx].std(0) + 1e-6
        clf = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced").fit((xtr[idx] - mean) / std, ytr[idx])
        return macro_f1(yva, clf.predict((xva - mean) / std))

    all_rows = np.arange(len(ytr))
    few = [fit(np.asarray(few_shot_indices({"label": ytr}, shots, seed))) for seed in range(seeds)]
    return {"all": fit(all_rows), f"{shots}_per_class": few,
            f"{shots}_per_class_mean": statistics.mean(few), f"{shots}_per_class_std": statistics.pstdev(few)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--data", required=True, help="a labelled prepared dataset (train + validation)")
    ap.add_argument("--random", default=None, metavar="PRESET", help="also probe a randomly initialised model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="append results to this JSON file (a list)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from traffic_moe_hf.atomic import write_text
    from traffic_moe_hf.recipes.common import data_tokenizer, label_names, load_prepared, model_view

    data = load_prepared(a.data)
    names = label_names(data["train"])
    tokenizer = data_tokenizer(a.data)
    ytr, yva = np.asarray(data["train"]["label"]), np.asarray(data["validation"]["label"])
    results = []
    todo = [(c, None) for c in a.checkpoints] + ([(f"random {a.random}", a.random)] if a.random else [])
    for ckpt, preset in todo:
        t = time.perf_counter()
        model, dense = load(ckpt, names, preset, tokenizer)
        xtr = features(model, model_view(data["train"], dense=dense))
        xva = features(model, model_view(data["validation"], dense=dense))
        r = {"checkpoint": ckpt, "data": a.data, "split": "validation", **probe_scores(xtr, ytr, xva, yva),
             "seconds": round(time.perf_counter() - t, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "10_per_class"}), flush=True)
        results.append(r)
    if a.out:
        path = Path(a.out)
        old = json.loads(path.read_text()) if path.is_file() else []
        write_text(path, json.dumps(old + results, indent=1))  # atomically: earlier probes are never lost
    return 0


if __name__ == "__main__":
    sys.exit(main())

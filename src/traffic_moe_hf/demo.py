"""``traffic-moe demo``: the main job end to end on the real captures shipped in ``data/demo/``.

prepare (flow split, anonymised) -> masked-packet pretraining -> fine-tuning of Traffic-MoE (pretrained
and from scratch) and of the dense BERT baseline -> evaluation side by side -> a Hub folder with its
model card -> reloaded with ``AutoModelForSequenceClassification`` -> prediction on a capture.
Ends with a results table; everything lands in ``--out`` (default ``runs/demo``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "demo" / "loopback9"


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="the main job on the shipped real captures (<= 10 min on 2 CPU cores)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of captures, one file per class (default: shipped slice)")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--config", default="tiny", help="model size preset (default tiny)")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--finetune-epochs", type=float, default=12.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
    return p


def _stage(title: str):
    print(f"\n=== {title} ===", flush=True)


def run(args) -> int:
    from .data.prepare import format_report, prepare
    from .recipes.evaluate import evaluate, format_result
    from .recipes.finetune import finetune
    from .recipes.predict import predict_files
    from .recipes.pretrain import pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings = {}

    _stage(f"1/6 prepare {args.data}")
    t = time.perf_counter()
    report = prepare([args.data], str(out / "data"), labels="file", split="flow", ratios=(0.6, 0.2, 0.2),
                     seed=args.seed)
    print(format_report(report))
    timings["prepare"] = time.perf_counter() - t

    _stage("2/6 masked-packet pretraining (Traffic-MoE and dense BERT, train split only)")
    t = time.perf_counter()
    common = dict(data=[str(out / "data")], config=args.config, max_steps=args.pretrain_steps, batch_size=32,
                  seed=args.seed, save_steps=10_000)
    pre_moe = pretrain(out=str(out / "pretrained-moe"), **common)
    pre_dense = pretrain(out=str(out / "pretrained-dense"), dense=True, **common)
    print(f"Traffic-MoE MLM loss {pre_moe['first_logged_loss']:.3f} -> {pre_moe['last_logged_loss']:.3f}; "
          f"dense BERT {pre_dense['first_logged_loss']:.3f} -> {pre_dense['last_logged_loss']:.3f}")
    timings["pretrain"] = time.perf_counter() - t

    _stage("3/6 fine-tuning")
    t = time.perf_counter()
    runs = {
        "Traffic-MoE pretrained": dict(init_from=str(out / "pretrained-moe")),
        "Traffic-MoE from scratch": dict(config=args.config),
        "dense BERT pretrained": dict(init_from=str(out / "pretrained-dense"), dense=True),
    }
    folders = {}
    for name, kwargs in runs.items():
        folder = out / ("finetuned-" + name.lower().replace(" ", "-"))
        print(f"-- {name}")
        finetune(data=str(out / "data"), out=str(folder), epochs=args.finetune_epochs, batch_size=16, seed=args.seed,
                 **kwargs)
        folders[name] = folder
    timings["finetune"] = time.perf_counter() - t

    _stage("4/6 evaluation on the test split (flows never seen in training)")
    t = time.perf_counter()
    results = {}
    for name, folder in folders.items():
        results[name] = evaluate(str(out / "data"), str(folder), split="test", json_out=str(out / "eval" / f"{folder.name}.json"))
        print(f"-- {name}\n{format_result(results[name])}")
    timings["evaluate"] = time.perf_counter() - t

    _stage("5/6 the Hub folder reloads with AutoModelForSequenceClassification")
    best = folders["Traffic-MoE pretrained"]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(best)
    tokenizer = AutoTokenizer.from_pretrained(best)
    print(f"{best}: {type(model).__name__} + {type(tokenizer).__name__}, labels {list(model.config.id2label.values())}")
    print(f"model card: {best / 'README.md'}")

    _stage("6/6 predict the flows of a capture")
    capture = sorted(Path(args.data).glob("*.pcap"))[2]
    t = time.perf_counter()
    summary = predict_files([str(capture)], str(best), str(out / "predictions.csv"), progress=False)
    timings["predict"] = time.perf_counter() - t
    with open(out / "predictions.csv") as f:
        rows = f.read().splitlines()
    print("\n".join(rows[:6]) + (f"\n... ({len(rows) - 1} flows)" if len(rows) > 6 else ""))
    print(f"{capture.name}: {summary['flows']} flows, {summary['flows_per_second']} flows/s")

    total = time.perf_counter() - started
    print("\n=== results (test split of the shipped loopback9 slice, flow-level split, anonymised headers) ===")
    print(f"{'model':<26} {'params total':>12} {'active':>9} {'accuracy':>9} {'macro-F1':>9}")
    for name, r in results.items():
        print(f"{name:<26} {r['parameters_total'] / 1e6:>11.2f}M {r['parameters_active'] / 1e6:>8.2f}M "
              f"{r['accuracy']:>9.3f} {r['macro_f1']:>9.3f}")
    audit = results["Traffic-MoE pretrained"].get("shortcut_audit")
    if audit:
        print(f"{'shortcut audit (RF, hidden header fields)':<48} {audit['accuracy']:>9.3f} {audit['macro_f1']:>9.3f}")
    print(f"test flows: {results['Traffic-MoE pretrained']['samples']}; time: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s")
    (out / "results.json").write_text(json.dumps({"results": results, "timings": timings}, indent=2, default=str))
    return 0

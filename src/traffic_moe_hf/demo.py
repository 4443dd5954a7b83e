"""``traffic-moe demo``: the main job end to end on the real captures shipped in ``data/demo/``.

prepare (flow split, anonymised) -> fine-tuning of the shipped pretrained checkpoint (``traffic-moe-mini``),
of the same model from scratch and of the shipped dense BERT baseline (``bert-mini``) -> evaluation side by
side -> a Hub folder with its model card -> reloaded with ``AutoModelForSequenceClassification`` ->
prediction on a capture. A short continued pretraining of the shipped checkpoint on the slice's train split
shows the pretraining step (``--pretrain-steps``; 0 skips it). The evaluation includes the open-set check
(``evaluate --ood``) against the shipped captures of other services. Ends with a results table; everything
lands in ``--out`` (default ``runs/demo``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .argtypes import HelpFormatter, at_least, output_folder, positive
from .configuration_traffic_moe import PRESETS
from .errors import TrafficMoeError

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "demo" / "loopback9"
# traffic of other services (the tls9 captures re-made at MTU 700, shipped for the generalisation tests): the
# open-set check of the evaluation, whether the models are less sure of flows of none of their classes
FOREIGN_DATA = Path(__file__).resolve().parents[2] / "data" / "shifted" / "tls9-mtu700"


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="the main job on the shipped real captures (<= 10 min on 2 CPU cores)",
                              description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of captures, one file per class (default: shipped slice)")
    p.add_argument("--out", type=output_folder, default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--from", dest="init_from", default="traffic-moe-mini",
                   help="the pretrained Traffic-MoE to fine-tune: a shipped checkpoint's short name or a folder "
                        "(default traffic-moe-mini)")
    p.add_argument("--dense-from", default="bert-mini",
                   help="the pretrained dense BERT baseline (default bert-mini, the shipped one)")
    p.add_argument("--config", default=None, choices=sorted(PRESETS),
                   help="size preset of the from-scratch row (default: the pretrained checkpoint's size)")
    p.add_argument("--pretrain-steps", type=at_least(0), default=20,
                   help="steps of the short continued pretraining shown in stage 2 (default 20; 0 skips it)")
    p.add_argument("--finetune-epochs", type=positive, default=10.0,
                   help="all-data fine-tuning: at most this many epochs (default 10; validation macro-F1 on the slice "
                        "reaches 1.0 within 2-5 epochs)")
    p.add_argument("--shots", type=at_least(1), default=2, help="few-shot rows: flows per class (default 2)")
    p.add_argument("--seeds", type=at_least(1), default=2, help="few-shot rows: seeds averaged (default 2)")
    p.add_argument("--few-steps", type=at_least(1), default=60,
                   help="few-shot: training steps (default 60: 30 epochs of the 18 flows at 2 per class, batch 16; "
                        "the demo's 10 minutes on 2 cores hold with 60, not with 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed (split, initialisation, few-shot flows)")
    p.set_defaults(func=run)
    return p


def _preset_of(checkpoint) -> str:
    """The size preset whose shape the checkpoint has (the from-scratch row is trained at the same size)."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    for name, shape in PRESETS.items():
        if all(config.get(k) == v for k, v in shape.items()):
            return name
    raise TrafficMoeError(f"demo: {checkpoint}: its size matches no preset ({sorted(PRESETS)}); pass --config")


#: torch's threads at each stage (the default is taken again before each: :func:`threads.refresh_threads`)
_THREADS: list[int] = []


def _stage(title: str):
    _refresh()
    print(f"\n=== {title} ===", flush=True)


def _refresh() -> None:
    import torch

    from .threads import refresh_threads

    refresh_threads()
    _THREADS.append(torch.get_num_threads())


def run(args) -> int:
    if not Path(args.data).is_dir():  # before any output or import; an installed wheel holds no captures
        where = ("the shipped slice is in a clone's data/demo/loopback9, not in an installed package"
                 if Path(args.data) == DEFAULT_DATA else "no such folder")
        raise TrafficMoeError(f"demo: {args.data}: {where}; pass --data FOLDER (captures, one file per class)")
    from .data.prepare import format_report, prepare
    from .recipes.evaluate import add_to_model_card, evaluate, format_result
    from .recipes.finetune import finetune
    from .recipes.predict import predict_files
    from .recipes.pretrain import pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _THREADS.clear()
    started = time.perf_counter()
    timings = {}

    _stage(f"1/6 prepare {args.data}")
    t = time.perf_counter()
    report = prepare([args.data], str(out / "data"), labels="file", split="flow", ratios=(0.6, 0.2, 0.2),
                     seed=args.seed)
    print(format_report(report))
    timings["prepare"] = time.perf_counter() - t
    labels = report.get("labels", [])
    if report["files_read"] == 0 or len(labels) < 2:  # before minutes of pretraining, not after
        found = f"{report['files_read']} capture(s) read" + (f", labels {labels}" if labels else "")
        raise TrafficMoeError(f"demo: {args.data}: needs captures of at least two classes, one file per class "
                             f"(the label is the file name); {found}")

    from .checkpoints import resolve_checkpoint

    try:
        moe_from, dense_from = resolve_checkpoint(args.init_from), resolve_checkpoint(args.dense_from)
    except FileNotFoundError as e:
        raise TrafficMoeError(f"demo: {e}") from None
    config = args.config or _preset_of(moe_from)

    _stage(f"2/6 the pretrained checkpoint {args.init_from}; a short continued pretraining on the train split")
    t = time.perf_counter()
    if args.pretrain_steps:  # pretrain's defaults (masked packets + service term), from the shipped weights (domain-adaptive)
        pre = pretrain(data=[str(out / "data")], out=str(out / "pretrain-continued"), init_from=moe_from,
                       max_steps=args.pretrain_steps, batch_size=16, seed=args.seed, save_steps=10_000, progress=False)
        first, last = pre.get("first_logged_loss"), pre.get("last_logged_loss")
        print(f"{args.pretrain_steps} steps from {moe_from}: loss "
              + (f"{first:.3f} -> {last:.3f}" if first is not None and last is not None else "not logged (too few steps)")
              + " (the fine-tuning below starts from the shipped weights, not from these)")
    timings["pretrain"] = time.perf_counter() - t

    _stage("3/6 fine-tuning on all training flows, and few-shot")
    t = time.perf_counter()
    data = str(out / "data")
    runs = {
        "Traffic-MoE pretrained": dict(init_from=moe_from),
        "Traffic-MoE from scratch": dict(config=config),
        "dense BERT pretrained": dict(init_from=dense_from, dense=True),
    }
    folders = {}
    for name, kwargs in runs.items():
        folder = out / ("finetuned-" + name.lower().replace(" ", "-"))
        print(f"-- {name}", flush=True)
        _refresh()
        finetune(data=data, out=str(folder), epochs=args.finetune_epochs, batch_size=16, lr=2e-3, patience=3,
                 seed=args.seed, progress=False, **kwargs)
        folders[name] = folder
    few = {name: [] for name in runs}
    for name, kwargs in runs.items():
        for seed in range(args.seeds):
            folder = out / "few-shot" / f"{name.lower().replace(' ', '-')}-{seed}"
            _refresh()
            finetune(data=data, out=str(folder), shots=args.shots, min_steps=args.few_steps, batch_size=16, lr=3e-3,
                     seed=seed, progress=False, **kwargs)
            few[name].append(evaluate(data, str(folder), split="test", audit=False)["macro_f1"])
        print(f"-- {name}, {args.shots} flows per class: macro-F1 " + ", ".join(f"{v:.3f}" for v in few[name]), flush=True)
    timings["finetune"] = time.perf_counter() - t

    _stage("4/6 evaluation on the test split (flows never seen in training), and the open-set check")
    t = time.perf_counter()
    foreign = None
    if FOREIGN_DATA.is_dir():  # prepared with the options of the demo's data, all into one split
        foreign = str(out / "foreign")
        prepare([str(FOREIGN_DATA)], foreign, labels="file", split="none", progress=False)
        print(f"open-set check: flows of {FOREIGN_DATA.name} (other services; labels the models know are left out)")
    results = {}
    for name, folder in folders.items():
        results[name] = evaluate(data, str(folder), split="test", json_out=str(out / "eval" / f"{folder.name}.json"),
                                 ood=foreign)
        add_to_model_card(folder, results[name])  # the Hub folder's card gets its test figures
        print(f"-- {name}\n{format_result(results[name])}")
    from datasets import load_from_disk

    from .recipes.baselines import random_forest
    from .recipes.common import few_shot, label_names

    prepared = load_from_disk(data)
    names = label_names(prepared["train"])
    forest = random_forest(prepared["train"], prepared["test"], names)
    forest_few = [random_forest(few_shot(prepared["train"], args.shots, seed), prepared["test"], names, seed=seed)["macro_f1"]
                  for seed in range(args.seeds)]
    print(f"-- random forest (8 packets x direction, IP length, TCP flags, 32 payload bytes): "
          f"macro-F1 {forest['macro_f1']:.3f}; {args.shots} flows per class: " + ", ".join(f"{v:.3f}" for v in forest_few))
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
    import statistics

    def spread(values):
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

    shipped = Path(args.data).resolve() == DEFAULT_DATA.resolve()
    what = "shipped loopback9 slice" if shipped else str(args.data)  # it said "shipped slice" for any --data
    print(f"\n=== results: {what} ({len(names)} classes), test split = {results['Traffic-MoE pretrained']['samples']} "
          "flows never seen in training, anonymised headers ===")

    def open_set(r):  # ROC AUC of the top probability, own test flows vs the foreign ones; share rejected at 95 % kept
        source = next(iter(r.get("open_set", {}).get("sources", {}).values()), {})
        return f"{source['auroc']:.3f} / {source['rejected']['0.95']:.0%}" if "auroc" in source else "-"

    print(f"{'model':<26} {'params':>8} {'active':>8} {'accuracy':>9} {'macro-F1':>9}   {f'{args.shots}-shot macro-F1 ({args.seeds} seeds)':>28}"
          f"   {'open set: AUROC / rejected':>26}")
    for name, r in results.items():
        print(f"{name:<26} {r['parameters_total'] / 1e6:>7.2f}M {r['parameters_active'] / 1e6:>7.2f}M "
              f"{r['accuracy']:>9.3f} {r['macro_f1']:>9.3f}   {spread(few[name]):>28}   {open_set(r):>26}")
    print(f"{'random forest (classic)':<26} {'':>8} {'':>8} {forest['accuracy']:>9.3f} {forest['macro_f1']:>9.3f}   {spread(forest_few):>28}")
    audit = results["Traffic-MoE pretrained"].get("shortcut_audit")
    if audit:
        print(f"{'shortcut audit':<26} {'':>8} {'':>8} {audit['accuracy']:>9.3f} {audit['macro_f1']:>9.3f}   "
              "(random forest on the hidden addresses/ports only)")
    if foreign:
        print(f"open set: {FOREIGN_DATA.name} flows against the test split, by the top class probability (ROC AUC; share "
              "rejected at the threshold keeping 95% of the test flows: predict --reject-below)")
    used = sorted(set(_THREADS))
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s; torch threads "
          + (f"{used[0]}" if len(used) == 1 else f"{used[0]}-{used[-1]} (taken again at each stage: "
             f"{_THREADS.count(used[0])} of {len(_THREADS)} at {used[0]})"))
    (out / "results.json").write_text(json.dumps(
        {"results": results, "few_shot": few, "random_forest": forest, "random_forest_few_shot": forest_few,
         "timings": timings, "torch_threads": list(_THREADS)}, indent=2, default=str))
    return 0

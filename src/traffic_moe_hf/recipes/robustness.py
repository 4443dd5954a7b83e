"""``traffic-moe robustness``: a classifier's accuracy and macro-F1 under traffic-shaping attacks.

    traffic-moe robustness --data DIR --model CKPT [--model CKPT2 ...] [--split test] --json OUT
                           [--md OUT.md] [--plot OUT.png] [--whitebox] [--pgd-eps 0.1,0.5]

Every flow of the split is shaped by each attack at each budget (seeded), re-anonymised and
re-tokenized exactly as ``prepare`` would (same max packets / bytes / TTL mode, read from the
dataset's report.json), then classified. JSON: ``clean`` {accuracy, macro_f1} and ``attacks``
{attack → budget → {accuracy, macro_f1}} for the first model; with several models all of them under
``models`` (name → the same). ``--whitebox`` adds HotFlip-chosen padding and chaff bytes
(``whitebox_padding``, ``whitebox_chaff``); ``--pgd-eps`` adds embedding-space PGD (an upper bound,
not traffic) under ``pgd``. See docs/robustness.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..argtypes import HelpFormatter, at_least, comma_list, non_negative, output_file
from ..errors import TrafficMoeError


# HotFlip budgets (bytes chosen per data packet / chaff packets per packet); override with --budgets
WHITEBOX_BUDGETS = {"whitebox_padding": [16, 1500], "whitebox_chaff": [1.0]}


def add_parser(subparsers):
    p = subparsers.add_parser(
        "robustness", help="accuracy / macro-F1 under traffic-shaping attacks (black-box, white-box, PGD)",
        description=__doc__, formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, help="directory written by `traffic-moe prepare`")
    p.add_argument("--model", required=True, action="append", help="classifier checkpoint (repeat to compare)")
    p.add_argument("--name", action="append", default=None, help="display name per --model (default: folder name)")
    p.add_argument("--split", default="test", help="split to attack")
    p.add_argument("--json", required=True, dest="json_out", type=output_file, help="where to write the results (JSON)")
    p.add_argument("--md", default=None, type=output_file, help="also write a Markdown table here")
    p.add_argument("--plot", default=None, type=output_file, help="also write a PNG plot here")
    p.add_argument("--attacks", default=None, help="comma list (default: all black-box attacks)")
    p.add_argument("--budgets", default=None,
                   help='JSON {attack: [budgets]} overriding the defaults, e.g. \'{"padding": [64, 1500]}\'')
    p.add_argument("--whitebox", action="store_true", help="add HotFlip-optimised padding / chaff bytes")
    p.add_argument("--whitebox-steps", type=at_least(1), default=8, help="gradient steps of the white-box attack")
    p.add_argument("--pgd-eps", type=comma_list(non_negative), default="",
                   help="comma list of embedding-PGD radii (fraction of the byte-embedding norm)")
    p.add_argument("--max-samples", type=at_least(1), default=None, help="evaluate on N flows only, the classes covered as evenly as they allow (chosen with --seed)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the attacks and of --max-samples")
    p.add_argument("--tcp-normalize", dest="normalize_tcp", action="store_true", default=None,
                   help="TCP-normalise shaped flows as prepare did (default: what the dataset's report.json says)")
    p.add_argument("--no-tcp-normalize", dest="normalize_tcp", action="store_false",
                   help="do not TCP-normalise shaped flows (to measure what normalisation buys)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    try:
        budgets = json.loads(args.budgets) if args.budgets else None
    except json.JSONDecodeError as e:
        raise TrafficMoeError(f"--budgets: not JSON ({e}); expected e.g. '{{\"padding\": [64, 1500]}}'") from None
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    result = robustness(args.data, args.model, names=args.name, split=args.split, attacks=attacks, budgets=budgets,
                        whitebox=args.whitebox, whitebox_steps=args.whitebox_steps, pgd_eps=args.pgd_eps,
                        max_samples=args.max_samples, seed=args.seed, normalize_tcp=args.normalize_tcp,
                        progress=args.progress)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=2))
    table = markdown_table(result)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(table + "\n")
    if args.plot:
        plot(result, args.plot)
    print(table)
    return 0


def _metrics(labels, logits) -> dict:
    from .common import classification_metrics

    m = classification_metrics(labels, logits.argmax(-1), [str(i) for i in range(logits.shape[1])])
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def evaluate_model(model, dataset, labels, options, attacks, budgets, whitebox=False, whitebox_steps=8,
                   pgd_eps=(), seed=0, bar=None) -> dict:
    """``bar``: a tqdm bar moved by one per evaluation done (clean, each attack x budget, each PGD radius)."""
    from ..data.samples import get_tokenizer, tokenizer_settings
    from ..shaping.attacks import attack_columns, make_attack
    from .whitebox import pgd_eval, predict, whitebox_columns

    tokenizer = get_tokenizer(None, tokenizer_settings(options))
    dense = model.config.model_type == "bert"
    clean = attack_columns(dataset, None, seed=seed, **options)
    out = {"clean": _metrics(labels, predict(model, clean, dense)), "attacks": {}}

    def step(what):
        if bar is not None:
            bar.set_postfix_str(what, refresh=False)
            bar.update()

    step("clean")
    for name in attacks:
        out["attacks"][name] = {}
        for budget in budgets[name]:
            cols = attack_columns(dataset, make_attack(name, budget), seed=seed, **options)
            out["attacks"][name][str(budget)] = _metrics(labels, predict(model, cols, dense))
            step(f"{name} {budget}")
            if cols["normalized_out"]:  # packets TCP normalisation left out of the shaped flows, by reason
                out["attacks"][name][str(budget)]["normalized_out"] = cols["normalized_out"]
    if whitebox:
        for name in ("padding", "chaff"):
            key = f"whitebox_{name}"
            out["attacks"][key] = {}
            for budget in budgets.get(key, WHITEBOX_BUDGETS[key]):
                cols = attack_columns(dataset, make_attack(name, budget), seed=seed, **options)
                cols = whitebox_columns(model, cols, labels, dense, tokenizer, steps=whitebox_steps)
                out["attacks"][key][str(budget)] = _metrics(labels, predict(model, cols, dense))
                step(f"{key} {budget}")
    if pgd_eps:
        out["pgd"] = {}
        for e in pgd_eps:
            out["pgd"][str(e)] = _metrics(labels, pgd_eval(model, clean, labels, dense, e))
            step(f"pgd {e}")
    return out


def _evaluations(attacks, budgets, whitebox, pgd_eps) -> int:
    """How many evaluations ``evaluate_model`` runs per model (the progress bar's total)."""
    n = 1 + sum(len(budgets[a]) for a in attacks) + len(pgd_eps)
    if whitebox:
        n += sum(len(budgets.get(k, WHITEBOX_BUDGETS[k])) for k in WHITEBOX_BUDGETS)
    return n


def robustness(data, models, names=None, split="test", attacks=None, budgets=None, whitebox=False,
               whitebox_steps=8, pgd_eps=(), max_samples=None, seed=0, normalize_tcp=None, progress=False) -> dict:
    from ..data.prepared import dataset_options, load_prepared
    from ..shaping.attacks import DEFAULT_BUDGETS
    from .common import data_tokenizer, device_summary
    from .evaluate import known_labels, load_classifier

    models = [models] if isinstance(models, (str, Path)) else list(models)
    attacks = list(attacks or DEFAULT_BUDGETS)
    all_budgets = check_plan(attacks, budgets, whitebox)
    names = list(names or []) + [Path(m).name for m in models[len(names or []):]]
    prepared = load_prepared(data)
    if split not in prepared:
        raise TrafficMoeError(f"{data}: no split {split!r} (has {list(prepared)})")
    dataset = prepared[split]
    if max_samples and max_samples < len(dataset):
        from .common import balanced_subset

        dataset = balanced_subset(dataset, max_samples, seed)
    options = dataset_options(data)
    if normalize_tcp is not None:
        options["normalize_tcp"] = bool(normalize_tcp)
    window_note = None
    if options["normalize_tcp"]:
        stored = max((len(p) for p in dataset["packets"]), default=0)
        if stored <= options["max_packets"]:
            window_note = (f"traffic-moe robustness: {data} stores at most {stored} packets per flow and the model reads "
                           f"{options['max_packets']}: after TCP normalisation leaves chaff out, shaped flows have fewer "
                           f"real packets than the model's window (prepare with --store-packets "
                           f"{2 * options['max_packets']} to measure what the model would see on the wire)")
    label_names = dataset.features["label"].names
    per_label = np.bincount(np.asarray(dataset["label"], dtype=np.int64), minlength=len(label_names))
    result = {"data": str(data), "split": split, "samples": len(dataset), "options": options,
              "samples_per_label": {label_names[i]: int(c) for i, c in enumerate(per_label) if c},
              "budgets": {a: all_budgets[a] for a in attacks}, "seed": seed, "device": device_summary(), "models": {}}
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(models) * _evaluations(attacks, all_budgets, whitebox, pgd_eps), unit="eval",
                   desc="robustness", file=sys.stderr, dynamic_ncols=True)
    for name, path in zip(names, models):
        if bar is not None:
            bar.set_description(f"robustness {name}")
        data_tokenizer(data, path)  # the model's input layout must be the data's
        model = load_classifier(path)
        _mapping, labels, keep = known_labels(dataset, model, f"{data} ({split})")
        view = dataset.select(keep) if len(keep) < len(dataset) else dataset
        # the caveat is a notice to the command's user (errors.py), printed once a model has passed its checks: a
        # fatal error is not preceded by a caveat
        if window_note:
            print(window_note, file=sys.stderr)
            window_note = None
        res = evaluate_model(model, view, labels[keep], options, attacks, all_budgets, whitebox=whitebox,
                             whitebox_steps=whitebox_steps, pgd_eps=pgd_eps, seed=seed, bar=bar)
        result["models"][name] = {"model": str(path), "type": model.config.model_type,
                                  "samples_skipped_unknown_label": int(len(labels) - len(keep)), **res}
    if bar is not None:
        bar.close()
    first = result["models"][names[0]]
    result["clean"], result["attacks"] = first["clean"], first["attacks"]
    if "pgd" in first:
        result["pgd"] = first["pgd"]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def check_plan(attacks, budgets, whitebox=False) -> dict:
    """Every attack name and budget checked before any model runs (a typo used to surface as a KeyError,
    or a budget for an attack not run was silently ignored, or a negative padding ran as a no-op).
    Returns the budgets to use: the defaults overridden by ``budgets``."""
    from ..shaping.attacks import ATTACKS, DEFAULT_BUDGETS, make_attack

    known = sorted(ATTACKS)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise TrafficMoeError(f"--attacks: unknown attack(s) {unknown}; choose from {known} (white-box: --whitebox)")
    if not isinstance(budgets or {}, dict):
        raise TrafficMoeError(f"--budgets: expected a JSON object {{attack: [budgets]}}, got {type(budgets).__name__}")
    budgets = dict(budgets or {})
    for name, values in budgets.items():
        base = name.removeprefix("whitebox_") if name in WHITEBOX_BUDGETS else name
        if base not in ATTACKS:
            raise TrafficMoeError(f"--budgets: unknown attack {name!r}; choose from {known + sorted(WHITEBOX_BUDGETS)}")
        if not isinstance(values, list) or not values:
            raise TrafficMoeError(f"--budgets {name}: expected a non-empty list of budgets, got {values!r}")
        for v in values:
            try:
                make_attack(base, v)
            except ValueError as e:
                raise TrafficMoeError(f"--budgets {name}: {e}") from None
        if name not in attacks and not (whitebox and name in WHITEBOX_BUDGETS):  # a notice, not an error (errors.py)
            print(f"traffic-moe robustness: --budgets {name}: that attack is not run (--attacks "
                  f"{','.join(attacks)}{'' if whitebox else '; white-box needs --whitebox'})", file=sys.stderr)
    return {**DEFAULT_BUDGETS, **budgets}


def markdown_table(result: dict) -> str:
    names = list(result["models"])
    head = "| attack | budget | " + " | ".join(f"{n} acc | {n} macro-F1 (Δ)" for n in names) + " |"
    sep = "|---|---|" + "---|---|" * len(names)
    rows = [head, sep]

    def cells(get):
        out = []
        for n in names:
            m = result["models"][n]
            v = get(m)
            if v is None:
                out += ["–", "–"]
            else:
                d = (v["macro_f1"] - m["clean"]["macro_f1"]) * 100
                out += [f"{v['accuracy']:.3f}", f"{v['macro_f1']:.3f} ({d:+.1f})"]
        return " | ".join(out)

    rows.append("| clean | – | " + cells(lambda m: m["clean"]) + " |")
    first = result["models"][names[0]]
    for attack, per in first["attacks"].items():
        for budget in per:
            rows.append(f"| {attack} | {budget} | "
                        + cells(lambda m: m["attacks"].get(attack, {}).get(budget)) + " |")
    for eps in first.get("pgd", {}):
        rows.append(f"| embedding PGD (bound) | eps {eps} | " + cells(lambda m: m.get("pgd", {}).get(eps)) + " |")
    return "\n".join(rows)


def plot(result: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(result["models"].values()))
    attacks = list(first["attacks"]) + (["pgd"] if "pgd" in first else [])
    cols = min(4, len(attacks))
    rows = -(-len(attacks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, attack in zip(axes.flat, attacks):
        for name, m in result["models"].items():
            per = m.get("pgd", {}) if attack == "pgd" else m["attacks"].get(attack, {})
            xs = ["clean"] + list(per)
            ys = [m["clean"]["macro_f1"]] + [per[b]["macro_f1"] for b in per]
            ax.plot(range(len(xs)), ys, marker="o", label=name)
            ax.set_xticks(range(len(xs)), xs, rotation=30, fontsize=8)
        ax.set_title(attack if attack != "pgd" else "embedding PGD (bound)")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("macro-F1")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(attacks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{result['data']} ({result['split']}, {result['samples']} flows)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

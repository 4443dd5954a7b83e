#!/usr/bin/env python3
"""How much of each shaping attack *any* classifier of the prepared input could undo: a random forest
that is trained on the attacked traffic itself.

For each black-box attack at each reported budget, on the flow-level split of a prepared task:

* ``forest clean``   : the classic forest (`recipes.baselines`) trained on clean flows, tested on
                       shaped test flows (the forest's own drop, no defence);
* ``forest matched`` : trained on the clean flows + one copy shaped by *this* attack at *this* budget
                       (another seed than the test's), tested on the shaped test flows. It knows the
                       exact attack in advance, which no deployed defence does: its drop is a rough
                       floor for what adversarial training can reach on this input (8 packets x
                       direction, IP length, TCP flags, first payload bytes);
* ``forest mixed``   : trained on the clean flows + 3 copies shaped with attacks and budgets drawn
                       from `adversarial.TRAIN_RANGES` (what `finetune --adversarial` trains on).

A drop that stays large for ``forest matched`` means the attack removes the information the
classifier reads (e.g. padding to the MTU in front of the payload leaves only packet count,
direction and flags in the first 64 bytes), not that the model is weak.

``--packets K`` reads the first K packets of each (shaped, normalised, coalesced) flow instead of the
dataset's ``max_packets`` (prepare the data with ``--store-packets`` >= K; a larger K is refused); ``--payload-bytes`` sets how
many payload bytes per packet the forest sees (0: direction, IP length and flags only). ``--attacks``
restricts the cells (e.g. ``--attacks padding``).

usage: python benchmarks/robustness/robustness_ceiling.py DATA_DIR [DATA_DIR ...] [--packets K] [--payload-bytes B]
       [--attacks NAME ...] [--no-mixed] [--json OUT] [--md OUT.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from traffic_moe_hf.recipes.baselines import PAYLOAD_BYTES, dataset_features


def shaped(dataset, name, budget, seed, options):
    from traffic_moe_hf.robustness.attacks import attack_columns, make_attack

    cols = attack_columns(dataset, make_attack(name, budget) if name else None, seed=seed, **options)
    return {k: cols[k] for k in ("packets", "directions", "ip_lengths")}


def forest(x, y, seed=0):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1).fit(x, y)


def macro_f1(y, p):
    from sklearn.metrics import f1_score

    return round(float(f1_score(y, p, average="macro")), 4)


def mixed_copies(train, options, features, copies=3, seed=1):
    """Feature rows of ``copies`` shaped copies, attack and budget per row drawn as finetune --adversarial does."""
    from traffic_moe_hf.robustness.adversarial import copy_choices, shape_rows
    from traffic_moe_hf.robustness.attacks import row_seed

    out = []
    for copy in range(copies):
        choice = copy_choices(len(train), seed, copy)
        cols = shape_rows(train, choice, lambda key, copy=copy: row_seed(seed, copy, *key),
                          ["packets", "directions", "ip_lengths"], options)
        out.append(features(cols))
    return np.concatenate(out)


def stored_packets(data: str, options: dict) -> int:
    """Packets per flow the prepared dataset keeps (`prepare --store-packets`, else its window)."""
    report = Path(data) / "report.json"
    opts = json.loads(report.read_text()).get("options", {}) if report.is_file() else {}
    return int(opts.get("store_packets") or options["max_packets"])


def run_task(data: str, budgets: dict, log, mixed: bool = True, packets: int | None = None,
             payload_bytes: int = PAYLOAD_BYTES) -> dict:
    from traffic_moe_hf.recipes.common import load_prepared
    from traffic_moe_hf.robustness.attacks import dataset_options

    prepared = load_prepared(data)
    train, test = prepared["train"], prepared["test"]
    options = dataset_options(data)
    stored = stored_packets(data, options)
    packets = packets or options["max_packets"]
    if packets > stored:  # the missing packets would be zero-filled: the forest would read padding, not traffic
        raise SystemExit(f"{data}: --packets {packets} but the dataset stores at most {stored} packets per flow "
                         f"(prepare it with --store-packets {packets} or more)")
    options["max_packets"] = packets

    def features(cols):
        return dataset_features(cols, payload_bytes=payload_bytes, num_packets=packets)

    y_train, y_test = np.asarray(train["label"]), np.asarray(test["label"])
    x_train = features(shaped(train, None, None, 0, options))
    x_test = features(shaped(test, None, None, 0, options))
    clean_forest = forest(x_train, y_train)
    mixed_forest = None
    if mixed:
        log(data, "mixed copies")
        x_mixed = np.concatenate([x_train, mixed_copies(train, options, features)])
        mixed_forest = forest(x_mixed, np.tile(y_train, len(x_mixed) // len(y_train)))
    result = {"data": data, "train": len(train), "test": len(test), "packets": packets,
              "payload_bytes": payload_bytes, "options": options,
              "clean": {"forest clean": macro_f1(y_test, clean_forest.predict(x_test))},
              "attacks": {}}
    if mixed_forest is not None:
        result["clean"]["forest mixed"] = macro_f1(y_test, mixed_forest.predict(x_test))
    result["clean"]["forest matched"] = result["clean"]["forest clean"]
    for name, values in budgets.items():
        for budget in values:
            log(data, name, budget)
            x_att = features(shaped(test, name, budget, 0, options))  # seed 0: what `traffic-moe robustness` uses
            x_copy = features(shaped(train, name, budget, 1, options))
            matched = forest(np.concatenate([x_train, x_copy]), np.concatenate([y_train, y_train]))
            cell = result["attacks"].setdefault(name, {})[str(budget)] = {
                "forest clean": macro_f1(y_test, clean_forest.predict(x_att)),
                "forest matched": macro_f1(y_test, matched.predict(x_att)),
            }
            if mixed_forest is not None:
                cell["forest mixed"] = macro_f1(y_test, mixed_forest.predict(x_att))
    return result


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        kinds = [k for k in ("forest clean", "forest matched", "forest mixed") if k in r["clean"]]
        read = f"first {r['packets']} packets, {r['payload_bytes']} payload bytes each" if "packets" in r else "first 8 packets"
        lines += [f"**{Path(r['data']).name}** (train {r['train']} flows, test {r['test']}; {read}; macro-F1, drop in points)", "",
                  "| attack | budget | " + " | ".join(kinds) + " |", "|---|---|" + "---:|" * len(kinds)]
        lines.append("| clean | – | " + " | ".join(f"{r['clean'][k]:.3f}" for k in kinds) + " |")
        for name, by in r["attacks"].items():
            for budget, m in by.items():
                lines.append(f"| {name} | {budget} | " + " | ".join(
                    f"{m[k]:.3f} ({100 * (m[k] - r['clean'][k]):+.1f})" for k in kinds) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from traffic_moe_hf.robustness.attacks import DEFAULT_BUDGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+")
    parser.add_argument("--json", default="benchmarks/robustness/results/robustness_ceiling.json")
    parser.add_argument("--md", default="benchmarks/robustness/results/robustness_ceiling.md")
    parser.add_argument("--packets", type=int, default=None, help="packets per flow the forest reads (default: the dataset's)")
    parser.add_argument("--payload-bytes", type=int, default=PAYLOAD_BYTES)
    parser.add_argument("--attacks", nargs="*", default=None, help="only these attacks")
    parser.add_argument("--no-mixed", action="store_true", help="skip the forest trained like --adversarial")
    args = parser.parse_args(argv)
    budgets = {k: v for k, v in DEFAULT_BUDGETS.items() if args.attacks is None or k in args.attacks}
    started = time.perf_counter()

    def log(*a):
        print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)

    results = [run_task(d, budgets, log, mixed=not args.no_mixed, packets=args.packets, payload_bytes=args.payload_bytes)
               for d in args.data]
    Path(args.json).write_text(json.dumps({"results": results, "seconds": round(time.perf_counter() - started, 1)}, indent=1))
    Path(args.md).write_text(markdown(results) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

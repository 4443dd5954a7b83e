"""Does more pretraining or a bigger model pay? sv17 10-per-class macro-F1 against pretraining compute, one line per
preset and recipe, in two panels: the checkpoints FINE-TUNED (test split, mean ± std over the fine-tuning seeds
cached by ``transfer.py``) and a linear probe on the frozen encoder (VALIDATION split, the proxy that picks them).

    .venv/bin/python benchmarks/foundation/scaling.py [--probes results/probe_sv17_validation.json]
        [--cells results] [--out benchmarks/foundation/results]

Reads what ``probe.py --out WORK/probe.json`` appended: one entry per checkpoint (``.../<preset>-checkpoint-N``,
``.../pre-<preset>/checkpoints/checkpoint-N``, or ``random <preset>`` for step 0). Compute per checkpoint:
``6 x active parameters x tokens`` (the usual estimate of training FLOPs; the MoE counts only the experts a
token is routed to), tokens = steps x flows per step x mean tokens per flow, both from the pretraining summary
(``--flows-per-step``, ``--mean-tokens``; the corpus of ``make_corpus.py``: 64 and 198; half the flows for the runs
without shaped views, ``e1`` and ``bert-e``). The y axis is the
probe's mean over 10 few-shot draws (10 flows per class) on sv17's validation split: the cheap proxy this
project chooses checkpoints by (a fine-tune per point would take ~10-45 CPU-minutes); the test split is never
read. The fine-tuned panel reads transfer.py's cached sv17 10-per-class cells (``--cells``/sv17/<row>-10-<seed>.json)
whose checkpoint :data:`FINETUNED` names. Both inputs live in the repository, so the plot can be made again on a
machine without the work folder. Writes scaling.png and scaling.md to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# dense BERT checkpoints are named bert-...; the MoE ones by preset (moe-... is the mini run's earlier name); e1 and
# bert-e: the runs with the service term and no contrastive views (32 flows per step); bert-f: bert-e's recipe with
# the service term read through BERT's pooler, which its classifier reads (attach_dense_pooler); e3 and bert-g: e1
# and bert-f continued from step 800 to 1600, e4: e3 continued to 3200 (one line each with the run they continue)
NAMES = {"moe": "mini", "mini": "mini", "tiny": "tiny", "small": "small", "bert": "bert-mini", "bert-mini": "bert-mini",
         "e1": "mini + service", "bert-e": "bert-mini + service", "bert-f": "bert-mini + service, pooler trained",
         "e3": "mini + service", "e4": "mini + service", "bert-g": "bert-mini + service, pooler trained",
         "tiny-s": "tiny + service"}  # tiny-s: tiny with version 3's recipe (the defaults), 2026-12-07
SINGLE_VIEW = {"mini + service", "tiny + service", "bert-mini + service", "bert-mini + service, pooler trained",
               "mini-e16 + service"}

#: transfer.py's cached cell names (row@version) -> (model line, pretraining step) of the checkpoint they fine-tuned;
#: "scratch" (the mini preset, random initialisation) is step 0 of the mini lines, "scratch@tiny" of tiny's
FINETUNED = {"scratch": ("mini + service", 0), "moe@v2": ("mini + service", 800), "moe@v3": ("mini + service", 1600),
             "moe@e4s2600": ("mini + service", 2600), "moe@v4": ("mini + service", 3200),
             "moe": ("mini", 200),  # version 1: masked + contrast, run pre-mini step 200
             "dense": ("bert-mini", 200), "dense@v2": ("bert-mini + service", 800),
             "dense@v2.1": ("bert-mini + service, pooler trained", 800),
             "dense@v2.2": ("bert-mini + service, pooler trained", 1600),
             "scratch@tiny": ("tiny + service", 0), "moe@tiny-s800": ("tiny + service", 800),
             # version 3 upcycled to 16 experts a layer (upcycle.py), then 800 more steps: the same active size
             "moe@up16": ("mini-e16 + service", 2400)}


def finetuned_points(cells: Path, task: str = "sv17", shots: str = "10") -> dict[tuple[str, int], list[dict]]:
    """{(model line, step): [cell, ...]} from transfer.py's cached cells of ``task`` at ``shots`` per class."""
    out: dict[tuple[str, int], list[dict]] = {}
    for path in sorted((cells / task).glob(f"*-{shots}-*.json")):
        row = path.stem.rsplit("-", 2)[0]
        if row in FINETUNED:
            out.setdefault(FINETUNED[row], []).append(json.loads(path.read_text()))
    if ("mini + service", 0) in out:  # the mini preset's random initialisation starts the contrast line too
        out.setdefault(("mini", 0), out[("mini + service", 0)])
    return out


def preset_and_experts(size: str) -> tuple[str, int | None]:
    """``mini-e16`` (upcycle.py: the mini preset with 16 experts a layer) -> ("mini", 16); a plain preset -> (it, None)."""
    preset, _, experts = size.partition("-e")
    return preset, int(experts) if experts else None


def line_label(model: str, active: int) -> str:
    recipe = "masked + service" if model in SINGLE_VIEW else "masked + contrast"
    size = model.split(" + ")[0]
    preset, experts = preset_and_experts(size)
    name = f"{preset}, {experts} experts (upcycled)" if experts else size
    return (f"{name}: {recipe}{', pooler trained' if model.endswith('pooler trained') else ''} "
            f"({active / 1e6:.2f}M active)")


def point(entry) -> tuple[str, int] | None:
    """(model, pretraining step) of a probe entry, None when its name says neither."""
    ckpt = entry["checkpoint"]
    m = re.fullmatch(r"random (\w+)", ckpt)
    if m:
        return m.group(1), 0
    m = re.search(r"(?:^|/)(?:pre-)?([\w-]+?)(?:/checkpoints/|-)checkpoint-(\d+)/?$", ckpt)
    if m and m.group(1) in NAMES:
        return NAMES[m.group(1)], int(m.group(2))
    return None


def active_parameters(model: str) -> int:
    """Parameters a token passes through (MoE: the routed experts only), embeddings excluded."""
    from traffic_moe_hf import TrafficMoeConfig, TrafficMoeModel
    from traffic_moe_hf.recipes.common import dense_config, parameter_summary

    model = model.split(" + ")[0]  # the recipe does not change the size
    if model.startswith("bert-"):
        from transformers import BertModel

        preset = model.split("-", 1)[1]
        net = BertModel(dense_config(TrafficMoeConfig.from_preset(preset), match="active"))
    else:
        preset, experts = preset_and_experts(model)
        net = TrafficMoeModel(TrafficMoeConfig.from_preset(preset, **({"num_experts": experts} if experts else {})))
    embeddings = sum(p.numel() for n, p in net.named_parameters() if "embeddings" in n)
    return int(parameter_summary(net)["parameters_active"]) - embeddings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=Path, default=HERE / "results" / "probe_sv17_validation.json",
                    help="probe.py's JSON (default: the repository's copy of every probe so far)")
    ap.add_argument("--cells", type=Path, default=HERE / "results", help="transfer.py's cached cells, a folder per task")
    ap.add_argument("--flows-per-step", type=int, default=64)
    ap.add_argument("--mean-tokens", type=float, default=198.0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    entries = json.loads(a.probes.read_text())
    series: dict[str, dict[int, dict]] = {}
    for e in entries:
        p = point(e)
        if p and "sv17" in e.get("data", "") and e.get("split") == "validation":
            series.setdefault(p[0], {})[p[1]] = e  # a later probe of the same checkpoint replaces the earlier
    for model in SINGLE_VIEW & set(series):  # from random initialisation: the preset's step 0 is theirs too
        base = series.get(model.split(" + ")[0], {}).get(0)
        if base is not None:
            series[model].setdefault(0, base)
    rows = []
    for model, by_step in sorted(series.items()):
        active = active_parameters(model)
        for step, e in sorted(by_step.items()):
            flows = a.flows_per_step // 2 if model in SINGLE_VIEW else a.flows_per_step  # no shaped views
            flops = 6 * active * step * flows * a.mean_tokens
            rows.append(dict(model=model, step=step, active=active, flops=flops, probe10=e["10_per_class_mean"],
                             probe10_std=e["10_per_class_std"], probe_all=e["all"], date=e.get("date", "")))
    a.out.mkdir(parents=True, exist_ok=True)
    lines = ["sv17 validation macro-F1 of a linear probe on the frozen encoder (10 flows per class: mean ± std over 10 "
             "draws; all: every training flow) against pretraining compute (6 × active non-embedding parameters × "
             f"tokens; tokens = steps × {a.flows_per_step} flows × {a.mean_tokens:g} tokens). Step 0: random initialisation. "
             f"Written by `benchmarks/foundation/scaling.py --probes {a.probes.name}`.", "",
             "| model | active params (no embeddings) | pretraining steps | compute (TFLOP) | probe, 10 per class | probe, all | probed |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['active'] / 1e6:.2f}M | {r['step']} | {r['flops'] / 1e12:.1f} | "
                     f"{r['probe10']:.3f} ± {r['probe10_std']:.3f} | {r['probe_all']:.3f} | {r['date']} |")
    import statistics

    tuned = []
    for (model, step), got in sorted(finetuned_points(a.cells).items()):
        active = active_parameters(model)
        flows = a.flows_per_step // 2 if model in SINGLE_VIEW else a.flows_per_step
        test = [g["test_macro_f1"] for g in got]
        tuned.append(dict(model=model, step=step, active=active, flops=6 * active * step * flows * a.mean_tokens,
                          test=statistics.mean(test), test_std=statistics.pstdev(test), n=len(test),
                          validation=statistics.mean(g["validation_macro_f1"] for g in got)))
    lines += ["", "Fine-tuned with `traffic-moe finetune`'s defaults on 10 flows per class (sv17 test macro-F1, mean ± std "
              "over the fine-tuning seeds cached by `transfer.py`; validation mean beside it). Step 0: the same preset "
              "from scratch.", "",
              "| model | active params (no embeddings) | pretraining steps | compute (TFLOP) | test, 10 per class | seeds | validation |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in tuned:
        lines.append(f"| {r['model']} | {r['active'] / 1e6:.2f}M | {r['step']} | {r['flops'] / 1e12:.1f} | "
                     f"{r['test']:.3f} ± {r['test_std']:.3f} | {r['n']} | {r['validation']:.3f} |")
    from traffic_moe_hf.atomic import write_text

    write_text(a.out / "scaling.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tax, ax) = plt.subplots(1, 2, figsize=(11.5, 5.4))
    handles = {}
    colour = {m: f"C{i}" for i, m in enumerate(sorted({r["model"] for r in rows + tuned}))}  # one per line, both panels
    for panel, points, key in ((tax, tuned, "test"), (ax, rows, "probe10")):
        for model in sorted({r["model"] for r in points}):
            pts = [r for r in points if r["model"] == model]
            x = [max(r["flops"], 1e11) / 1e12 for r in pts]  # step 0 drawn at the axis' left edge
            handles[model] = panel.errorbar(x, [r[key] for r in pts], yerr=[r[key + "_std"] for r in pts], marker="o",
                                            capsize=3, color=colour[model], label=line_label(model, pts[0]["active"]))
        panel.set_xscale("log")
        panel.grid(alpha=0.3)
        panel.set_xlabel("pretraining compute, TFLOP (6 × active params × tokens)\nfrom scratch drawn at 0.1", fontsize=9)
    tax.set_ylabel("sv17 test macro-F1\n(fine-tuned, 10 flows per class)")
    tax.set_title("fine-tuned (bars: std over fine-tuning seeds)", fontsize=10)
    ax.set_ylabel("sv17 validation macro-F1\n(linear probe, 10 flows per class)")
    ax.set_title("linear probe, the proxy that picks (bars: std over 10 draws)", fontsize=10)
    fig.suptitle("Does more pretraining or a bigger model pay?", fontsize=11)
    fig.legend(handles=[handles[m] for m in sorted(handles)], loc="lower center", ncol=3, fontsize=8,
               frameon=False)  # one legend for both panels, below them
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(a.out / "scaling.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ship a pretraining checkpoint as a Hub folder in the repository's checkpoints/ (with its model card and loss curve).

    .venv/bin/python benchmarks/foundation/ship.py --moe WORK/pre-mini/checkpoints/checkpoint-N \\
        --dense WORK/pre-bert-mini/checkpoints/checkpoint-N --work WORK --hours-moe H --hours-dense H

Writes checkpoints/traffic-moe-mini and checkpoints/bert-mini: safetensors, config (with ``auto_map`` and the
remote-code files for the MoE), tokenizer, README.md (the card: corpus, compute, losses, the transfer table of
benchmarks/foundation/results/transfer.md) and loss.png. Each folder is written beside its final place and
moved in when complete. Ship a new version only when it measures better on VALIDATION (probe.py, transfer.py).

    .venv/bin/python benchmarks/foundation/ship.py --refresh-cards

puts the current results/transfer.md into both cards and changes nothing else (for new cells of the same weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def loss_plot(history, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], label=f"total ({objectives(history)} + router)")
    for key, label in (("contrastive_loss", "flow-contrastive (NT-Xent)"), ("service_loss", "service (cross-entropy)")):
        if any(key in h for h in history):
            ax.plot([h["step"] for h in history if key in h], [float(h[key]) for h in history if key in h], label=label)
    views = any("contrastive_loss" in h for h in history)
    ax.set_xlabel("step (32 flows + 32 shaped views)" if views else "step (32 flows)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def objectives(history) -> str:
    """The pretraining terms a run's log shows: masked packets always, the others where their loss is logged."""
    terms = ["masked packets"]
    if any("contrastive_loss" in h for h in history):
        terms.append("flow contrast")
    if any("service_loss" in h for h in history):
        terms.append("service (hidden server port)")
    return " + ".join(terms)


def corpus_table(work: Path) -> str:
    rows = ["| source | capture files read | packets | flows pretrained on |", "|---|---:|---:|---:|"]
    public = json.loads((work / "corpus-public" / "report.json").read_text())
    for src, v in public["sources"].items():
        name = src.split("shared/data/")[-1]
        rows.append(f"| {name} | {v['files_read']} | {v['packets']:,} | {v['samples']} (95 % train) |")
    for task in ("loopback9", "tls9", "attack10"):
        r = json.loads((work / task / "report.json").read_text())
        rows.append(f"| {task} (train split only) | {r['files_read']} | {r['packets_total']:,} | {sum(r['samples']['train'].values())} |")
    return "\n".join(rows)


#: mean model-input tokens per training flow of the corpus (measured 2026-12-06 over its four train splits)
TOKENS_PER_FLOW = 198

CARD = """---
library_name: transformers
license: apache-2.0
tags: [traffic-moe, network-traffic, mixture-of-experts, pretrained]
---

# {name}

{what}, pretrained by {objectives} on public network captures. A **foundation
checkpoint**: fine-tune it on your labelled flows (`traffic-moe finetune --from {short}`) — it has no
classification head of its own. Record: `docs/results/foundation.md` in the traffic-moe-hf repository.

Not on the Hugging Face Hub or PyPI: it ships in the repository's `checkpoints/` folder. Install the package
from a clone (`pip install -e .`), or load the folder with `trust_remote_code=True` without it{remote}.

```python
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
path = "checkpoints/{short}"          # this folder
encoder = AutoModel.from_pretrained(path{trc})
classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5{trc})  # new head, to fine-tune
tokenizer = AutoTokenizer.from_pretrained(path{trc})
```

## Model

| | |
|---|---|
| architecture | {arch} |
| parameters | {total:.2f}M total, {active:.2f}M active per token |
| input | 8 packets x 64 byte tokens per flow (compact header layout: anonymised fields left out), `prepare`'s defaults |

## Pretraining corpus

Unlabelled, one command (`benchmarks/foundation/make_corpus.py`):
`traffic-moe prepare ../shared/data/public/{{suricata-verify/pcaps,zeek-traces,tcpdump-tests}} --labels none
--exclude-from benchmarks/foundation/sv17-heldout.txt --split-ratios 0.95,0.05,0`, plus the train splits of
loopback9 / tls9 / attack10 (`prepare --labels file`, defaults). The validation and test source captures of the
sv17 task (and byte-identical copies elsewhere) were never read.

{corpus}

## Compute

{compute}

{command}

![loss](loss.png)

## Transfer

{transfer}

{transfer_plot}

{note}

## Limitations

Small (CPU-pretrained for hours, not days); the corpus is test and research traffic (crafted and real), a few
thousand flows per source. Headers are anonymised before the model sees them; check the shortcut audit of your
own evaluation (`traffic-moe evaluate`) before trusting a score.
"""


def ship(src: Path, dst: Path, dense: bool, work: Path, hours: float, machine: str, command: str = "", note: str = ""):
    from traffic_moe_hf.atomic import atomic_folder

    state = json.loads((src / "trainer_state.json").read_text())
    with atomic_folder(dst, carry=lambda name: False) as tmp:  # the earlier version replaced whole, when complete
        _write(src, tmp, dense, work, hours, machine, state, dst.name, command, note)
    size = sum(f.stat().st_size for f in dst.iterdir()) / 1e6
    print(f"shipped {src} -> {dst} ({size:.1f} MB, step {state['global_step']})")


def _write(src: Path, tmp: Path, dense: bool, work: Path, hours: float, machine: str, state: dict, short: str,
           command: str = "", note: str = ""):
    from transformers import BertForMaskedLM

    from safetensors import safe_open

    from traffic_moe_hf import TrafficMoeForMaskedLM, TrafficTokenizer
    from traffic_moe_hf.recipes.pretrain import attach_dense_pooler

    model = (BertForMaskedLM if dense else TrafficMoeForMaskedLM).from_pretrained(src)
    if dense:
        with safe_open(str(next(src.glob("model*.safetensors"))), framework="pt") as f:  # the header's names only
            if any(k.startswith("bert.pooler.") for k in f.keys()):
                attach_dense_pooler(model, src)  # the pooler its classifier reads, trained by the service term: kept
    model.save_pretrained(tmp)
    tokenizer = TrafficTokenizer.from_pretrained(src)
    (tokenizer.set_bert_inputs() if dense else tokenizer).save_pretrained(tmp)
    loss_plot(state["log_history"], tmp / "loss.png", f"{short}: pretraining loss")
    from traffic_moe_hf.recipes.common import parameter_summary

    counts = parameter_summary(model)
    total, active = counts["parameters_total"], counts["parameters_active"]
    if dense:
        arch = f"BERT encoder, {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, FFN {model.config.intermediate_size} (matched to the MoE's active parameters)"
    else:
        c = model.config
        arch = (f"Traffic-MoE encoder, {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_experts} experts "
                f"(FFN {c.moe_intermediate_size}) top-{c.num_experts_per_tok}")
    history = [h for h in state["log_history"] if "loss" in h]
    steps = state["global_step"]
    views = 2 if any("contrastive_loss" in h for h in state["log_history"]) else 1
    compute = (f"{steps} steps x 32 flows{' (+ 32 shaped views)' if views == 2 else ''} = {steps * 32:,} flows read "
               f"({steps * 32 * views * TOKENS_PER_FLOW / 1e6:.1f}M tokens{' with the views' if views == 2 else ''} at "
               f"the corpus' mean {TOKENS_PER_FLOW} tokens per flow); {hours:.2f} h on {machine}. "
               f"Loss {history[0]['loss']:.3f} (step {history[0]['step']}) -> {history[-1]['loss']:.3f} (step {history[-1]['step']}).")
    transfer_md = HERE / "results" / "transfer.md"
    transfer = transfer_md.read_text() if transfer_md.is_file() else "Not measured yet."
    transfer_plot = copy_transfer_plot(tmp)
    card = CARD.format(name=short, short=short, what="A dense BERT baseline" if dense else "A sparse Mixture-of-Experts traffic encoder",
                       objectives=objectives(state["log_history"]),
                       remote="" if dense else " (the folder carries its modeling code: `auto_map`)",
                       trc="" if dense else ", trust_remote_code=True", arch=arch, total=total / 1e6, active=active / 1e6,
                       corpus=corpus_table(work), compute=compute, transfer=transfer, transfer_plot=transfer_plot,
                       command=f"The pretraining command (WORK: the folder of make_corpus.py):\n\n    {command}" if command else "",
                       note=note)
    (tmp / "README.md").write_text(card)


def card_transfer(card: str) -> tuple[int, int]:
    """(start, end) of the transfer table in a card's text: after "## Transfer", the lines of transfer.md (its
    opening sentence, task titles, table rows, blank lines) up to the first other paragraph (the version note)."""
    start = card.index("## Transfer\n\n") + len("## Transfer\n\n")
    end = start
    for line in card[start:].splitlines(keepends=True):
        if line.strip() and not line.startswith(("|", "**", "Macro-F1 on each task")):
            break
        end += len(line)
    return start, end


TRANSFER_PLOT = "![transfer](transfer.png)"


def copy_transfer_plot(folder: Path) -> str:
    """results/transfer.png (transfer.py's picture of the table) copied into a checkpoint folder: the card's line
    that shows it, or "" where the table has not been drawn yet."""
    plot = HERE / "results" / "transfer.png"
    if not plot.is_file():
        return ""
    from traffic_moe_hf.atomic import atomic_path

    target, picture = folder / "transfer.png", plot.read_bytes()
    if not target.is_file() or target.read_bytes() != picture:
        with atomic_path(target) as tmp:
            tmp.write_bytes(picture)
    return TRANSFER_PLOT


def refresh_cards(out: Path, transfer: str) -> list[Path]:
    """Put the current transfer table and its picture into the shipped cards, nothing else changed (the weights,
    the run's loss curve and compute stay as shipped: a new machine has no run folder to ship from again)."""
    changed = []
    for card_path in sorted(out.glob("*/README.md")):
        card = card_path.read_text()
        if "## Transfer\n\n" not in card:
            continue
        start, end = card_transfer(card)
        rest = card[end:]
        if copy_transfer_plot(card_path.parent) and not rest.startswith(TRANSFER_PLOT):
            rest = TRANSFER_PLOT + "\n\n" + rest  # below the table, before the version note
        new = card[:start] + transfer.rstrip("\n") + "\n\n\n" + rest
        if new != card:
            from traffic_moe_hf.atomic import write_text

            write_text(card_path, new)
            changed.append(card_path)
    return changed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", type=Path)
    ap.add_argument("--dense", type=Path)
    ap.add_argument("--refresh-cards", action="store_true",
                    help="only put results/transfer.md into the shipped cards' transfer section (no --work needed)")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--hours-moe", type=float, default=0.0)
    ap.add_argument("--hours-dense", type=float, default=0.0)
    ap.add_argument("--machine", default="2-core CPU")
    ap.add_argument("--command-moe", default="", help="the pretraining command behind --moe, for its card")
    ap.add_argument("--command-dense", default="", help="the pretraining command behind --dense, for its card")
    ap.add_argument("--note", default="", help="a paragraph for both cards, after the transfer table")
    ap.add_argument("--out", type=Path, default=REPO / "checkpoints")
    a = ap.parse_args(argv)
    if a.refresh_cards:
        for path in refresh_cards(a.out, (HERE / "results" / "transfer.md").read_text()):
            print(f"transfer table refreshed: {path}")
        return 0
    if a.work is None:
        ap.error("--work is needed to ship a checkpoint (its corpus report goes into the card)")
    a.out.mkdir(exist_ok=True)
    if a.moe:
        ship(a.moe, a.out / "traffic-moe-mini", False, a.work, a.hours_moe, a.machine, a.command_moe, a.note)
    if a.dense:
        ship(a.dense, a.out / "bert-mini", True, a.work, a.hours_dense, a.machine, a.command_dense, a.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``traffic-moe finetune``: flow or packet classification with `Trainer`.

    traffic-moe finetune --data DIR --out CKPT [--from CKPT | --config NAME] [--shots K] [--dense]

From a pretrained checkpoint (``--from``) or from scratch (``--config``); ``--dense`` trains the BERT
baseline (from a dense pretrained checkpoint with ``--from``). Class weights against imbalance, early
stopping and best-checkpoint selection on validation macro-F1 with every distinct model input counted
once (identical flows share a split and can be most of a class there; ties, e.g. a saturated
validation set, go to the lower validation loss). With ``--shots K`` only K training
flows per class are used, and (as there is then no fair validation set) training runs for a fixed
number of steps and keeps the last model; from a pretrained checkpoint the classifier then starts
from a linear probe on the frozen encoder (LP-FT, ``--head-init``), which measured better at 5 and
10 flows per class on the real tasks (README).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..argtypes import HelpFormatter, at_least, non_negative, output_folder, positive, probability
from ..progress import honours_progress
from ..configuration_traffic_moe import PRESETS
from ..errors import TrafficMoeError
from ..options import keyword_arguments, option


#: ``finetune(adversarial=...)``'s keys and their defaults (``--adversarial``'s ``--adv-*`` options); ``attacks``
#: None: all of the shaping attacks. eps 0 is no embedding PGD (0.3, the earlier default, wrecked clean accuracy)
ADVERSARIAL = {"copies": 3, "eps": 0.0, "steps": 1, "weight": 0.5, "attacks": None}
#: ``finetune(self_train=...)``'s keys and their defaults (``--self-train-per-class`` / ``--self-train-threshold``)
SELF_TRAIN = {"per_class": 50, "threshold": 0.9}


def with_defaults(value: dict | None, defaults: dict, name: str) -> dict | None:
    """A dict option (``adversarial``, ``self_train``) completed with its ``defaults``; None stays None (off). An
    unknown key is an error that names the known ones."""
    if value is None:
        return None
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise TrafficMoeError(f"{name}: unknown key {unknown[0]!r}; expected some of {', '.join(defaults)}")
    return {**defaults, **value}


def add_parser(subparsers):
    p = subparsers.add_parser(
        "finetune", help="fine-tune a flow/packet classifier (Traffic-MoE or the dense BERT baseline)",
        description=__doc__, formatter_class=HelpFormatter,
    )
    # an option that is a FinetuneOptions field (below) takes its default and help from there: one place for both;
    # --adversarial, --self-train and their --adv-* / --self-train-* options make the fields' dicts (run()); their
    # defaults are ADVERSARIAL / SELF_TRAIN's, which the body also fills in for a library call's missing keys
    o = partial(option, FinetuneOptions)
    p.add_argument("--data", required=True, help="directory written by `traffic-moe prepare`")
    p.add_argument("--out", type=output_folder, required=True, help="output checkpoint folder (Hub layout)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from", dest="init_from", **o("init_from"))
    source.add_argument("--config", choices=sorted(PRESETS), **o("config"))
    p.add_argument("--dense", action="store_true", **o("dense"))
    p.add_argument("--match", choices=("active", "total"), **o("match"))
    p.add_argument("--shots", type=at_least(1), **o("shots"))
    p.add_argument("--distinct-shots", action="store_true", **o("distinct_shots"))
    p.add_argument("--epochs", type=positive, **o("epochs"))
    p.add_argument("--min-steps", type=at_least(0), **o("min_steps"))
    p.add_argument("--batch-size", type=at_least(1), **o("batch_size"))
    p.add_argument("--lr", type=positive, **o("lr"))
    p.add_argument("--patience", type=at_least(1), **o("patience"))
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false",  # the field use_class_weights
                   **o("use_class_weights",
                       help="plain cross-entropy (default: classes weighted by inverse frequency)"))
    p.add_argument("--head-init", choices=("auto", "random", "probe"), **o("head_init"))
    p.add_argument("--seed", type=int, **o("seed"))
    adv = p.add_argument_group("adversarial training (docs/robustness.md)")
    adv.add_argument("--adversarial", action="store_true",
                     help="shaping augmentation (--adv-copies shaped copies per training flow, the recipe of every "
                          "robustness figure in docs/results/robustness.md), optionally with embedding-space PGD (--adv-eps)")
    adv.add_argument("--adv-copies", type=at_least(0), default=ADVERSARIAL["copies"],
                     help="shaped copies per training flow (0: no augmentation)")
    adv.add_argument("--adv-attacks", default=ADVERSARIAL["attacks"],
                     help="comma list of the shaping attacks the copies draw from (default: all of "
                          "padding,split,chaff,normalize,headers); e.g. padding,headers,chaff when flow "
                          "assembly (--tcp-coalesce) already undoes splitting and re-segmentation")
    adv.add_argument("--adv-eps", type=non_negative, default=ADVERSARIAL["eps"],
                     help="embedding PGD radius, fraction of the mean byte-embedding norm (0: no PGD; 0.3, used "
                          "before, cut tls9's clean macro-F1 to 0.46 with the tiny preset)")
    adv.add_argument("--adv-steps", type=at_least(1), default=ADVERSARIAL["steps"], help="PGD ascent steps per batch")
    adv.add_argument("--adv-weight", type=non_negative, default=ADVERSARIAL["weight"], help="weight of the adversarial loss")
    st = p.add_argument_group("self-training (few-shot: --shots K)")
    st.add_argument("--self-train", action="store_true",
                    help="few-shot with the rest of the train split as unlabeled flows: a first model trained on the K "
                         "labeled flows per class labels the others, and the final model is trained on the K flows plus "
                         "its most confident labels (the true labels of those flows are never read)")
    st.add_argument("--self-train-per-class", type=at_least(1), default=SELF_TRAIN["per_class"],
                    help="pseudo-labeled flows per predicted class, most confident first, distinct inputs")
    st.add_argument("--self-train-threshold", type=probability, default=SELF_TRAIN["threshold"],
                    help="least confidence of a pseudo-label")
    p.add_argument("--keep-checkpoints", action="store_true", **o("keep_checkpoints"))
    p.add_argument("--no-progress", dest="progress", action="store_false", **o("progress", help="no progress bars"))
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    attacks = None
    if args.adv_attacks is not None:
        from ..shaping.augment import training_ranges

        attacks = [a.strip() for a in args.adv_attacks.split(",") if a.strip()]
        try:
            training_ranges(attacks)  # a clear error now, not after the data is loaded
        except ValueError as e:
            raise TrafficMoeError(f"--adv-attacks: {e}")
    result = finetune(
        data=args.data, out=args.out, init_from=args.init_from, config=args.config, dense=args.dense,
        match=args.match, shots=args.shots, distinct_shots=args.distinct_shots, epochs=args.epochs, min_steps=args.min_steps,
        batch_size=args.batch_size, lr=args.lr, patience=args.patience, use_class_weights=args.class_weights,
        seed=args.seed, progress=args.progress,
        adversarial=dict(copies=args.adv_copies, eps=args.adv_eps, steps=args.adv_steps, weight=args.adv_weight,
                         attacks=attacks)
        if args.adversarial else None, head_init=args.head_init, keep_checkpoints=args.keep_checkpoints,
        self_train=dict(per_class=args.self_train_per_class, threshold=args.self_train_threshold) if args.self_train else None,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns; rank 0's summary is the saved one
        print(json.dumps({k: v for k, v in result.items() if k != "log_history"}, indent=2))
    return 0


def dense_model_card(model, card: dict, path=".") -> str:
    """A README.md for the dense BERT baseline's folder, with the sections `evaluate --update-card` fills."""
    from ..hub import usage_snippet
    from .common import parameter_summary

    pipeline_tag, usage = usage_snippet(type(model).__name__, path, remote_code=False)

    config = model.config
    params = parameter_summary(model)
    labels = ", ".join(str(v) for v in config.id2label.values())
    return f"""---
library_name: transformers
tags:
- traffic-moe
- network-traffic
- traffic-classification
- dense-baseline
pipeline_tag: {pipeline_tag}
---

# Dense BERT baseline ({type(model).__name__}) of traffic-moe-hf

The dense (ET-BERT-like) baseline that traffic-moe-hf trains beside its sparse Mixture-of-Experts model,
on the same byte tokens (packet direction as the token type). transformers' `BertForSequenceClassification`;
the tokenizer saved beside it holds the input settings (load it with `trust_remote_code=True`, or
`import traffic_moe_hf`).

## Use

```python
{usage}
```

## Model

| | |
|---|---|
| parameters | {params.get("parameters_total", 0) / 1e6:.2f}M |
| hidden size / layers / heads / FFN | {config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads} / {config.intermediate_size} |
| labels | {labels} |

## Training data

{card["training_data"]}

## Evaluation

{card["evaluation"]}

## Limitations

A baseline for comparison. Headers are anonymised before the model sees them; check the shortcut audit of
your own evaluation before trusting a score.
"""


def weighted_loss(weights: torch.Tensor | None, config):
    """`Trainer(compute_loss_func=...)`: class-weighted cross-entropy, plus Traffic-MoE's router losses.
    Under gradient accumulation (`num_items_in_batch` given) both parts are scaled so that the summed
    micro-batch losses are averages, as in the model's own loss."""

    def compute(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        w = None if weights is None else weights.to(logits.device)
        per_item = F.cross_entropy(logits, labels, weight=w, reduction="none", ignore_index=-100)
        if w is not None:  # weighted mean: sum(w_i * l_i) / sum(w_i)
            norm = w[labels.clamp(min=0)] * (labels != -100)
            per_item = per_item / norm.sum().clamp(min=1e-8) * (labels != -100).sum()
        share = 1.0
        if num_items_in_batch is None:
            loss = per_item.mean()
        else:
            loss = per_item.sum() / num_items_in_batch
            share = labels.numel() / num_items_in_batch
        if getattr(outputs, "aux_loss", None) is not None:
            loss = loss + share * (config.router_aux_loss_coef * outputs.aux_loss + config.router_z_loss_coef * outputs.z_loss)
        return loss

    return compute


def probe_head(model, dataset, class_weight=None, c=1.0) -> dict:
    """Linear-probe initialisation of the classifier (the first stage of LP-FT, Kumar et al. 2022,
    "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution").

    The encoder is run once, frozen, over `dataset`; what reaches ``model.classifier`` (its input, so it
    works for Traffic-MoE and for BERT alike) is standardised and a multinomial logistic regression
    (scikit-learn, L2, ``C=c``) is fitted to the labels; its weights, with the standardisation folded
    in, become the classifier's. Fine-tuning then starts from a head that already separates the
    classes instead of a random one, which moves the pretrained features less.
    Returns the probe's training accuracy and the number of features."""
    from sklearn.linear_model import LogisticRegression

    from .evaluate import predict_logits

    was_training = model.training
    model.eval()
    try:
        _, x = predict_logits(model, dataset, inputs_of=model.classifier)
    finally:
        model.train(was_training)
    x = x.astype(np.float64)
    y = np.asarray(dataset["label"])
    mean, std = x.mean(0), x.std(0) + 1e-6
    classes = np.unique(y)
    if len(classes) < 2:
        return {"probe_train_accuracy": None, "features": int(x.shape[1])}
    weight = None if class_weight is None else {int(k): float(class_weight[k]) for k in classes}
    probe = LogisticRegression(C=c, max_iter=2000, class_weight=weight).fit((x - mean) / std, y)
    coef = probe.coef_ / std  # w . (x - mean) / std + b  ==  (w / std) . x + (b - (w / std) . mean)
    bias = probe.intercept_ - coef @ mean
    if len(classes) == 2:  # scikit-learn gives one row (the logit of classes[1]); softmax over [0, z] is the same
        coef, bias = np.stack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, bias[0]])
    with torch.no_grad():
        w, b = model.classifier.weight, model.classifier.bias
        rows = torch.as_tensor(classes, dtype=torch.long, device=w.device)
        w[rows] = torch.as_tensor(coef, dtype=w.dtype, device=w.device)
        b[rows] = torch.as_tensor(bias, dtype=b.dtype, device=b.device)
        missing = np.setdiff1d(np.arange(w.shape[0]), classes)
        if len(missing):  # a class without training samples: never the probe's choice
            b[torch.as_tensor(missing, device=b.device)] = float(bias.min()) - 10.0
    return {"probe_train_accuracy": float(probe.score((x - mean) / std, y)), "features": int(x.shape[1])}


def pseudo_label(teacher, pool, dense: bool, num_labels: int, per_class: int, threshold: float):
    """The pool's flows labeled by the ``teacher`` checkpoint: per predicted class the ``per_class`` most
    confident distinct model inputs with confidence ≥ ``threshold``. Returns (those rows with the teacher's
    labels in ``label``, a report: sizes, per class, and — for the record only — how many agree with the
    labels the pool carried)."""
    from .common import input_keys, model_view
    from .evaluate import load_classifier, predict_logits

    info = {"pool": len(pool), "per_class_limit": per_class, "threshold": threshold}
    if len(pool) == 0:
        return pool, {**info, "chosen": 0, "per_class": {}, "agreement_with_pool_labels": None}
    model = load_classifier(str(teacher))
    logits = predict_logits(model, model_view(pool, dense=dense))
    probabilities = torch.from_numpy(logits).softmax(-1).numpy()
    predicted, confidence = probabilities.argmax(-1), probabilities.max(-1)
    keys = input_keys(pool, with_label=False)
    chosen, per = [], {}
    for label in range(num_labels):
        seen = set()
        members = np.flatnonzero((predicted == label) & (confidence >= threshold))
        for i in members[np.argsort(-confidence[members], kind="stable")]:
            if keys[i] not in seen and len(seen) < per_class:
                seen.add(keys[i])
                chosen.append(int(i))
        if seen:
            per[model.config.id2label[label]] = len(seen)
    chosen.sort()
    rows = pool.select(chosen)
    labels = predicted[chosen].tolist()
    agreement = float(np.mean(np.asarray(rows["label"]) == np.asarray(labels))) if chosen else None
    rows = rows.remove_columns("label").add_column("label", labels).cast_column("label", pool.features["label"])
    return rows, {**info, "chosen": len(chosen), "per_class": per, "agreement_with_pool_labels": agreement}


@dataclass
class FinetuneOptions:
    """:func:`finetune`'s keyword arguments (same names and defaults), for ``HfArgumentParser`` or a saved run; also
    the defaults and help of ``traffic-moe finetune``'s options (:func:`add_parser`). A help text is an argparse
    string that names the command's flags and writes out no default (see :mod:`traffic_moe_hf.options`)."""

    init_from: str | None = field(default=None, metadata={"help": (
        "pretrained checkpoint to start from: a folder, or a shipped one by short name (traffic-moe-mini; "
        "bert-mini, the dense baseline); none: a new model of --config")})
    config: str = field(default="small", metadata={"help": "size preset when training from scratch"})
    dense: bool = field(default=False, metadata={"help": "train the dense BERT baseline"})
    match: str = field(default="active", metadata={"help": (
        "with --dense from scratch: match the MoE's active or total parameters")})
    shots: int | None = field(default=None, metadata={"help": "use only K training samples per class (few-shot)"})
    distinct_shots: bool = field(default=False, metadata={"help": (
        "with --shots: draw a class's K flows from K different model inputs where it has them (identical flows "
        "teach one example; loopback9's ftp: 365 training flows, 32 distinct inputs, one of them 200 times). "
        "Off: the plain random draw every table was measured with")})
    epochs: float = field(default=10.0, metadata={"help": (
        "passes over the training flows (early stopping may end sooner)")})
    min_steps: int = field(default=300, metadata={"help": (
        "few-shot: train at least this many steps (60 left tiny models far from fitting 10 flows per class)")})
    batch_size: int = field(default=32, metadata={"help": "flows per step"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    patience: int = field(default=5, metadata={"help": (
        "early stopping: evaluations (one an epoch, all-data runs only) without a better validation score; 3 ended"
        " a run on sv17 in a dip of its 137-flow validation set, three epochs before its best")})
    use_class_weights: bool = field(default=True, metadata={"help": (
        "classes weighted by inverse frequency (default); False: plain cross-entropy (--no-class-weights)")})
    seed: int = field(default=0, metadata={"help": "random seed (initialisation, order, few-shot flows)"})
    progress: bool = field(default=True, metadata={"help": "progress bars (False: none, as --no-progress)"})
    config_overrides: dict | None = field(default=None, metadata={"help": (
        "model configuration fields to override, e.g. {\"num_experts\": 4} (no command-line option)")})
    eval_split: str = field(default="validation", metadata={"help": (
        "the split that selects the best checkpoint and stops early (no command-line option)")})
    adversarial: dict | None = field(default=None, metadata={"help": (
        "shaping augmentation (--adversarial): {\"copies\", \"eps\", \"steps\", \"weight\", \"attacks\"}, as --adv-copies, "
        "--adv-eps, --adv-steps, --adv-weight, --adv-attacks; None: off")})
    head_init: str = field(default="auto", metadata={"help": (
        "probe: start the classifier from a linear probe fitted on the frozen pretrained encoder's features "
        "(LP-FT; needs --from); auto: probe for few-shot runs (--shots with --from), random otherwise")})
    keep_checkpoints: bool = field(default=False, metadata={"help": (
        "keep the Trainer's intermediate checkpoints (OUT/checkpoints, with optimizer state); by default they are"
        " removed once the selected model is saved, so OUT is the shareable model")})
    self_train: dict | None = field(default=None, metadata={"help": (
        "few-shot self-training (--self-train): {\"per_class\": M, \"threshold\": p}, as --self-train-per-class, "
        "--self-train-threshold; None: off")})


def finetune(data, out, options: FinetuneOptions | None = None, **overrides) -> dict:
    """Library entry point of ``traffic-moe finetune``; returns the run's summary. The options are the fields of
    :class:`FinetuneOptions`: keyword arguments (``finetune(data, out, epochs=3)``), a ``FinetuneOptions``, or
    both (the keywords override its fields; see :mod:`traffic_moe_hf.options`).

    ``self_train`` (few-shot only): ``{"per_class": M, "threshold": p}`` — a teacher fine-tuned on the
    ``shots`` flows per class (same recipe, saved under ``OUT/self-training-teacher``) labels the train split's
    other flows; the model in OUT is then fine-tuned from ``init_from`` again on the shots plus, per predicted
    class, the M most confident distinct inputs with confidence ≥ p. The pool's true labels are read only to
    report how many pseudo-labels were right (``summary["self_training"]``), never to train or select."""
    return _finetune(data, out, **keyword_arguments(FinetuneOptions, options, overrides, "finetune"))


@honours_progress
def _finetune(data, out, *, init_from, config, dense, match, shots, distinct_shots, epochs, min_steps, batch_size, lr, patience,
              use_class_weights, seed, progress, config_overrides, eval_split, adversarial, head_init,
              keep_checkpoints, self_train) -> dict:
    """:func:`finetune`'s body: its keyword-only parameters are :class:`FinetuneOptions`' fields (the defaults are
    there only; :func:`finetune` passes them all)."""
    from transformers import (
        BertForSequenceClassification,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ..modeling_traffic_moe import TrafficMoeForSequenceClassification
    from .common import (
        TrafficCollator,
        checkpoint_model_type,
        class_weights,
        from_pretrained_quietly,
        check_dense_positions,
        data_tokenizer,
        distinct_weights,
        dense_config,
        few_shot_indices,
        dense_positions,
        repeated_inputs,
        label_names,
        load_prepared,
        model_view,
        moe_config,
        parameter_summary,
        pretrained_folder,
        save_final_model,
        steps_for,
        trainer_metrics,
        warn_window,
    )

    if init_from:  # a shipped checkpoint's short name (traffic-moe-mini) or a folder
        init_from = pretrained_folder(init_from)
    if init_from:  # the checkpoint decides which model is fine-tuned (it used to fail deep inside loading)
        model_type = checkpoint_model_type(init_from)
        if model_type not in ("traffic_moe", "bert"):
            raise TrafficMoeError(f"--from {init_from}: a {model_type!r} checkpoint; expected Traffic-MoE or the dense BERT "
                             "baseline, as `traffic-moe pretrain` / `finetune` write them")
        if model_type == "bert" and not dense:  # a notice to the command's user, one line on stderr (errors.py)
            print(f"finetune: --from {init_from} is a dense BERT checkpoint: fine-tuning the dense baseline (as with "
                  "--dense)", file=sys.stderr)
            dense = True
        elif model_type == "traffic_moe" and dense:
            raise TrafficMoeError(f"--dense --from {init_from}: that is a Traffic-MoE checkpoint, not a dense BERT; drop "
                             "--dense to fine-tune it, or pretrain the dense baseline (`traffic-moe pretrain --dense`)")
    if head_init == "auto":  # LP-FT where it measured better: few-shot from a pretrained checkpoint (README)
        head_init = "probe" if shots is not None and init_from else "random"
    if head_init not in ("random", "probe"):
        raise TrafficMoeError(f"--head-init {head_init!r}: expected 'auto', 'random' or 'probe'")
    if head_init == "probe" and not init_from:
        raise TrafficMoeError("--head-init probe needs a pretrained checkpoint (--from): a random encoder has nothing to probe")
    adversarial = with_defaults(adversarial, ADVERSARIAL, "adversarial")
    self_train = with_defaults(self_train, SELF_TRAIN, "self_train")
    if distinct_shots and shots is None:
        raise TrafficMoeError("--distinct-shots is for few-shot runs: give --shots K")
    if self_train is not None and shots is None:
        raise TrafficMoeError("--self-train is for few-shot runs: give --shots K (the flows beyond K per class are its "
                         "unlabeled pool)")
    teacher_kwargs = dict(init_from=init_from, config=config, dense=dense, match=match, shots=shots,
                          distinct_shots=distinct_shots, epochs=epochs,
                          min_steps=min_steps, batch_size=batch_size, lr=lr, patience=patience,
                          use_class_weights=use_class_weights, seed=seed, progress=progress,
                          config_overrides=config_overrides, eval_split=eval_split, adversarial=adversarial,
                          head_init=head_init)
    set_seed(seed)
    prepared = load_prepared(data)
    if "train" not in prepared:
        raise TrafficMoeError(f"{data}: no train split (has {list(prepared)}); `prepare --split none` writes one test split, "
                         "for evaluating a trained model — prepare training data with --split flow|file|time")
    names = label_names(prepared["train"])
    if len(prepared["train"]) == 0:
        raise TrafficMoeError(f"{data}: the train split is empty")
    present = sorted({names[i] for i in set(prepared["train"]["label"])})
    if len(present) < 2:
        raise TrafficMoeError(
            f"{data}: a classifier needs at least two labels in the train split, found {present} — labels come "
            f"from `traffic-moe prepare --labels` (dir: each capture's folder name, file: its file name, csv:PATH: "
            f"a flow table)")
    if len(present) < len(names):  # a notice to the command's user (errors.py)
        print(f"finetune: {sorted(set(names) - set(present))} have no training flow; the model will never predict "
              f"them", file=sys.stderr)
    # few-shot runs have no fair validation set: fixed steps, last model
    use_validation = shots is None and eval_split in prepared and len(prepared[eval_split]) > 0
    if shots is None and not use_validation:  # a notice to the command's user (errors.py)
        print(f"finetune: {data} has no {eval_split!r} samples: training for the set epochs and keeping the last "
              f"model (no best-checkpoint selection, no early stopping)", file=sys.stderr)
    if shots is not None:  # the K flows per class first; shaped copies below are copies of exactly these
        counts = np.bincount(np.asarray(prepared["train"]["label"]), minlength=len(names))
        short = {names[i]: int(c) for i, c in enumerate(counts) if 0 < c < shots}
        if short:  # said, not silent: "--shots 50" on a class with 12 flows is a 12-shot run for that class
            print(f"finetune: --shots {shots}: fewer training flows than that, all of them used, for "
                  + ", ".join(f"{k} ({v})" for k, v in sorted(short.items())), file=sys.stderr)
        chosen = few_shot_indices(prepared["train"], shots, seed, distinct=distinct_shots)
        pool = None if self_train is None else prepared["train"].select(sorted(set(range(len(prepared["train"]))) - set(chosen)))
        prepared["train"] = prepared["train"].select(chosen)
        repeated = {names[k]: v for k, v in repeated_inputs(prepared["train"]).items()}
        if repeated:  # said, not silent: five copies of one flow teach one example, not five
            what = ("--distinct-shots: fewer distinct inputs than that, some drawn twice, for " if distinct_shots else
                    f"(seed {seed}) drew identical flows: fewer distinct examples for ")
            print(f"finetune: --shots {shots} {what}"
                  + ", ".join(f"{k} ({d} distinct of {n})" for k, (d, n) in sorted(repeated.items()))
                  + ("" if distinct_shots else "; --distinct-shots draws different ones where the class has them"),
                  file=sys.stderr)
        if self_train is not None:
            from datasets import concatenate_datasets

            teacher_out = Path(out) / "self-training-teacher"
            teacher = finetune(data, teacher_out, **teacher_kwargs)
            set_seed(seed)  # the student starts as the teacher did
            pseudo, self_train_info = pseudo_label(teacher_out, pool, dense, len(names), **self_train)
            self_train_info["teacher"] = {k: teacher[k] for k in ("train_samples", "steps", "head_init")}
            prepared["train"] = concatenate_datasets([prepared["train"], pseudo])
    if adversarial is not None and adversarial["copies"] > 0:  # shaping augmentation (robustness/)
        from ..shaping.augment import augment_split, training_ranges

        budgets = training_ranges(adversarial["attacks"])
        prepared["train"] = augment_split(prepared["train"], data, seed=seed, copies=adversarial["copies"],
                                          budgets=budgets)
        if use_validation:
            # selected on what it is trained for: clean validation flows + shaped copies of them (other seed)
            prepared[eval_split] = augment_split(prepared[eval_split], data, seed=seed + 10_000,
                                                 copies=adversarial["copies"], budgets=budgets)
    train = model_view(prepared["train"], dense=dense)
    if len(train) == 0:
        raise TrafficMoeError(f"{data}: the train split is empty")
    validation = model_view(prepared[eval_split], dense=dense) if use_validation else None
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})

    tokenizer = data_tokenizer(data, init_from)
    if dense:
        if init_from:
            model = from_pretrained_quietly(BertForSequenceClassification, init_from, **labels)
            check_dense_positions(model, tokenizer, init_from)
        else:
            model = BertForSequenceClassification(dense_config(moe_config(config, **(config_overrides or {})), match=match,
                                                               max_length=dense_positions(tokenizer), **labels))
    elif init_from:
        model = from_pretrained_quietly(TrafficMoeForSequenceClassification, init_from, **labels)
        warn_window(model.config, tokenizer, init_from)
    else:
        model = TrafficMoeForSequenceClassification(moe_config(config, tokenizer, **labels, **(config_overrides or {})))
    if not dense:
        model.config.output_router_logits = True  # router losses join the loss computed below
    weights = class_weights(train, len(names)) if use_class_weights else None
    probe = probe_head(model, train, None if weights is None else weights.numpy()) if head_init == "probe" else None

    out = Path(out)
    steps_per_epoch = max(1, -(-len(train) // batch_size))
    max_steps = steps_for(len(train), batch_size, epochs, min_steps=min_steps if shots is not None else 0)
    evaluate_each = steps_per_epoch
    training_args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        warmup_steps=0.06,
        weight_decay=0.01,
        logging_steps=max(1, min(10, evaluate_each)),
        eval_strategy="steps" if validation is not None else "no",
        eval_steps=evaluate_each,
        save_strategy="steps" if validation is not None else "no",
        save_steps=evaluate_each,
        save_total_limit=2,
        load_best_model_at_end=validation is not None,
        metric_for_best_model="selection",  # macro-F1, ties broken by validation loss (common.selection_score)
        greater_is_better=True,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # lets torchrun start CPU (gloo) DDP without extra settings
        seed=seed,
        data_seed=seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    callbacks = [EarlyStoppingCallback(early_stopping_patience=patience)] if validation is not None else []
    trainer_cls = Trainer
    if adversarial is not None and adversarial["eps"] > 0:  # embedding-space PGD (robustness/)
        from .adversarial import adversarial_trainer

        trainer_cls = adversarial_trainer(Trainer, eps=adversarial["eps"], steps=adversarial["steps"],
                                          weight=adversarial["weight"])
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=TrafficCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=trainer_metrics(names, None if validation is None else distinct_weights(prepared[eval_split])),
        compute_loss_func=weighted_loss(weights, model.config),
        callbacks=callbacks,
    )
    trainer.train()
    if not dense:
        model.config.output_router_logits = False
    best = best_distinct = None  # macro-F1 of the selected checkpoint (best_metric is the selection score)
    if trainer.state.best_metric is not None:
        evals = [e for e in trainer.state.log_history if "eval_selection" in e]
        chosen = next((e for e in evals if e["eval_selection"] == trainer.state.best_metric), None)
        best = chosen["eval_macro_f1"] if chosen else max((e["eval_macro_f1"] for e in evals), default=None)
        best_distinct = chosen.get("eval_macro_f1_distinct") if chosen else None
    card = {
        "training_data": f"{len(train)} flows of {data} (train split"
        + (f", {shots} per class" if shots is not None else "")
        + (f" + {self_train_info['chosen']} self-training pseudo-labels from the rest of it" if self_train is not None else "")
        + f"); classes: {', '.join(names)}"
        + (f"; initialised from {init_from}" if init_from else "; trained from scratch"),
        "evaluation": f"best validation macro-F1 {best:.4f}" if best is not None else "no validation split used",
    }
    # how flows were assembled for training; `traffic-moe predict` assembles new captures' flows the same way
    from ..data.prepared import dataset_level, dataset_options

    from ..data.samples import tunnels_record

    options = dataset_options(data)
    trainer.model.config.traffic_flow_options = {
        **{k: options[k] for k in ("normalize_tcp", "coalesce_tcp", "ttl")}, "level": dataset_level(data),
        "anonymize": options["anonymized"], **tunnels_record(data)}
    from ..atomic import atomic_checkpoint

    # saved beside OUT and moved in complete: a failed save leaves an earlier model in OUT as it was
    with atomic_checkpoint(out, trainer.is_world_process_zero(), trainer.accelerator.wait_for_everyone) as saving:
        save_final_model(trainer, trainer.model, saving, **({} if dense else {"card_data": card}))
        (tokenizer.set_bert_inputs() if dense else tokenizer).save_pretrained(saving)
        if dense and trainer.is_world_process_zero():  # transformers' BERT writes no card: the baseline gets one too
            (saving / "README.md").write_text(dense_model_card(trainer.model, card, out))
    summary = {
        "out": str(out),
        "model": type(trainer.model).__name__,
        **parameter_summary(trainer.model),
        "train_samples": len(train),
        "validation_samples": 0 if validation is None else len(validation),
        "shots": shots,
        **({"distinct_shots": True} if distinct_shots else {}),
        **({"shots_distinct": {k: d for k, (d, _) in sorted(repeated.items())}} if shots is not None else {}),
        "adversarial": adversarial,
        "head_init": head_init,
        **({"probe": probe} if probe else {}),
        **({"self_training": self_train_info} if self_train is not None else {}),
        "steps": trainer.state.global_step,
        "best_validation_macro_f1": best,
        "best_validation_macro_f1_distinct": best_distinct,
        # the step whose weights OUT holds (its checkpoint folder is removed below unless --keep-checkpoints)
        "best_checkpoint": trainer.state.best_model_checkpoint if keep_checkpoints else None,
        "best_step": int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1]) if trainer.state.best_model_checkpoint else None,
        "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
        "log_history": trainer.state.log_history,
    }
    # OUT is the model to share (`upload_folder`, `from_pretrained`); the Trainer's checkpoints beside it held
    # two more copies of the weights plus optimizer state (3-4x the model's size) and are of no use once the
    # selected model is saved (fine-tuning has no --resume)
    summary["checkpoints_kept"] = bool(keep_checkpoints)
    if not keep_checkpoints and trainer.is_world_process_zero():
        import shutil

        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / "self-training-teacher", ignore_errors=True)  # its summary is in this run's
    (out / "finetune_summary.json").write_text(json.dumps(summary, indent=2))
    return summary

"""What the recipes share: the tokenizer of prepared datasets, model builders (Traffic-MoE and the dense BERT
baseline), the batch collator, metrics, few-shot subsampling, Trainer arguments."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..configuration_traffic_moe import TrafficMoeConfig
from ..data.prepared import MODEL_COLUMNS, load_prepared  # noqa: F401  (load_prepared: its old import path)
from ..hub import count_parameters
from ..modeling_traffic_moe import TrafficMoeForMaskedLM
from ..tokenization_traffic_moe import TrafficTokenizer
from ..errors import TrafficMoeError


# ------------------------------------------------------------------------------------------ data
def data_tokenizer(paths, checkpoint: str | os.PathLike | None = None) -> TrafficTokenizer:
    """The tokenizer the prepared dataset(s) at ``paths`` were tokenized with (their report.json), so
    a saved checkpoint tokenizes new traffic (``predict``) exactly as its training data was. All
    datasets, and ``checkpoint``'s tokenizer when it has one, must agree; a clear error otherwise."""
    from ..data.prepared import dataset_options
    from ..data.samples import tokenizer_settings

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    settings = {str(path): tokenizer_settings(dataset_options(path)) for path in paths}
    if checkpoint is not None and (Path(checkpoint) / "tokenizer_config.json").is_file():
        saved = TrafficTokenizer.from_pretrained(checkpoint)  # read as `predict` will read it
        settings[f"{checkpoint} (checkpoint)"] = {"max_packets": saved.max_packets, "max_packet_bytes": saved.max_packet_bytes,
                                                  "header_layout": saved.header_layout, "capture_bytes": saved.capture_bytes}
    distinct = {json.dumps(v, sort_keys=True) for v in settings.values()}
    if len(distinct) > 1:
        lines = "\n".join(f"  {where}: {v}" for where, v in settings.items())
        raise TrafficMoeError("these inputs were tokenized differently (prepare the data again with the same "
                         f"--max-packets/--max-bytes/--packet-bytes/--header-layout):\n{lines}")
    return TrafficTokenizer(**next(iter(settings.values())))


def label_names(dataset) -> list[str]:
    feature = dataset.features["label"]
    if not hasattr(feature, "names"):
        raise TrafficMoeError("the dataset's `label` column is not a ClassLabel; prepare it with labels")
    return list(feature.names)


def model_view(dataset, dense: bool = False, extra=()):
    """Only the columns the model consumes (+ label, + ``extra``). The dense BERT baseline gets the
    packet direction as its token type (ET-BERT-like segment embedding) and no packet index."""
    keep = [*MODEL_COLUMNS, "label", *extra]
    view = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
    if dense:
        view = view.remove_columns([c for c in view.column_names if c.endswith("packet_ids")])
        view = view.rename_column("direction_ids", "token_type_ids")
    return view


def few_shot(dataset, shots: int, seed: int, distinct: bool = False):
    """`shots` samples per class (all of a class when it has fewer), chosen at random with `seed`."""
    return dataset.select(few_shot_indices(dataset, shots, seed, distinct))


def few_shot_indices(dataset, shots: int, seed: int, distinct: bool = False) -> list[int]:
    """The rows :func:`few_shot` selects, in order. ``distinct``: each class's rows from as many different model
    inputs as it has, up to `shots` (a random input, then a random row of it); a class with fewer distinct inputs
    than `shots` is filled up with random other rows of it. Off, the draw is the one every table was measured with
    (seeds keep their draws)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset["label"])
    keys = input_keys(dataset) if distinct else None
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if not distinct:
            chosen.extend(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
            continue
        by_input = {}  # the class's rows per distinct input, inputs in order of first row
        for m in members:
            by_input.setdefault(keys[m], []).append(int(m))
        groups = list(by_input.values())
        picked = [int(rng.choice(groups[g])) for g in rng.permutation(len(groups))[:shots]]
        if len(picked) < shots:
            rest = np.setdiff1d(members, picked)
            picked += rng.choice(rest, size=min(shots - len(picked), len(rest)), replace=False).tolist()
        chosen.extend(picked)
    return sorted(chosen)


def balanced_subset(dataset, size: int, seed: int):
    """At most ``size`` samples covering the classes as evenly as they allow (round robin over the classes,
    random within each, ``seed``); a split is stored sorted by label, so its first N rows were one class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset["label"])
    queues = [list(rng.permutation(np.flatnonzero(labels == label))) for label in np.unique(labels)]
    chosen = []
    while len(chosen) < min(size, len(labels)):
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.append(int(queue.pop()))
    return dataset.select(sorted(chosen))


def save_final_model(trainer, model, out, **kwargs) -> None:
    """The trained model into OUT as a Hub folder (``kwargs``: ``save_pretrained``'s, e.g. ``card_data``).
    Under FSDP every rank holds a shard of the parameters, so ``model.save_pretrained`` would write a
    part: the Trainer gathers the full state dict (accelerate's ``FULL_STATE_DICT``; a sharded one loads
    only into FSDP again) and rank 0 then writes the folder once more through the model class's own
    ``save_pretrained`` (card, ``auto_map``, remote code). The FSDP branch has not been run (no multi-GPU
    machine here, and accelerate turns FSDP on only for accelerator devices: on CPU its settings give plain DDP);
    DDP and one process take the plain path, which the tests run."""
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(out))
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():  # FSDP2 subclasses the module's class: find the model's own
            cls = next(c for c in type(trainer.accelerator.unwrap_model(model)).__mro__
                       if c.__module__.startswith(("traffic_moe_hf", "transformers.models")))
            cls.from_pretrained(out).save_pretrained(out, **kwargs)
        return
    model.save_pretrained(out, **kwargs)


def class_weights(dataset, num_labels: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    counts = np.bincount(np.asarray(dataset["label"]), minlength=num_labels).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class TrafficCollator:
    """Pads the model columns with the tokenizer's padding rules and renames `label` -> `labels`."""

    def __init__(self, tokenizer: TrafficTokenizer, pad_to_multiple_of: int | None = 8):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        features = [dict(f) for f in features]
        types = [f.pop("token_type_ids") for f in features] if "token_type_ids" in features[0] else None
        if types is not None:  # BERT view: pad token types like direction ids
            for f, t in zip(features, types):
                f["direction_ids"] = t
        batch = self.tokenizer.pad(features, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        batch = dict(batch)
        if types is not None:
            batch["token_type_ids"] = batch.pop("direction_ids")
        if "label" in batch:
            batch["labels"] = batch.pop("label")
        return batch


# ----------------------------------------------------------------------------------------- models
def moe_config(name: str, tokenizer: TrafficTokenizer | None = None, **overrides) -> TrafficMoeConfig:
    """A preset's config; with ``tokenizer``, its packet-index and byte-offset embeddings sized to hold the
    data's window (a 40-packet or 300-token window would otherwise share the last index / offset)."""
    config = TrafficMoeConfig.from_preset(name, **overrides)
    if tokenizer is not None:
        config.max_packets = max(config.max_packets, tokenizer.max_packets)
        config.max_position_embeddings = max(config.max_position_embeddings, tokenizer.max_packet_bytes + 1)
    return config


def warn_window(config, tokenizer: TrafficTokenizer, where) -> bool:
    """Said on stderr when a checkpoint embeds fewer packet indices or byte offsets than the data's flows
    take: later packets share the last packet index, later bytes the last offset (the model still runs)."""
    short = []
    if tokenizer.max_packets > config.max_packets:
        short.append(f"{tokenizer.max_packets} packets per flow, {config.max_packets} packet indices embedded")
    if tokenizer.max_packet_bytes + 1 > config.max_position_embeddings:
        short.append(f"{tokenizer.max_packet_bytes} tokens per packet, {config.max_position_embeddings - 1} byte "
                     "offsets embedded")
    if short:  # a caveat, not an error: a notice to the command's user (errors.py)
        print(f"{where}: the data's window is larger than the model's ({'; '.join(short)}): the excess shares the "
              "last index, so the model cannot tell those positions apart; prepare a smaller window or train a "
              "model for this one", file=sys.stderr)
    return bool(short)


def dense_positions(tokenizer: TrafficTokenizer, multiple: int = 8) -> int:
    """Position embeddings the dense BERT baseline needs for ``tokenizer``'s longest flow once the
    collator pads it to a multiple of ``multiple`` (at least BERT's usual 1024, so the baseline of the
    default 8 x 64 window keeps its size; 16 x 64 flows are 1041 tokens, padded 1048)."""
    return max(1024, -(-tokenizer.model_max_length // multiple) * multiple)


def check_dense_positions(model, tokenizer: TrafficTokenizer, where) -> None:
    """A clear error when a dense checkpoint has fewer positions than the data's flows can take."""
    have, need = model.config.max_position_embeddings, dense_positions(tokenizer)
    if have < need:
        raise TrafficMoeError(f"{where}: this dense BERT has {have} position embeddings but the data's flows take up to "
                         f"{need} tokens ({tokenizer.max_packets} packets x {tokenizer.max_packet_bytes} tokens, padded); "
                         "pretrain the dense baseline on data prepared with this window, or prepare fewer packets/bytes")


def dense_config(moe: TrafficMoeConfig, match: str = "active", max_length: int = 1024, **overrides):
    """A `BertConfig` with Traffic-MoE's width/depth/heads whose FFN width makes its parameter count
    equal the MoE's *active* (per-token) or *total* parameters. ET-BERT is a BERT of this kind."""
    from transformers import BertConfig

    with torch.device("meta"):  # counting only: no memory for a large preset
        total, active = count_parameters(TrafficMoeForMaskedLM(moe).model)
    target = active if match == "active" else total

    def bert(intermediate):
        return BertConfig(
            vocab_size=moe.vocab_size,
            hidden_size=moe.hidden_size,
            num_hidden_layers=moe.num_hidden_layers,
            num_attention_heads=moe.num_attention_heads,
            intermediate_size=int(intermediate),
            max_position_embeddings=max_length,
            type_vocab_size=moe.num_directions,
            hidden_dropout_prob=moe.hidden_dropout_prob,
            attention_probs_dropout_prob=moe.attention_dropout,
            pad_token_id=moe.pad_token_id,
            **overrides,
        )

    from transformers import BertModel

    with torch.device("meta"):
        base = sum(p.numel() for p in BertModel(bert(1), add_pooling_layer=False).parameters())
    # each unit of intermediate size costs 2 * hidden + 1 parameters per layer
    per_unit = moe.num_hidden_layers * (2 * moe.hidden_size + 1)
    intermediate = max(1, round((target - base) / per_unit) + 1)
    return bert(intermediate)


#: weights a classifier adds to a pretrained encoder (MoE head, BERT head and pooler): missing when starting
#: from a pretraining checkpoint, as expected
NEW_HEAD_PREFIXES = ("classifier.", "pooler.", "bert.pooler.")


def from_pretrained_quietly(cls, path, **kwargs):
    """``cls.from_pretrained(path)`` for fine-tuning: instead of transformers' load report (a table of
    UNEXPECTED / MISSING keys that reads like an error when a masked-LM checkpoint gets a new
    classification head, as it always does here), one line saying what was new and what was left out —
    and a warning when weights of the encoder itself were missing (not a checkpoint of this model).

    From a fine-tuned classifier whose labels differ from ``kwargs["id2label"]`` (fine-tuning a shared
    classifier on one's own labels), the classifier rows of labels both know are carried over by name
    and the others start at random, whatever the two label counts."""
    from transformers.utils import logging as hf_logging

    from ..safe_loading import require_safetensors

    # pickled weights are refused unread: safe_loading's UnsafeWeightsError (a TrafficMoeError) names the file
    require_safetensors(path)
    old_names = _classifier_labels(path)
    new_names = [kwargs["id2label"][i] for i in range(len(kwargs["id2label"]))] if "id2label" in kwargs else None
    relabel = old_names is not None and new_names is not None and old_names != new_names
    if relabel:
        kwargs["ignore_mismatched_sizes"] = True
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, use_safetensors=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    encoder_missing = [k for k in missing if not k.startswith(NEW_HEAD_PREFIXES)]
    mismatched = [k for k in (info.get("mismatched_keys") or ()) if not str(k[0] if isinstance(k, tuple) else k).startswith(NEW_HEAD_PREFIXES)]
    print(f"loaded {path}: new {', '.join(missing) or 'nothing'}; left out {', '.join(unexpected) or 'nothing'}",
          flush=True)
    if relabel:
        carried = _carry_classifier_rows(model, path, old_names, new_names)
        print(f"classifier of {path} had other labels: {len(carried)} of {len(new_names)} carried over by name"
              f"{' (' + ', '.join(carried[:10]) + (' ...' if len(carried) > 10 else '') + ')' if carried else ''}, "
              f"the others start at random", flush=True)
    if encoder_missing or mismatched:
        print(f"WARNING {path}: {len(encoder_missing)} encoder weight(s) missing (e.g. {encoder_missing[:3]}) and "
              f"{len(mismatched)} of another shape were initialised at random: is this a "
              "checkpoint of this model?", flush=True)
    model.loading_info = {"missing": missing, "unexpected": unexpected, "encoder_missing": encoder_missing}
    return model


def is_classifier(architectures) -> bool:
    """Whether a checkpoint's ``architectures`` (config) name a sequence classifier, i.e. a trained head."""
    return any(a.endswith("ForSequenceClassification") for a in architectures or ())


def _classifier_labels(path) -> list[str] | None:
    """The label names of a fine-tuned classifier checkpoint; None for any other checkpoint."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not is_classifier(config.get("architectures")):
        return None
    id2label = config.get("id2label") or {}
    return [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]


def _carry_classifier_rows(model, path, old_names, new_names) -> list[str]:
    """Copy the checkpoint's classifier rows to the rows of the same label names; re-initialise the rest."""
    import torch

    weights = _checkpoint_tensors(path, ("classifier.weight", "classifier.bias"))
    head = model.classifier
    std = getattr(model.config, "initializer_range", 0.02)
    carried = []
    with torch.no_grad():
        head.weight.normal_(0.0, std)
        if head.bias is not None:
            head.bias.zero_()
        old_index = {n: i for i, n in enumerate(old_names)}
        for j, name in enumerate(new_names):
            i = old_index.get(name)
            if i is None or "classifier.weight" not in weights or weights["classifier.weight"].shape[1] != head.weight.shape[1]:
                continue
            head.weight[j] = weights["classifier.weight"][i]
            if head.bias is not None and "classifier.bias" in weights:
                head.bias[j] = weights["classifier.bias"][i]
            carried.append(name)
    return carried


def _checkpoint_tensors(path, names) -> dict:
    """Named tensors of a saved checkpoint (safetensors, one file or an indexed set of shards)."""
    from safetensors import safe_open

    path = Path(path)
    files = {}
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        for n in names:
            if n in weight_map:
                files.setdefault(path / weight_map[n], []).append(n)
    elif (path / "model.safetensors").is_file():
        files[path / "model.safetensors"] = list(names)
    out = {}
    for f, wanted in files.items():
        with safe_open(str(f), framework="pt") as st:
            for n in wanted:
                if n in st.keys():
                    out[n] = st.get_tensor(n)
    return out


def parameter_summary(model) -> dict:
    if hasattr(model, "config") and getattr(model.config, "model_type", "") == "traffic_moe":
        total, active = count_parameters(model)
    else:
        total = active = sum(p.numel() for p in model.parameters())
    return {"parameters_total": total, "parameters_active": active}


def pretrained_folder(init_from: str | os.PathLike) -> str:
    """``--from``: a checkpoint folder or a shipped checkpoint's short name (``traffic-moe-mini``) -> the folder,
    or a ``TrafficMoeError`` saying why not (before transformers would try the Hub with it)."""
    from ..checkpoints import resolve_checkpoint
    from ..errors import TrafficMoeError

    try:
        path = resolve_checkpoint(init_from)
    except FileNotFoundError as e:
        raise TrafficMoeError(f"--from {e}") from None
    if not (Path(path) / "config.json").is_file():
        raise TrafficMoeError(f"--from {path}: not a checkpoint folder (no config.json); expected what "
                              "`traffic-moe pretrain` or `traffic-moe finetune` writes")
    return path


def checkpoint_model_type(path: str | os.PathLike) -> str | None:
    """The ``model_type`` of a checkpoint folder's config.json ("traffic_moe", "bert", ...)."""
    return json.loads((Path(path) / "config.json").read_text()).get("model_type")


# ---------------------------------------------------------------------------------------- metrics
def macro_f1(labels, predictions, sample_weight=None) -> float:
    """Macro-F1 over the classes present in `labels` (optionally with per-sample weights)."""
    from sklearn.metrics import f1_score

    present = sorted(set(np.asarray(labels).tolist()))
    return float(f1_score(labels, predictions, labels=present, average="macro", sample_weight=sample_weight,
                          zero_division=0))


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, names: list[str]) -> dict:
    """Accuracy, macro-F1 over the classes present in `labels`, per-class precision/recall/F1/support,
    confusion matrix. Computed locally with scikit-learn: `evaluate.load("accuracy")` fetches its metric
    script from the Hub, which users' (and our CI's) machines often cannot reach."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=list(range(len(names))), zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": macro_f1(labels, predictions),
        "samples": int(len(labels)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=list(range(len(names)))).tolist(),
        "labels": names,
    }


def selection_score(macro_f1: float, logits, labels) -> float:
    """Best-checkpoint score: validation macro-F1 (4 decimals), ties broken by the lower mean
    cross-entropy. Small validation sets saturate (macro-F1 1.0 after one epoch); a strict comparison
    then keeps the *first* saturated checkpoint, and early stopping ends training three evaluations
    later, however far the model still is from fitting. The loss term (< 1e-4) never outweighs a
    macro-F1 difference that shows in four decimals."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    nll = float(torch.nn.functional.cross_entropy(logits, labels)) if len(labels) else 0.0
    return round(float(macro_f1), 4) - 1e-6 * min(nll, 99.0)


def distinct_weights(dataset) -> np.ndarray:
    """Per sample 1 / (number of samples in `dataset` with the same model input and label).

    Flows with identical model input share a split (``prepare --dedup group``), and one such group can
    be most of a class: attack10's validation split holds 865 dos-httpflood flows of which 800 are one
    and the same input. Counted per sample, that class's F1 then hangs on one decision and
    best-checkpoint selection follows it (a pretrained model stopped after its first epoch, 0.98 on
    test, where the same model trained on scored 1.0). Weighted with these, every distinct input
    counts once."""
    _, inverse, counts = np.unique(input_keys(dataset), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def input_keys(dataset, with_label: bool = True) -> np.ndarray:
    """One key per sample (an object array of bytes): equal for samples with the same model input — token and
    direction ids, keyed as ``prepare`` keys them for ``--dedup`` (:func:`~traffic_moe_hf.data.samples.input_key`)
    — and, with `with_label`, the same label."""
    from ..data.samples import input_key

    n = len(dataset)
    directions = dataset["direction_ids"] if "direction_ids" in dataset.column_names else [()] * n
    labels = dataset["label"] if with_label else [None] * n
    keys = np.empty(n, dtype=object)
    for i, (ids, dirs, label) in enumerate(zip(dataset["input_ids"], directions, labels)):
        tail = b"" if label is None else int(label).to_bytes(8, "little", signed=True)
        keys[i] = input_key(np.asarray(ids, dtype=np.int32).tobytes(), bytes(dirs)) + tail
    return keys


def repeated_inputs(dataset) -> dict[int, tuple[int, int]]:
    """Per label whose samples repeat a model input: (distinct inputs, samples). A few-shot draw from a
    class made mostly of one group of identical flows (loopback9's ``ftp``: 365 training flows, 32
    distinct inputs, one of them 200 times) can hold fewer distinct examples than ``--shots`` says."""
    keys, labels = input_keys(dataset), np.asarray(dataset["label"])
    counts = {}
    for label in np.unique(labels):
        members = keys[labels == label]
        counts[int(label)] = (len(np.unique(members)), len(members))
    return {label: (distinct, n) for label, (distinct, n) in counts.items() if distinct < n}


def trainer_metrics(names: list[str], sample_weights: np.ndarray | None = None):
    """`compute_metrics` for `Trainer`: accuracy, macro-F1 and ``selection`` (what best-checkpoint
    selection and early stopping use, see :func:`selection_score`). With `sample_weights` (e.g.
    :func:`distinct_weights` of the evaluation set, in its order) also ``macro_f1_distinct``, the
    macro-F1 with each sample weighted, and ``selection`` is computed from that."""
    def compute(eval_prediction):
        logits = eval_prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        labels, predictions = eval_prediction.label_ids, logits.argmax(-1)
        metrics = classification_metrics(labels, predictions, names)
        out = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
        chosen = metrics["macro_f1"]
        if sample_weights is not None and len(sample_weights) == len(labels):
            chosen = out["macro_f1_distinct"] = macro_f1(labels, predictions, sample_weights)
        out["selection"] = selection_score(chosen, logits, labels)
        return out

    return compute


def steps_for(num_samples: int, batch_size: int, epochs: float, min_steps: int = 0) -> int:
    return max(min_steps, math.ceil(num_samples / batch_size * epochs))


def device_summary() -> str:
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"

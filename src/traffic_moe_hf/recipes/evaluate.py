"""``traffic-moe evaluate``: metrics, plots and a shortcut audit for a classifier on a prepared split.

    traffic-moe evaluate --data DIR --model CKPT [--split test] --json OUT [--plots DIR]
    traffic-moe evaluate --data DIR --model CKPT1 --model CKPT2 ... --json OUT     (an ensemble, as predict's)
    traffic-moe evaluate --data DIR --model CKPT --json OUT --ood OTHER_DIR      (+ the open-set check)

Writes accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix to OUT; a confusion
matrix PNG and (Traffic-MoE) an expert-load-per-layer PNG beside it. The *shortcut audit* trains a
random forest on the train split's header fields that anonymisation hides from the model (addresses,
ports, and where the dataset keeps them TTL, IP ID and checksums) and reports its score on the same
split, so a reader sees what a shortcut alone would score. Labels are matched by name, so a model can
be evaluated on captures prepared separately (``prepare --split none``). With ``--ood`` (traffic of
other sources, prepared alike) it also measures whether the model's confidence tells that traffic from
its own classes, and which ``predict --reject-below`` threshold keeps 99 / 95 / 90 % of its own flows.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..argtypes import HelpFormatter, at_least, output_file, output_folder
from ..errors import TrafficMoeError
from ..progress import honours_progress


def add_parser(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="accuracy, macro-F1, per-class scores, confusion matrix and expert-load plots",
        description=__doc__, formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, help="directory written by `traffic-moe prepare`")
    p.add_argument("--model", required=True, action="append",
                   help="fine-tuned checkpoint folder; repeat it to score an ensemble (class probabilities averaged, "
                        "as `predict --model A --model B` classifies)")
    p.add_argument("--split", default="test", help="split to score")
    p.add_argument("--json", required=True, dest="json_out", type=output_file, help="where to write the metrics (JSON)")
    p.add_argument("--plots", default=None, type=output_folder, help="folder for the PNGs (default: beside --json)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="flows per forward pass")
    p.add_argument("--ood", action="append", default=None, metavar="DIR",
                   help="a dataset prepared from traffic of other sources (same --packet-bytes etc.); repeatable: "
                        "reports how well the top class probability tells it from the evaluated split (ROC AUC), the "
                        "thresholds that keep 99/95/90%% of the evaluated flows, what each rejects (for predict "
                        "--reject-below), and a histogram PNG; samples whose label the model knows are left out")
    p.add_argument("--ood-exclude", action="append", default=[], metavar="LABEL",
                   help="a label of the --ood data to leave out as well (the same traffic as one of the model's "
                        "classes under another name, e.g. https for a model's https-nginx); repeatable")
    p.add_argument("--no-audit", dest="audit", action="store_false", help="skip the shortcut audit")
    p.add_argument("--update-card", action="store_true",
                   help="add these results to the model folder's README.md (its Evaluation section)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if len(args.model) > 1 and args.update_card:
        raise TrafficMoeError("evaluate: --update-card writes one model's card; give one --model")
    args.model = args.model[0] if len(args.model) == 1 else args.model
    result = evaluate(args.data, args.model, split=args.split, json_out=args.json_out, plots=args.plots,
                      batch_size=args.batch_size, audit=args.audit, progress=args.progress, ood=args.ood,
                      ood_exclude=args.ood_exclude)
    print(format_result(result))
    if args.update_card:
        card = add_to_model_card(args.model, result)
        print(f"model card updated: {card}" if card else f"{args.model}: no README.md model card, nothing updated")
    return 0


def load_classifier(path):
    """A fine-tuned checkpoint's classifier. A folder that is no model, or a checkpoint without a trained
    classifier head (pretraining writes a masked-packet model), is a clear error: loading it as a
    classifier would give a random head and confident-looking nonsense."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import traffic_moe_hf  # noqa: F401  (registers the Auto classes)

    from ..safe_loading import require_safetensors
    from .common import is_classifier

    if not (Path(path) / "config.json").is_file():
        raise TrafficMoeError(f"{path}: not a model folder (no config.json); expected what `traffic-moe finetune` writes")
    # pickled weights are refused unread: safe_loading's UnsafeWeightsError (a TrafficMoeError) names the file
    require_safetensors(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except ValueError as e:
        raise TrafficMoeError(f"{path}: not a model this package can load ({e})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not is_classifier(architectures):
        raise TrafficMoeError(f"{path}: a {', '.join(architectures)} checkpoint has no trained classifier head; fine-tune it "
                             f"first (`traffic-moe finetune --data DIR --from {path} --out MODEL`)")
    model = AutoModelForSequenceClassification.from_pretrained(path, config=config, use_safetensors=True)
    return model.eval()


@torch.inference_mode()
def predict_logits(model, dataset, batch_size=64, monitor=None, inputs_of=None, progress=False):
    """Logits for every row, batched by similar length so flows are not padded to the longest.
    With ``inputs_of`` (a submodule taking one tensor, e.g. ``model.classifier``) returns
    ``(logits, inputs)``: also what that module received for every row, in row order.
    ``progress``: a bar in flows on stderr (a string: its description)."""
    from ..tokenization_traffic_moe import TrafficTokenizer
    from .common import TrafficCollator

    collator = TrafficCollator(TrafficTokenizer())
    lengths = np.fromiter((len(x) for x in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    order = np.argsort(-lengths, kind="stable")
    logits = np.zeros((len(dataset), model.config.num_labels), dtype=np.float32)
    inputs, seen = None, []
    hook = None if inputs_of is None else inputs_of.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), unit="flow", desc=progress if isinstance(progress, str) else "predict",
                   file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = collator([dataset[int(i)] for i in index])
            batch.pop("labels", None)
            logits[index] = model(**batch).logits.float().cpu().numpy()
            if hook is not None:
                x = seen.pop().float().cpu().numpy()
                if inputs is None:
                    inputs = np.zeros((len(dataset), x.shape[-1]), dtype=np.float32)
                inputs[index] = x
            if bar is not None:
                bar.update(len(index))
    finally:
        if hook is not None:
            hook.remove()
        if bar is not None:
            bar.close()
    return logits if inputs_of is None else (logits, inputs)


def warn_flow_assembly(data, model, model_path) -> list[str]:
    """The tokenizer check covers the input layout; flow assembly (TCP normalisation, write coalescing) is a
    prepare option too. A model evaluated on flows assembled otherwise than its training flows is scored on
    input it was not trained on: said on stderr (``predict`` assembles new captures as the model's training
    data was, from the same record). Returns the differences."""
    from ..data.prepared import dataset_level, dataset_options

    trained = getattr(model.config, "traffic_flow_options", None)
    if not trained:  # checkpoints from before the record
        return []
    options = dataset_options(data)
    options.update(anonymize=options["anonymized"], level=dataset_level(data))
    differ = [f"{k}: data {options[k]}, model {trained[k]}" for k in ("normalize_tcp", "coalesce_tcp", "ttl", "anonymize", "level")
              if k in trained and options[k] != trained[k]]
    if differ:  # a caveat, not an error: a notice to the command's user (errors.py)
        print(f"{data}: flows assembled otherwise than {model_path}'s training data ({'; '.join(differ)}); "
              "prepare the data with the model's settings (--tcp-coalesce / --no-tcp-normalize / --ttl / "
              "--no-anonymize / --level) to score it on what it was trained on", file=sys.stderr)
    return differ


def class_names(model) -> list[str]:
    """A classifier's label names in class-index order."""
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def align_labels(dataset_names: list[str], model_id2label: dict) -> np.ndarray:
    """Map the dataset's label indices to the model's by name; -1 for a name the model does not know."""
    model_index = {name: int(i) for i, name in model_id2label.items()}
    return np.array([model_index.get(name, -1) for name in dataset_names])


def known_labels(dataset, model, where: str):
    """The data's labels as the model's class ids, matched by name: ``(mapping, labels, keep)`` with
    ``labels[i] = -1`` where the model does not know the label and ``keep`` the indices of the others.
    None known is a clear error naming both label sets; some unknown is announced on stderr."""
    from .common import label_names

    data_names = label_names(dataset)
    mapping = align_labels(data_names, model.config.id2label)
    labels = mapping[np.asarray(dataset["label"])]
    keep = np.flatnonzero(labels >= 0)
    if not len(keep):
        model_names = class_names(model)
        raise TrafficMoeError(
            f"{where}: none of its {len(labels)} samples has a label the model knows — labels are matched by "
            f"name; the data has {data_names[:12]}{' ...' if len(data_names) > 12 else ''}, the model "
            f"{model_names[:12]}{' ...' if len(model_names) > 12 else ''}")
    if len(keep) < len(labels):  # a notice to the command's user (errors.py)
        print(f"{where}: {len(labels) - len(keep)} of {len(labels)} samples have a label the model does not know; "
              f"they are left out and counted in samples_skipped_unknown_label", file=sys.stderr)
    return mapping, labels, keep


@honours_progress
def evaluate(data, model_path, split="test", json_out=None, plots=None, batch_size=64, audit=True,
             progress=False, ood=None, ood_exclude=()) -> dict:
    """Metrics of a classifier (or an ensemble: a list of checkpoint folders) on ``split`` of the prepared
    data; with ``ood`` (a prepared dataset's folder, or a list of them: traffic of other sources) also the
    open-set check of :mod:`.open_set` (``ood_exclude``: label names of that data to leave out as well, e.g.
    the same protocol under another name)."""
    from .common import (
        data_tokenizer,
        device_summary,
        distinct_weights,
        load_prepared,
        macro_f1,
        parameter_summary,
    )

    members = [model_path] if isinstance(model_path, (str, Path)) else list(model_path)
    model_path = members[0]
    prepared = load_prepared(data)
    for path in members:
        data_tokenizer(data, path)  # each model's input layout must be the data's
    if split not in prepared:
        raise TrafficMoeError(f"{data}: no split {split!r} (has {list(prepared)})")
    model, others = load_ensemble(members, data)
    names_model = class_names(model)
    dense = model.config.model_type == "bert"
    dataset = prepared[split]
    mapping, labels, keep = known_labels(dataset, model, f"{data} ({split})")
    unknown = len(labels) - len(keep)

    # out-of-distribution sources read (and checked) before any scoring, so a wrong folder stops at once
    sources = [(str(path), *foreign_rows(path, model, data, ood_exclude))
               for path in ([ood] if isinstance(ood, (str, Path)) else ood or [])]
    monitor = None
    if not dense and not others:  # expert load is one model's property: not recorded for an ensemble
        from .expert_load import ExpertLoadMonitor

        monitor = ExpertLoadMonitor(model)
        monitor.attach()

    def score(rows, what):
        return ensemble_logits(model, others, rows, batch_size=batch_size, progress=progress and f"evaluate {what}")

    started = time.perf_counter()
    logits = score(dataset.select(keep), split)
    seconds = time.perf_counter() - started
    if monitor is not None:
        monitor.detach()

    from .common import classification_metrics

    metrics = classification_metrics(labels[keep], logits.argmax(-1), names_model)
    # flows with identical model input share a split and can be much of a class there (a tool repeating
    # one connection): the same macro-F1 with every distinct input counted once shows how much they weigh
    weights = distinct_weights(dataset.select(keep))
    result = {
        "model": str(model_path) if not others else [str(m) for m in members],
        "data": str(data),
        "split": split,
        **metrics,
        "macro_f1_distinct": macro_f1(labels[keep], logits.argmax(-1), weights) if len(keep) else 0.0,
        "distinct_inputs": int(round(float(weights.sum()))),
        "samples_skipped_unknown_label": unknown,
        "flows_per_second": len(keep) / seconds if seconds > 0 else None,
        "device": device_summary(),
        **({k: sum(parameter_summary(m)[k] for m in [model] + [o for o, _ in others])
            for k in ("parameters_total", "parameters_active")} if others else parameter_summary(model)),
    }
    if monitor is not None:
        result["expert_load"] = monitor.fractions()
    if audit and "train" in prepared:
        result["shortcut_audit"] = shortcut_audit(prepared["train"], dataset.select(keep), labels[keep], names_model,
                                                  mapping)
    elif audit:  # the audit's forest learns from the data's train split; `prepare --split none` has none
        result["shortcut_audit_skipped"] = (f"{data} has no train split (prepare --split none?) for the audit's "
                                            "forest to learn from: not measured")
    foreign = {}  # top class probabilities of each out-of-distribution source, for the plot
    if sources:
        from . import open_set

        inside = open_set.top_probability(logits)
        result["open_set"] = {"score": "top class probability",
                              "thresholds": open_set.thresholds(inside, logits.argmax(-1) == labels[keep]),
                              "sources": {}}
        for path, rows, excluded in sources:
            foreign_logits = score(rows, f"ood {Path(path).name}") if len(rows) else np.zeros((0, logits.shape[-1]))
            outside = open_set.top_probability(foreign_logits)
            foreign[path] = outside
            report = result["open_set"]["sources"][path] = {
                **open_set.report(inside, outside, result["open_set"]["thresholds"]), "excluded_known_label": excluded}
            if not others and "auroc" in report:  # a second score, for comparison (one model's logits only)
                report["auroc_energy"] = open_set.auroc(open_set.energy(logits), open_set.energy(foreign_logits))
        if ood_exclude:
            result["open_set"]["excluded_labels"] = list(ood_exclude)
    if json_out:
        write_outputs(result, metrics, json_out, plots, inside=inside if foreign else None, foreign=foreign)
    return result


def write_outputs(result: dict, metrics: dict, json_out, plots=None, inside=None, foreign=None) -> None:
    """The JSON and the PNGs, all or none: each is drawn to a temporary name beside its place and the set is
    moved into place only once every one is complete (:mod:`..atomic`), so a run failing here (a full disk, a
    plotting error) leaves the earlier JSON and plots byte for byte as they were. Adds ``result["plots"]``."""
    import contextlib

    from ..atomic import atomic_path

    json_out = Path(json_out)
    plot_dir = Path(plots) if plots else json_out.parent
    stem = json_out.stem
    drawn = {"confusion_matrix": (plot_dir / f"{stem}_confusion.png", lambda p: plot_confusion(metrics, p))}
    if "expert_load" in result:
        drawn["expert_load"] = (plot_dir / f"{stem}_expert_load.png", lambda p: plot_expert_load(result["expert_load"], p))
    if foreign:
        from . import open_set

        drawn["open_set"] = (plot_dir / f"{stem}_open_set.png",
                             lambda p: open_set.plot(inside, foreign, result["open_set"]["thresholds"], p))
    with contextlib.ExitStack() as outputs:  # on leaving without an error each temporary replaces its file
        result["plots"] = {}
        for name, (path, draw) in drawn.items():
            draw(outputs.enter_context(atomic_path(path)))
            result["plots"][name] = str(path)
        with outputs.enter_context(atomic_path(json_out)).open("w") as f:
            f.write(json.dumps(result, indent=2))


def load_ensemble(members: list, data) -> tuple:
    """The classifier of the first checkpoint folder and ``others``: each further member with its class order
    mapped onto the first's by name (an ensemble's members must share labels: a clear error otherwise). Each
    member whose flow assembly differs from ``data``'s is announced on stderr."""
    model = load_classifier(members[0])
    warn_flow_assembly(data, model, members[0])
    names = class_names(model)
    others = []
    for path in members[1:]:
        other = load_classifier(path)
        other_names = class_names(other)
        if sorted(other_names) != sorted(names):
            raise TrafficMoeError(f"evaluate: {path} has other labels than {members[0]}: the models of an ensemble must "
                                 "share labels")
        warn_flow_assembly(data, other, path)
        others.append((other, [other_names.index(n) for n in names]))
    return model, others


def ensemble_logits(model, others, rows, batch_size=64, progress=False) -> np.ndarray:
    """The model's logits for ``rows`` (a prepared dataset); with ``others`` (from :func:`load_ensemble`) the
    ensemble's verdict, the mean of the members' class probabilities, its log standing in for the logits."""
    from .common import model_view

    logits = predict_logits(model, model_view(rows, dense=model.config.model_type == "bert"), batch_size=batch_size,
                            progress=progress)
    if others:
        probabilities = torch.as_tensor(logits).softmax(-1)
        for other, order in others:
            other_view = model_view(rows, dense=other.config.model_type == "bert")
            probabilities += torch.as_tensor(predict_logits(other, other_view, batch_size=batch_size)).softmax(-1)[:, order]
        logits = (probabilities / (1 + len(others))).log().numpy()
    return logits


def foreign_rows(path, model, data, exclude=()):
    """Every sample of the prepared dataset at ``path`` (all splits) whose label the model does not know by
    name — traffic of other sources for the open-set check — and how many were left out for having a label
    the model knows (those are not foreign) or one named in ``exclude``. It must be tokenized as the evaluated
    data (and so as the model's input)."""
    from datasets import concatenate_datasets

    from .common import data_tokenizer, label_names, load_prepared

    prepared = load_prepared(path)
    data_tokenizer([data, path])  # a clear error naming both when they differ
    parts = []
    excluded = 0
    for rows in prepared.values():
        names = label_names(rows)
        known = (align_labels(names, model.config.id2label) >= 0) | np.isin(names, list(exclude))
        known = known[np.asarray(rows["label"], dtype=np.int64)]
        excluded += int(known.sum())
        parts.append(rows.select(np.flatnonzero(~known)))
    return concatenate_datasets(parts), excluded


def distinct_note(result: dict) -> str:
    """'N distinct inputs; macro-F1 with each counted once X' when the evaluated split repeats inputs, else ''."""
    if "macro_f1_distinct" not in result or result.get("distinct_inputs", 0) >= result.get("samples", 0):
        return ""
    return f"{result['distinct_inputs']} distinct inputs; macro-F1 with each counted once {result['macro_f1_distinct']:.4f}"


def add_to_model_card(model_path, result: dict) -> Path | None:
    """Write ``result`` (from :func:`evaluate`) into the model folder's README.md, at the end of its
    Evaluation section: accuracy, macro-F1, per-class scores, the shortcut audit and (with ``--ood``) the
    open-set thresholds on the named data and split. Returns the card's path, or None when the folder has no card."""
    card = Path(model_path) / "README.md"
    if not card.is_file():
        return None
    note = distinct_note(result)
    lines = [f"### {result['split']} split of `{result['data']}` ({result.get('samples', '?')} samples, "
             f"`traffic-moe evaluate`, {time.strftime('%Y-%m-%d')})", "",
             f"accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}"
             + (f" ({note})" if note else ""), ""]
    if result.get("per_class"):
        lines += ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for name, c in result["per_class"].items():
            if c.get("support") == 0:  # a label of the model absent from this split: no score, not 0
                lines.append(f"| {name} | – | – | – | 0 (not in this split) |")
            else:
                lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c.get('support', '')} |")
        lines.append("")
    audit = result.get("shortcut_audit")
    if audit:
        lines += [f"Shortcut audit: a random forest on the header fields anonymisation hides ({audit['features']}) "
                  f"scores accuracy {audit['accuracy']:.4f}, macro-F1 {audit['macro_f1']:.4f} on the same split.", ""]
    if result.get("open_set"):  # the thresholds a user of the shared model passes to predict --reject-below
        lines += ["Open set (`traffic-moe predict --reject-below P` labels flows below P `unknown`):", "",
                  "| reject below P | own flows kept | accuracy on them | "
                  + " | ".join(f"`{Path(name).name}` rejected" for name in result["open_set"]["sources"]) + " |",
                  "|---:|---:|---:|" + "---:|" * len(result["open_set"]["sources"])]
        for row in result["open_set"]["thresholds"]:
            key = f"{row['keep']:.2f}"
            rejected = [f"{source['rejected'][key]:.1%}" if "rejected" in source else "–"
                        for source in result["open_set"]["sources"].values()]
            lines.append(f"| {row['threshold']:.6f} | {row['inside_kept']:.1%} | {row.get('accuracy_kept', float('nan')):.3f} | "
                         + " | ".join(rejected) + " |")
        lines.append("")
    block = "\n".join(lines)
    text = card.read_text()
    marker = "\n## Limitations"
    text = text.replace(marker, "\n" + block + marker, 1) if marker in text else text.rstrip("\n") + "\n\n" + block
    from ..atomic import write_text

    write_text(card, text)  # whole or not at all: the card is the model's documentation
    return card


# ------------------------------------------------------------------------------------ shortcut audit
def shortcut_features(dataset) -> np.ndarray:
    """Per flow, the header fields anonymisation removes: protocol, client/server address bytes and
    ports (from the 5-tuple), plus the first packet's TTL, IP ID and IP/TCP/UDP checksums where the
    dataset keeps them (``header_fields``)."""
    import ipaddress

    from ..data.flows import parse_five_tuple

    rows = []
    extra = dataset["header_fields"] if "header_fields" in dataset.column_names else None
    for i, five_tuple in enumerate(dataset["five_tuple"]):
        proto, client, server = parse_five_tuple(five_tuple)
        values = [{"tcp": 6, "udp": 17}.get(proto, 0)]
        for host, port in (client, server):
            address = ipaddress.ip_address(host.strip("[]"))
            values.extend(list(address.packed[-4:]) + [port])
        if extra is not None:
            values.extend(extra[i])
        rows.append(values)
    return np.asarray(rows, dtype=np.float64)


def shortcut_audit(train, evaluated, labels, names, mapping) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    from .common import classification_metrics

    train_labels = mapping[np.asarray(train["label"])]
    keep = train_labels >= 0
    forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
    forest.fit(shortcut_features(train)[keep], train_labels[keep])
    metrics = classification_metrics(labels, forest.predict(shortcut_features(evaluated)), names)
    return {
        "features": "protocol, client/server address (last 4 bytes) and port"
        + (", first packet's TTL, IP ID, IP and TCP/UDP checksums" if "header_fields" in train.column_names else ""),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
    }


# --------------------------------------------------------------------------------------------- plots
def plot_labels(names) -> list[str]:
    """Tick labels the plot's font can draw: a name with a character the font lacks (CJK labels on a machine
    without a CJK font render as empty boxes) is written with Python escapes instead, e.g. ``\\u4e2d``."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    out = []
    for name in names:
        name = str(name)
        drawable = all(ch.isspace() or font.get_char_index(ord(ch)) for ch in name)
        out.append(name if drawable else name.encode("ascii", "backslashreplace").decode("ascii"))
    return out


def plot_confusion(metrics: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    names = plot_labels(metrics["labels"])
    size = max(4.0, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                        color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_expert_load(load: dict[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(load)
    matrix = np.asarray([load[name] for name in layers])
    # at least 5 inches wide and the title on two lines: a 4-expert model's 4-inch figure cut a one-line title off
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * matrix.shape[1] + 2), max(2.8, 0.45 * len(layers) + 1.8)))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto", vmin=0)
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_yticks(range(len(layers)), [f"{i}" for i in range(len(layers))])
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_title(f"share of token assignments per expert\n(uniform = {1 / matrix.shape[1]:.3f})", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_result(result: dict) -> str:
    lines = [
        f"{result['split']}: {result['samples']} samples, accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}"
    ]
    note = distinct_note(result)
    if note:
        lines.append(f"  {note}")
    if result.get("samples_skipped_unknown_label"):
        lines.append(f"  skipped (label unknown to the model): {result['samples_skipped_unknown_label']}")
    width = max(len(n) for n in result["per_class"])
    lines.append(f"  {'class':<{width}}  precision  recall     f1  support")
    for name, s in result["per_class"].items():
        if s["support"]:
            lines.append(f"  {name:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:5.3f}  {s['support']:7d}")
    if "open_set" in result:
        from .open_set import format_lines

        lines.extend(format_lines(result["open_set"]))
    if "shortcut_audit" in result:
        a = result["shortcut_audit"]
        lines.append(f"  shortcut audit (random forest on hidden header fields only): macro-F1 {a['macro_f1']:.3f}")
    elif "shortcut_audit_skipped" in result:
        lines.append(f"  shortcut audit: {result['shortcut_audit_skipped']}")
    if result.get("plots"):
        lines.append("  plots: " + ", ".join(result["plots"].values()))
    return "\n".join(lines)

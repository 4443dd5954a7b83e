"""Reading a dataset written by ``traffic-moe prepare``: the splits (:func:`load_prepared`) and the options it
was prepared with (:func:`dataset_options`, :func:`dataset_level`, from its ``report.json``).

The one place that reads a prepared folder: training recipes, the shaping transforms and the robustness
check all take the window, anonymisation and TCP options from here, so a shaped or re-tokenized flow is
built exactly as ``prepare`` built the stored ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import TrafficMoeError

__all__ = ["MODEL_COLUMNS", "load_prepared", "dataset_options", "dataset_level", "prepare_options"]

#: the columns the model consumes (``prepare`` writes them when it tokenizes)
MODEL_COLUMNS = ("input_ids", "attention_mask", "packet_ids", "direction_ids")


def load_prepared(path: str | os.PathLike, labelled: bool = True):
    """A `DatasetDict` written by `traffic-moe prepare`, with a clear error when it is not one (or, with
    ``labelled``, when it is an unlabelled corpus: ``prepare --labels none``)."""
    from datasets import load_from_disk

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        report = path / "report.json"
        if report.is_file():  # prepare ran here and kept no sample
            r = json.loads(report.read_text())
            skipped = ", ".join(f"{v} {k}" for k, v in r.get("flows_skipped", {}).items()) or "none skipped"
            raise TrafficMoeError(f"{path}: `traffic-moe prepare` wrote no samples here ({r.get('files_read', 0)} files read, "
                             f"{r.get('flows', 0)} flows, flows skipped: {skipped}; see its report.json)")
        raise TrafficMoeError(f"{path}: not a dataset written by `traffic-moe prepare` (no dataset_dict.json)")
    data = load_from_disk(str(path))
    for split in data.values():
        if labelled and "label" not in split.column_names and all(c in split.column_names for c in MODEL_COLUMNS):
            raise TrafficMoeError(f"{path}: an unlabelled corpus (prepared with --labels none): pretrain on it, or prepare "
                             "labelled captures (--labels dir|file|csv:PATH) to fine-tune or evaluate")
        missing = [c for c in (*MODEL_COLUMNS, *(("label",) if labelled else ())) if c not in split.column_names]
        if missing:
            raise TrafficMoeError(f"{path}: dataset lacks columns {missing}; prepare it again with tokenization on")
    return data


def dataset_options(path) -> dict:
    """max_packets / max_bytes / ttl / anonymize / packet_bytes / header_layout / normalize_tcp a prepared
    dataset was written with (report.json; datasets from before header layouts: full layout, max_bytes
    tokens; from before TCP normalisation: none)."""
    opts = prepare_options(path)
    return {"max_packets": int(opts.get("max_packets", 8)), "max_bytes": int(opts.get("max_bytes", 64)),
            "ttl": opts.get("ttl", "mask"), "anonymized": bool(opts.get("anonymize", True)),
            "packet_bytes": int(opts.get("packet_bytes", opts.get("max_bytes", 64))),
            "header_layout": opts.get("header_layout", "full"),
            "normalize_tcp": bool(opts.get("normalize_tcp", False)),
            "coalesce_tcp": bool(opts.get("coalesce_tcp", False))}


def dataset_level(path) -> str:
    """``flow`` or ``packet``: what one sample of a prepared dataset is (report.json; default flow)."""
    return prepare_options(path).get("level", "flow")


def prepare_options(path) -> dict:
    """The options `traffic-moe prepare` recorded in a dataset's report.json ({} without one)."""
    report = Path(path) / "report.json"
    return json.loads(report.read_text()).get("options", {}) if report.is_file() else {}

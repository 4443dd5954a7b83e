"""Shaped copies of prepared flows for training: the shaping augmentation of ``traffic-moe finetune
--adversarial`` and the shaped views of contrastive pretraining (issue 6, item 3).

* **Shaping augmentation** (:func:`augment_split`): ``copies`` shaped copies of every training flow
  are added to the clean ones; each copy gets one black-box shaping attack drawn at random, with a
  budget drawn at random from :data:`TRAIN_RANGES` (continuous ranges that contain the reported
  budgets), seeded. A fixed list of budgets (:data:`TRAIN_BUDGETS`) taught robustness to exactly those
  amounts only: trained with padding of 8, 32, 64, 256 or 1500 bytes, a tls9 model lost 4-5 points
  of macro-F1 under 8 or 32 bytes of padding and 42-65 points under 4, 12, 16, 20, 24 or 48.

The embedding-space part of adversarial training needs the model and lives with the training recipes
(:mod:`traffic_moe_hf.recipes.adversarial`).
"""

from __future__ import annotations

import numpy as np

from ..data.prepared import dataset_options
from .attacks import ATTACKS, attack_columns, make_attack, row_seed
from ..errors import TrafficMoeError

__all__ = ["TRAIN_BUDGETS", "TRAIN_RANGES", "training_ranges", "draw_budget", "draw_choices", "copy_choices", "shape_rows",
           "augment_split", "names"]

TRAIN_BUDGETS = {
    "padding": [8, 32, 64, 256, 1500],
    "split": [2, 3, 4],
    "chaff": [0.25, 0.5, 1.0],
    "normalize": [1500, 1024, 512, 256],
    "headers": [0.25, 0.5, 1.0],
}


# (kind, low, high): "int" uniform integer, "logint" log-uniform integer, "float" uniform real.
# Padding is capped so a packet fits the MTU: budgets up to 4096 put ~1 draw in 5 at "fill to the MTU".
TRAIN_RANGES = {
    "padding": ("logint", 1, 4096),
    "split": ("int", 2, 4),
    "chaff": ("float", 0.05, 1.0),
    "normalize": ("int", 200, 1500),
    "headers": ("float", 0.05, 1.0),
}


def training_ranges(attacks=None) -> dict:
    """:data:`TRAIN_RANGES` restricted to ``attacks`` (names; None: all). Unknown names, or an empty
    list, raise ValueError."""
    if attacks is None:
        return dict(TRAIN_RANGES)
    if not attacks:
        raise ValueError(f"no shaping attack given; choose from {sorted(TRAIN_RANGES)}")
    unknown = sorted(set(attacks) - set(TRAIN_RANGES))
    if unknown:
        raise ValueError(f"unknown shaping attack(s) {unknown}; choose from {sorted(TRAIN_RANGES)}")
    return {name: TRAIN_RANGES[name] for name in attacks}


def draw_budget(rng: np.random.Generator, spec):
    """One budget: a list/tuple of values → one of them; a ``(kind, low, high)`` range → a draw from it."""
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[0], str):
        kind, low, high = spec
        if kind == "int":
            return int(rng.integers(low, high + 1))
        if kind == "logint":
            return int(min(high, max(low, round(float(np.exp(rng.uniform(np.log(low), np.log(high + 1))) - 0.5)))))
        if kind == "float":
            return round(float(rng.uniform(low, high)), 3)
        raise ValueError(f"unknown budget range kind {kind!r}")
    return spec[rng.integers(len(spec))]


def draw_choices(rng: np.random.Generator, n: int, budgets: dict | None = None) -> list:
    """(attack, budget) for each of ``n`` rows: the attack uniform over ``budgets``' names (default
    :data:`TRAIN_RANGES`), then each row's budget drawn from its entry (:func:`draw_budget`)."""
    budgets = budgets or TRAIN_RANGES
    names = sorted(budgets)
    choice = [names[i] for i in rng.integers(len(names), size=n)]
    return [(name, draw_budget(rng, budgets[name])) for name in choice]


def copy_choices(n: int, seed: int, copy: int, budgets: dict | None = None) -> list:
    """:func:`draw_choices` for shaped copy number ``copy`` of an ``n``-row split (seeded)."""
    return draw_choices(np.random.default_rng(row_seed(seed, "augment", copy)), n, budgets)


def shape_rows(dataset, choice: list, seed_of, columns, options: dict, skip_empty: bool = False,
               purpose: str = "shaping") -> dict:
    """Row i of ``dataset`` shaped by the attack ``choice[i]`` = (name, budget): one `attack_columns`
    call per distinct choice (seeded by ``seed_of((name, budget))``), results scattered back in row
    order. Returns ``columns`` → list per row; with ``skip_empty`` rows without packets stay None."""
    if "packets" not in dataset.column_names:
        raise TrafficMoeError(f"{purpose} needs the `packets` column that `traffic-moe prepare` writes")
    rows = [len(p) > 0 for p in dataset["packets"]] if skip_empty else None
    out = {c: [None] * len(dataset) for c in columns}
    for key in sorted(set(choice), key=str):
        index = [i for i, c in enumerate(choice) if c == key and (rows is None or rows[i])]
        if not index:
            continue
        cols = attack_columns(dataset.select(index), make_attack(*key), seed=seed_of(key), **options)
        for c in columns:
            for j, i in enumerate(index):
                out[c][i] = cols[c][j]
    return out


def augment_split(dataset, data_path=None, seed: int = 0, copies: int = 1, budgets: dict | None = None,
                  options: dict | None = None):
    """Clean rows + ``copies`` shaped copies of each (model columns and label only). ``budgets``:
    attack name → list of budgets or ``(kind, low, high)`` range (default :data:`TRAIN_RANGES`)."""
    from datasets import Dataset, concatenate_datasets

    budgets = budgets or TRAIN_RANGES
    options = options or (dataset_options(data_path) if data_path else {})
    keep = ["input_ids", "attention_mask", "packet_ids", "direction_ids", "label"]
    parts = [dataset.remove_columns([c for c in dataset.column_names if c not in keep])]
    labels = list(dataset["label"])
    for copy in range(copies):
        choice = copy_choices(len(dataset), seed, copy, budgets)
        part = shape_rows(dataset, choice, lambda key, copy=copy: row_seed(seed, copy, *key), keep[:-1], options,
                          purpose="shaping augmentation (finetune --adversarial)")
        part["label"] = labels
        parts.append(Dataset.from_dict(part).cast(parts[0].features))
    return concatenate_datasets(parts)


def names() -> list[str]:
    return sorted(ATTACKS)

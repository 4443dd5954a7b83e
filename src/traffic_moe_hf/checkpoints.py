"""The pretrained checkpoints shipped with the repository, by short name (``finetune --from traffic-moe-mini``).

They are Hub folders in the repository's ``checkpoints/`` (safetensors + config with ``auto_map`` + tokenizer +
model card; their record is ``docs/results/foundation.md``). They are not on the Hugging Face Hub: a short name
resolves to ``checkpoints/<name>`` of the checkout this package is installed from (``pip install -e .``), or
under ``$TRAFFIC_MOE_CHECKPOINTS`` when that is set (a copy of the folder elsewhere). A leaf module: no
project imports but the leaf ``errors``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TrafficMoeError

#: short name -> what it is (the folder is checkpoints/<short name>)
SHIPPED = {
    "traffic-moe-mini": "Traffic-MoE, mini preset (4 layers, 8 experts, top-2), pretrained on the public corpus",
    "bert-mini": "dense BERT baseline, same recipe and corpus, matched active parameters",
}


def checkpoint_dirs() -> list[Path]:
    """Where short names are looked up, in order."""
    dirs = []
    if os.environ.get("TRAFFIC_MOE_CHECKPOINTS"):
        dirs.append(Path(os.environ["TRAFFIC_MOE_CHECKPOINTS"]))
    dirs.append(Path(__file__).resolve().parents[2] / "checkpoints")  # the checkout (src/traffic_moe_hf/..)
    return dirs


class CheckpointNotFound(TrafficMoeError, FileNotFoundError):
    """A shipped checkpoint's short name whose folder is not there."""


def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """``name_or_path`` when it is a folder; else the shipped checkpoint of that short name. Raises
    ``CheckpointNotFound`` (a ``FileNotFoundError``) with the places looked at when a short name is not found."""
    path = Path(name_or_path)
    if path.is_dir() or str(name_or_path) not in SHIPPED:
        return os.fspath(name_or_path)
    for d in checkpoint_dirs():
        if (d / str(name_or_path) / "config.json").is_file():
            return os.fspath(d / str(name_or_path))
    looked = ", ".join(str(d) for d in checkpoint_dirs())
    raise CheckpointNotFound(f"{name_or_path}: a shipped checkpoint's short name, but no such folder under {looked} "
                            "(they ship in the repository's checkpoints/ folder: install from a clone, or set "
                            "TRAFFIC_MOE_CHECKPOINTS to a folder holding a copy)")

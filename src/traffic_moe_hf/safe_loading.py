"""Only safetensors weights are loaded (issue 28, item 3).

A model folder whose weights are a pickle (``pytorch_model.bin``, ``*.pt``, ...) is refused before anything
reads it: unpickling a file runs whatever code it names, and a model folder is exactly the kind of file
users download and pass on. transformers itself would try ``torch.load(weights_only=True)`` and end in a
40-line traceback advising ``weights_only=False`` — the one setting that runs the payload. Every place that
loads a model folder the user names (``evaluate`` / ``predict`` / ``robustness`` through ``load_classifier``,
``finetune --from`` through ``from_pretrained_quietly``) calls :func:`require_safetensors` first and also
passes ``use_safetensors=True`` to ``from_pretrained``.

A leaf module but for the project's exception (errors.py, itself a leaf).
"""

from __future__ import annotations

from pathlib import Path

from .errors import TrafficMoeError

SAFE = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class UnsafeWeightsError(TrafficMoeError, ValueError):
    """A model folder whose weights are not safetensors: the message is one line naming the file (``traffic-moe``
    reports it as such, as any :class:`TrafficMoeError`)."""


def require_safetensors(folder) -> Path:
    """The folder's safetensors weights file (or shard index); :class:`UnsafeWeightsError` naming the pickled
    file when it has only pickled weights, or naming the folder when it has no weights at all."""
    folder = Path(folder)
    for name in SAFE:
        if (folder / name).is_file():
            return folder / name
    pickled = [p.name for pattern in PICKLED for p in sorted(folder.glob(pattern)) if p.is_file()]  # likeliest first
    if pickled:
        raise UnsafeWeightsError(
            f"{folder / pickled[0]}: pickled PyTorch weights, refused (unpickling runs any code the file carries); "
            "only safetensors weights (model.safetensors) are loaded: re-save the model with save_pretrained where "
            "you trust its source")
    raise UnsafeWeightsError(f"{folder}: no model weights (model.safetensors) in this folder")

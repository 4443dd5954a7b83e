"""traffic-moe-hf: a sparse Mixture-of-Experts foundation model for network traffic, as a Transformers plugin.

Importing the package registers the configuration, the three model classes and the tokenizer with the
Auto factories, so ``AutoConfig``/``AutoModel``/``AutoModelForMaskedLM``/``AutoModelForSequenceClassification``
and ``AutoTokenizer`` load Traffic-MoE folders without ``trust_remote_code``.

Light on purpose: the names below load on first use (PEP 562 ``__getattr__``), so that the data layer
(``traffic_moe_hf.data``: ``traffic-moe prepare``), whose imports run this file first, loads neither torch nor
the model code. The Auto registration needs the configuration class, and importing a transformers
configuration imports torch, so it cannot run here unconditionally: it runs now when transformers' Auto
factories are already loaded, and otherwise the moment they load (an import hook on
``transformers.models.auto``; nothing can ask an Auto factory for a Traffic-MoE class before that).
transformers' own ``_LazyModule`` would make the names lazy but has no such hook for the registration.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

# name -> sibling module that defines it, imported on first access
_LAZY = {
    "PRESETS": "configuration_traffic_moe",
    "TrafficMoeConfig": "configuration_traffic_moe",
    "TrafficMoeForMaskedLM": "modeling_traffic_moe",
    "TrafficMoeForSequenceClassification": "modeling_traffic_moe",
    "TrafficMoeModel": "modeling_traffic_moe",
    "TrafficMoePreTrainedModel": "modeling_traffic_moe",
    "count_parameters": "hub",
    "TrafficTokenizer": "tokenization_traffic_moe",
}

__all__ = sorted(_LAZY)

_AUTO_PACKAGE = "transformers.models.auto"


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})


def register_auto_classes() -> None:
    """Register the configuration, model classes and tokenizer with transformers' Auto factories (idempotent).
    Runs by itself (see the module docstring); call it directly only to force the registration early."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from .configuration_traffic_moe import TrafficMoeConfig
    from .modeling_traffic_moe import (
        TrafficMoeForMaskedLM,
        TrafficMoeForSequenceClassification,
        TrafficMoeModel,
    )
    from .tokenization_traffic_moe import TrafficTokenizer

    AutoConfig.register(TrafficMoeConfig.model_type, TrafficMoeConfig, exist_ok=True)
    AutoModel.register(TrafficMoeConfig, TrafficMoeModel, exist_ok=True)
    AutoModelForMaskedLM.register(TrafficMoeConfig, TrafficMoeForMaskedLM, exist_ok=True)
    AutoModelForSequenceClassification.register(TrafficMoeConfig, TrafficMoeForSequenceClassification, exist_ok=True)
    AutoTokenizer.register(TrafficMoeConfig, tokenizer_class=TrafficTokenizer, exist_ok=True)


_WATCHED = (_AUTO_PACKAGE, *(f"{__name__}.{m}" for m in sorted(set(_LAZY.values()))))
_registered = False


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False)


def _register_if_ready(finished: str | None = None) -> None:
    """Register once transformers' Auto factories are loaded, unless one of the sibling modules it imports is
    half-imported: importing the modeling file imports transformers' ``PreTrainedModel``, which loads the Auto
    factories while the modeling file is still running; the registration then waits for that file to finish.
    ``finished``: the watched module that has just executed (still marked as importing until its loader returns)."""
    global _registered
    if _registered or _AUTO_PACKAGE not in sys.modules:
        return
    # nor while any transformers module is half-imported: transformers' modeling_utils loads the Auto factories
    # midway (through its quantizers), and the registration imports the modeling file, which needs
    # PreTrainedModel; it then runs when the outermost transformers import finishes
    if any(_initializing(n) for n in (*_WATCHED, *[m for m in list(sys.modules) if m.startswith("transformers.")])
           if n != finished):
        return
    _registered = True
    for finder in [f for f in sys.meta_path if isinstance(f, _RegisterWhenLoaded)]:
        sys.meta_path.remove(finder)
    register_auto_classes()


class _RegisterWhenLoaded:
    """A ``sys.meta_path`` finder that finds nothing itself: when one of :data:`_WATCHED` is about to be
    imported, it wraps that module's loader so that :func:`_register_if_ready` runs right after the module has
    executed. It leaves ``sys.meta_path`` once the registration has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _WATCHED and not fullname.startswith("transformers."):
            return None
        for finder in sys.meta_path:
            if isinstance(finder, _RegisterWhenLoaded) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = getattr(spec.loader, "exec_module", None)
        if exec_module is not None:
            def exec_then_register(module, _exec=exec_module, _name=fullname):
                _exec(module)
                _register_if_ready(_name)

            spec.loader.exec_module = exec_then_register
        return spec


if not any(isinstance(f, _RegisterWhenLoaded) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenLoaded())
_register_if_ready()

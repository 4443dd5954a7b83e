"""Options of the library's entry points as dataclasses, in the style of ``transformers.HfArgumentParser``.

``prepare``, ``pretrain`` and ``finetune`` take 20+ keyword arguments each. Each has a dataclass beside it
(``data.prepare.PrepareOptions``, ``recipes.pretrain.PretrainOptions``, ``recipes.finetune.FinetuneOptions``)
with one field per keyword argument — same name, same default, its ``metadata["help"]`` from the command's
``--help`` — and takes ``options: XOptions | None = None, **overrides``::

    finetune(data, out, epochs=3)                                  # keywords, as always
    finetune(data, out, FinetuneOptions(epochs=3, lr=1e-4))        # a dataclass (HfArgumentParser, a saved run)
    finetune(data, out, FinetuneOptions(epochs=3), lr=1e-4)        # both: the keywords override its fields

The function's body is the private ``_prepare`` / ``_pretrain`` / ``_finetune``, whose signature keeps the
keyword arguments and their defaults; ``tests/test_options.py`` checks that they equal the dataclass's.
A leaf module (no project imports), so the data layer can use it.
"""

from __future__ import annotations

import dataclasses


def keyword_arguments(cls, options, overrides: dict, function: str) -> dict:
    """The keyword arguments for ``function``'s body: ``options``' fields (a ``cls`` instance; None: only the
    ``overrides``, the body's own defaults for the rest) with ``overrides`` on top. A name that is no field of
    ``cls`` is the ``TypeError`` Python gives for an unexpected keyword argument."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"{function}() options must be a {cls.__name__} (or None), not {type(options).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in overrides if key not in names]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    values = {} if options is None else {name: getattr(options, name) for name in names}
    return {**values, **overrides}

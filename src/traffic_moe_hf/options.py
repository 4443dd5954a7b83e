"""Options of the library's entry points as dataclasses, in the style of ``transformers.HfArgumentParser``.

``prepare``, ``pretrain`` and ``finetune`` take 20+ keyword arguments each. Each has a dataclass beside it
(``data.prepare.PrepareOptions``, ``recipes.pretrain.PretrainOptions``, ``recipes.finetune.FinetuneOptions``)
with one field per keyword argument — same name, same default, its ``metadata["help"]`` — and takes
``options: XOptions | None = None, **overrides``::

    finetune(data, out, epochs=3)                                  # keywords, as always
    finetune(data, out, FinetuneOptions(epochs=3, lr=1e-4))        # a dataclass (HfArgumentParser, a saved run)
    finetune(data, out, FinetuneOptions(epochs=3), lr=1e-4)        # both: the keywords override its fields

The function's body is the private ``_prepare`` / ``_pretrain`` / ``_finetune``: its keyword-only parameters are
the dataclass's fields, without defaults, so that a default is written in the dataclass only
(``tests/test_options.py`` checks the names).

The dataclass is also the one place of the command's options: ``traffic-moe prepare/pretrain/finetune`` take the
default and the help of every option that is a field from it (:func:`option`), and the test checks that too.
So a field's help is an ``argparse`` help string, for the command and for ``HfArgumentParser`` alike: ``%%`` for
a percent sign, the flag names of the command (``--max-packets``), and no default value written out — the help
formatter adds "(default: ...)" from the field (``argtypes.HelpFormatter``; ``HfArgumentParser``'s
``ArgumentDefaultsHelpFormatter``), so that a default is changed in the dataclass only.
A leaf module (no project imports), so the data layer can use it.
"""

from __future__ import annotations

import dataclasses


def keyword_arguments(cls, options, overrides: dict, function: str) -> dict:
    """All the keyword arguments of ``function``'s body: ``options``' fields (a ``cls`` instance; None: ``cls()``,
    the defaults) with ``overrides`` on top. A name that is no field of ``cls`` is the ``TypeError`` Python gives
    for an unexpected keyword argument."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"{function}() options must be a {cls.__name__} (or None), not {type(options).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in overrides if key not in names]
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    options = cls() if options is None else options
    return {**{name: getattr(options, name) for name in names}, **overrides}


def option(cls, name: str, **extra) -> dict:
    """``add_argument`` keywords for the option that is field ``name`` of the options dataclass ``cls``: its
    default and its ``metadata["help"]``, ``extra`` on top (the type, choices, a ``dest``; a ``default`` in the
    option's own form where it differs from the field's, e.g. ``--splits train`` for ``("train",)``)::

        p.add_argument("--contrastive", type=non_negative, **option(PretrainOptions, "contrastive"))
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise ValueError(f"{cls.__name__} has no field {name!r}; its fields: {', '.join(fields)}")
    f = fields[name]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        raise ValueError(f"{cls.__name__}.{name} has no default, which its command-line option would take")
    if not f.metadata.get("help"):
        raise ValueError(f"{cls.__name__}.{name} has no metadata['help'], which its command-line option would show")
    return {"default": default, "help": f.metadata["help"], **extra}

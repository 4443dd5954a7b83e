"""The options dataclasses of prepare / pretrain / finetune (traffic_moe_hf.options): HfArgumentParser reads
them, their defaults are the functions' own (they cannot drift apart), and the functions take a dataclass, keyword
arguments, or both."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from traffic_moe_hf.data import prepare as prepare_mod
from traffic_moe_hf.recipes import finetune as finetune_mod
from traffic_moe_hf.recipes import pretrain as pretrain_mod

ENTRY_POINTS = [  # (module, public function, its body, its dataclass)
    (prepare_mod, "prepare", "_prepare", "PrepareOptions"),
    (pretrain_mod, "pretrain", "_pretrain", "PretrainOptions"),
    (finetune_mod, "finetune", "_finetune", "FinetuneOptions"),
]


def test_hf_argument_parser_reads_finetune_options():
    from transformers import HfArgumentParser

    from traffic_moe_hf.recipes.finetune import FinetuneOptions

    (options,) = HfArgumentParser((FinetuneOptions,)).parse_args_into_dataclasses(["--epochs", "3"])
    assert options == FinetuneOptions(epochs=3.0) and options.epochs == 3.0 and options.lr == 5e-4


@pytest.mark.parametrize("module, public, body, options", ENTRY_POINTS, ids=[e[1] for e in ENTRY_POINTS])
def test_dataclass_fields_are_the_functions_keyword_arguments(module, public, body, options):
    """Same names, same order, same defaults as the body's signature (the two positional parameters aside),
    and every field has help text."""
    from transformers import HfArgumentParser

    cls = getattr(module, options)
    parameters = list(inspect.signature(getattr(module, body)).parameters.values())[2:]
    fields = dataclasses.fields(cls)
    assert [f.name for f in fields] == [p.name for p in parameters]
    assert {f.name: f.default for f in fields} == {p.name: p.default for p in parameters}
    assert all(f.metadata.get("help") for f in fields)
    assert list(inspect.signature(getattr(module, public)).parameters)[2:] == ["options", "overrides"]
    HfArgumentParser((cls,))  # every field's type is one it can build an option for


@pytest.mark.parametrize("module, public, body, options", ENTRY_POINTS, ids=[e[1] for e in ENTRY_POINTS])
def test_a_dataclass_keywords_or_both(module, public, body, options, monkeypatch):
    cls = getattr(module, options)
    calls = []
    monkeypatch.setattr(module, body, lambda *args, **kwargs: calls.append((args, kwargs)) or "done")
    function = getattr(module, public)
    assert function("in", "out", seed=7) == "done"
    assert calls.pop() == (("in", "out"), {"seed": 7})  # keywords only: passed on as they were
    function("in", "out", cls(seed=3, progress=False), seed=5)
    args, kwargs = calls.pop()
    assert args == ("in", "out") and kwargs == {**dataclasses.asdict(cls()), "progress": False, "seed": 5}
    with pytest.raises(TypeError, match=rf"{public}\(\) got an unexpected keyword argument 'nope'"):
        function("in", "out", nope=1)
    with pytest.raises(TypeError, match="options must be a"):
        function("in", "out", {"seed": 1})
    assert not calls

"""The options dataclasses of prepare / pretrain / finetune (traffic_moe_hf.options): HfArgumentParser reads
them, their defaults are the only ones (the bodies have none), and the functions take a dataclass, keyword
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
    """The body's parameters after the two positional ones are the fields, same names and order, keyword-only and
    without defaults (the dataclass is the one place of a default), and every field has a default and help text."""
    from transformers import HfArgumentParser

    cls = getattr(module, options)
    parameters = list(inspect.signature(getattr(module, body)).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.kind for p in parameters[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
    assert [f.name for f in fields] == [p.name for p in parameters[2:]]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty for p in parameters[2:])
    assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING for f in fields)
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
    assert calls.pop() == (("in", "out"), {**dataclasses.asdict(cls()), "seed": 7})  # keywords: the defaults beside them
    function("in", "out", cls(seed=3, progress=False), seed=5)
    args, kwargs = calls.pop()
    assert args == ("in", "out") and kwargs == {**dataclasses.asdict(cls()), "progress": False, "seed": 5}
    with pytest.raises(TypeError, match=rf"{public}\(\) got an unexpected keyword argument 'nope'"):
        function("in", "out", nope=1)
    with pytest.raises(TypeError, match="options must be a"):
        function("in", "out", {"seed": 1})
    assert not calls


#: an option whose dest is not its field's name
CLI_DEST = {"split_ratios": "ratios", "class_weights": "use_class_weights"}
#: an option whose default is written in its own form: how that reads as the field's value
CLI_FORM = {"splits": lambda default: tuple(default.split(",")),  # --splits train,validation (run() splits it)
            "exclude": tuple}  # --exclude PATTERN, repeatable: a list
#: a flag that turns on a field holding a dict of its own options (finetune's --adversarial, --self-train)
DICT_FLAGS = {"adversarial", "self_train"}
COMMANDS = [("prepare", prepare_mod.PrepareOptions), ("pretrain", pretrain_mod.PretrainOptions),
            ("finetune", finetune_mod.FinetuneOptions)]


@pytest.mark.parametrize("command, cls", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_options_take_default_and_help_from_the_dataclass(command, cls):
    """`traffic-moe CMD`'s options and the dataclass are one source: every option that is a field has the field's
    default (in the option's form where that differs: --splits train for ("train",), --split-ratios 0.8,0.1,0.1
    read by its type) and the field's help; a flag that turns a field off (--no-progress) has its own help, the
    field's default, and the field's help names it. Every field has an option but those whose help says it has
    none. A default written in one place only (here or in the dataclass) fails."""
    import argparse

    from transformers import HfArgumentParser

    from traffic_moe_hf.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = subparsers.choices[command]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    seen = set()
    for action in parser._actions:
        name = CLI_DEST.get(action.dest, action.dest)
        if not action.option_strings or name not in fields:
            continue
        flag, field, default = action.option_strings[0], fields[name], action.default
        seen.add(name)
        if name in DICT_FLAGS:  # a store_true flag; the dict is made of other options in run()
            assert isinstance(action, argparse._StoreTrueAction) and default is False and field.default is None
            assert flag in field.metadata["help"], f"{command} {flag}: the field's help does not name the flag"
            continue
        if isinstance(default, str) and action.type is not None:
            default = action.type(default)  # as argparse reads a default written as text
        default = CLI_FORM.get(name, lambda value: value)(default)
        assert default == field.default and type(default) is type(field.default), (
            f"{command} {flag}: default {action.default!r}, {cls.__name__}.{name} = {field.default!r}")
        if isinstance(action, argparse._StoreFalseAction):  # --no-X: says what the flag does
            assert flag in field.metadata["help"], f"{command} {flag}: the field's help does not name the flag"
        else:
            assert action.help == field.metadata["help"], f"{command} {flag}: help is not {cls.__name__}.{name}'s"
    without = {name for name, f in fields.items() if "no command-line option" in f.metadata["help"]}
    assert set(fields) - seen == without, f"{command}: fields without an option that do not say so"
    for name, f in fields.items():  # the help formatters state a default: a text that writes one out goes stale
        if f.default is not None and not isinstance(f.default, bool):
            assert "default" not in f.metadata["help"].lower(), f"{cls.__name__}.{name}: help writes out a default"
    parser.format_help()  # argparse formats every help string (a lone % fails here)
    HfArgumentParser((cls,)).format_help()  # the same strings, through HfArgumentParser


def test_option_reads_a_field_and_names_an_unknown_one():
    from traffic_moe_hf.options import option

    cls = pretrain_mod.PretrainOptions
    assert option(cls, "contrastive") == {"default": cls().contrastive,
                                          "help": cls.__dataclass_fields__["contrastive"].metadata["help"]}
    assert option(cls, "splits", default="train")["default"] == "train"
    with pytest.raises(ValueError, match="PretrainOptions has no field 'contrastiv'"):
        option(cls, "contrastiv")


def test_dict_options_take_their_defaults_from_one_place(monkeypatch):
    """finetune's --adversarial / --self-train build their dicts from the --adv-* / --self-train-* options, whose
    defaults are ADVERSARIAL / SELF_TRAIN's; a library call's dict is completed from the same constants, and an
    unknown key is a clear error."""
    from traffic_moe_hf.cli import build_parser
    from traffic_moe_hf.errors import TrafficMoeError

    calls = []
    monkeypatch.setattr(finetune_mod, "finetune", lambda **kwargs: calls.append(kwargs) or {})
    args = build_parser().parse_args(["finetune", "--data", "d", "--out", "o", "--adversarial", "--self-train"])
    assert args.func(args) == 0
    assert calls[0]["adversarial"] == finetune_mod.ADVERSARIAL and calls[0]["self_train"] == finetune_mod.SELF_TRAIN
    complete = finetune_mod.with_defaults
    assert complete({"eps": 0.3}, finetune_mod.ADVERSARIAL, "adversarial") == {**finetune_mod.ADVERSARIAL, "eps": 0.3}
    assert complete(None, finetune_mod.SELF_TRAIN, "self_train") is None
    with pytest.raises(TrafficMoeError, match="adversarial: unknown key 'epsilon'; expected some of copies, eps"):
        complete({"epsilon": 0.3}, finetune_mod.ADVERSARIAL, "adversarial")

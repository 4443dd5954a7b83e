"""Out-of-range option values are refused by the parser with a one-line message naming the option,
before any work starts (they used to surface later as tracebacks: ZeroDivisionError for --batch-size 0,
a numpy error for --shots -3, torch's 'Invalid learning rate', a Hub lookup for a missing --from folder;
or ran silently with a meaningless setting: a negative --udp-timeout)."""

import pytest
from _data_util import DEMO

from traffic_moe_hf.cli import build_parser, main

SETUP_CFG = DEMO.parents[2] / "setup.cfg"  # an existing file

BAD = [
    ("finetune --data D --out O --shots 0", "--shots: must be at least 1, got 0"),
    ("finetune --data D --out O --shots -3", "--shots: must be at least 1, got -3"),
    ("finetune --data D --out O --batch-size 0", "--batch-size: must be at least 1"),
    ("finetune --data D --out O --lr -1", "--lr: must be greater than 0"),
    ("finetune --data D --out O --epochs 0", "--epochs: must be greater than 0"),
    ("finetune --data D --out O --config huge", "invalid choice: 'huge'"),
    ("finetune --data D --out O --adv-eps -0.5", "--adv-eps: must be 0 or more"),
    ("pretrain --data D --out O --max-steps 0", "--max-steps: must be at least 1 (or -1"),
    ("pretrain --data D --out O --mlm-probability 1.5", "--mlm-probability: must be between 0 and 1"),
    ("pretrain --data D --out O --lr nan", "--lr: expected a finite number"),
    ("prepare X --out O --udp-timeout -1", "--udp-timeout: must be greater than 0"),
    ("prepare X --out O --num-proc 0", "--num-proc: must be at least 1"),
    ("prepare X --out O --max-packets two", "--max-packets: expected a whole number, got 'two'"),
    ("predict X --model M --out O --batch-size 0", "--batch-size: must be at least 1"),
    ("evaluate --data D --model M --json O --batch-size -1", "--batch-size: must be at least 1"),
    ("robustness --data D --model M --json O --max-samples 0", "--max-samples: must be at least 1"),
    ("robustness --data D --model M --json O --pgd-eps 0.5,-1", "--pgd-eps: must be 0 or more"),
    ("robustness --data D --model M --json O --pgd-eps abc", "--pgd-eps: expected a number, got 'abc'"),
    ("demo --seeds 0", "--seeds: must be at least 1"),
    (f"finetune --data D --out {SETUP_CFG}", "exists and is not a folder"),
    (f"pretrain --data D --out {SETUP_CFG}", "exists and is not a folder"),
    (f"evaluate --data D --model M --json O --plots {SETUP_CFG}", "exists and is not a folder"),
    (f"evaluate --data D --model M --json {SETUP_CFG}/sub/e.json", "setup.cfg is a file, not a folder"),
    (f"finetune --data D --out {SETUP_CFG}/model", "setup.cfg is a file, not a folder"),
]


@pytest.mark.parametrize("line,message", BAD, ids=[b[0].split()[0] + ":" + b[1].split(":")[0] for b in BAD])
def test_out_of_range_options_are_usage_errors(line, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(line.split())
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_pass_their_own_checks():
    """Every default goes through the same parser (argparse applies type= to string defaults only, so
    this guards the numeric defaults against a range the new types would refuse)."""
    args = build_parser().parse_args("pretrain --data D --out O".split())
    assert args.max_steps == -1 and 0 < args.mlm_probability < 1 and args.batch_size >= 1
    args = build_parser().parse_args("finetune --data D --out O".split())
    assert args.shots is None and args.epochs > 0 and args.lr > 0 and args.config == "small"


def test_missing_from_checkpoint_is_named_before_any_hub_lookup(tmp_path, capsys):
    data = tmp_path / "ds"
    assert main(["prepare", str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap"), "--out", str(data), "--labels", "file",
                 "--no-progress"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--data", str(data), "--out", str(tmp_path / "m"), "--from", str(tmp_path / "nope"),
              "--no-progress"])
    assert "not a checkpoint folder (no config.json)" in str(exit_info.value.code)


def test_out_that_is_a_file_is_refused_before_reading(tmp_path, capsys):
    out = tmp_path / "report.txt"
    out.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:  # a usage error, before any capture is read
        main(["prepare", str(DEMO / "dns.pcap"), "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("attacks,budgets,message", [
    (["paddng"], None, "--attacks: unknown attack(s) ['paddng']"),
    (["padding"], {"pading": [64]}, "--budgets: unknown attack 'pading'"),
    (["padding"], {"padding": [-5]}, "padding: strength must be between 0 and 65535"),
    (["padding"], {"padding": [2.5]}, "padding: strength must be a whole number"),
    (["split"], {"split": [0]}, "split: strength must be at least 1"),
    (["headers"], {"headers": [2]}, "headers: strength must be between 0 and 1"),
    (["chaff"], {"chaff": ["x"]}, "chaff: strength must be a number"),
    (["chaff"], {"chaff": []}, "expected a non-empty list"),
    (["chaff"], [1], "expected a JSON object"),
])
def test_robustness_plan_is_checked_before_any_model_runs(attacks, budgets, message):
    """`traffic-moe robustness` checks attack names and budgets first (a typo was a KeyError after the
    clean pass; a negative padding ran as a silent no-op and was reported as a result)."""
    from traffic_moe_hf.errors import TrafficMoeError
    from traffic_moe_hf.recipes.robustness import check_plan

    with pytest.raises(TrafficMoeError) as exit_info:
        check_plan(attacks, budgets)
    assert message in str(exit_info.value)


def test_robustness_plan_keeps_defaults_and_warns_about_unused_budgets(capsys):
    from traffic_moe_hf.recipes.robustness import check_plan
    from traffic_moe_hf.shaping.attacks import DEFAULT_BUDGETS

    plan = check_plan(["padding"], {"padding": [0, 1500], "split": [3]})
    assert plan["padding"] == [0, 1500] and plan["chaff"] == DEFAULT_BUDGETS["chaff"]
    assert "--budgets split: that attack is not run" in capsys.readouterr().err


def test_prepare_says_when_there_is_only_one_label(tmp_path, capsys):
    """The common first mistake: a folder of captures with the default --labels dir gives every flow the
    folder's name; prepare says so (finetune would refuse the data later)."""
    assert main(["prepare", str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap"), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert "note: one label ('loopback9', the folder name)" in capsys.readouterr().out
    assert main(["prepare", str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap"), "--out", str(tmp_path / "b"),
                 "--labels", "file", "--no-progress"]) == 0
    assert "note: one label" not in capsys.readouterr().out


def test_demo_on_a_folder_with_one_class_stops_before_pretraining(tmp_path):
    import shutil

    data = tmp_path / "one"
    data.mkdir()
    shutil.copy(DEMO / "dns.pcap", data)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data", str(data), "--out", str(tmp_path / "run")])
    assert "needs captures of at least two classes" in str(exit_info.value.code)
    assert not (tmp_path / "run" / "pretrained-moe").exists()


@pytest.mark.parametrize("line, missing, extra", [
    ("prepare {d} --out {d}/o", "sklearn", "data"),
    ("evaluate --data {d} --model {d} --json {d}/e.json", "matplotlib", "train"),
    ("finetune --data {d} --out {d}/f", "accelerate", "train"),
])
def test_a_command_without_its_extra_names_what_to_install(line, missing, extra, tmp_path, monkeypatch):
    """The base install only loads models: a sub-command whose extra is missing says which packages and which
    extra, in one line, before it reads anything (None in sys.modules: the module cannot be imported)."""
    import sys

    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(SystemExit) as exit_info:
        main(line.format(d=tmp_path).split())
    name = {"sklearn": "scikit-learn"}.get(missing, missing)
    command = line.split()[0]
    assert str(exit_info.value.code) == (f"traffic-moe {command}: needs {name}, which the [{extra}] extra installs: "
                                         f'pip install -e ".[{extra}]" in the repository\'s clone (or ".[all]")')
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_extras_the_cli_names_are_those_of_setup_cfg():
    import configparser
    import re
    from pathlib import Path

    from traffic_moe_hf.cli import COMMAND_EXTRA, DISTRIBUTION, EXTRAS, SUBCOMMANDS

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extras = {k: {re.split(r"[<>=\[ ]", line)[0] for line in v.split("\n") if line.strip()}
              for k, v in cfg["options.extras_require"].items()}
    base = {re.split(r"[<>=\[ ]", line)[0] for line in cfg["options"]["install_requires"].split("\n") if line.strip()}
    for extra, modules in EXTRAS.items():
        for module in modules:
            assert DISTRIBUTION.get(module, module) in extras[extra], (extra, module)
            assert DISTRIBUTION.get(module, module) in extras["all"] and DISTRIBUTION.get(module, module) in extras["dev"]
            assert DISTRIBUTION.get(module, module) not in base  # a user who only loads a model does not get it
    assert set(COMMAND_EXTRA) <= set(SUBCOMMANDS)


def test_demo_without_its_captures_names_the_folder_and_the_option(tmp_path, monkeypatch):
    """From an installed wheel the shipped slice is not there: one line naming it and --data, nothing written."""
    from traffic_moe_hf import demo

    monkeypatch.setattr(demo, "DEFAULT_DATA", tmp_path / "site-packages" / "data" / "demo" / "loopback9")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "run")])
    assert "loopback9: the shipped slice is in a clone's data/demo/loopback9" in str(exit_info.value.code)
    assert "pass --data FOLDER" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")])
    assert str(exit_info.value.code) == (f"demo: {tmp_path / 'nothing'}: no such folder; "
                                         "pass --data FOLDER (captures, one file per class)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line", ["evaluate --data D --model M --json {d}", "predict X --model M --out {d}",
                                  "robustness --data D --model M --json r.json --md {d}", "bench --json {d}"])
def test_an_output_that_is_a_folder_is_refused_before_any_work(line, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(line.format(d=tmp_path).split())
    assert exit_info.value.code == 2
    assert f"{tmp_path} is a folder; give the path of a file" in capsys.readouterr().err


@pytest.mark.parametrize("line", ["prepare X --out O", "pretrain --data D --out O", "finetune --data D --out O",
                                  "evaluate --data D --model M --json O", "predict X --model M --out O",
                                  "robustness --data D --model M --json O"])
def test_every_long_running_command_has_progress_and_no_progress(line):
    """Each command that runs for minutes shows a bar by default and takes --no-progress (evaluate and
    robustness had neither)."""
    assert build_parser().parse_args(line.split()).progress is True
    assert build_parser().parse_args(line.split() + ["--no-progress"]).progress is False


def test_every_option_is_explained_with_its_default():
    """`traffic-moe CMD --help` explains every option and states its default (several had no help at all, so
    --epochs 10, --lr 5e-4 or --split test were nowhere to be read)."""
    import argparse

    from traffic_moe_hf.argtypes import HelpFormatter
    from traffic_moe_hf.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    formatter = HelpFormatter("x")
    for name, command in commands.items():
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]}: no help"
            if not (action.default is None or isinstance(action.default, bool) or action.default in ("", argparse.SUPPRESS)):
                assert "default" in formatter._get_help_string(action).lower(), f"{name} {action.option_strings[0]}"

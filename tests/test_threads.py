"""``--threads N`` on every command that runs a model, and a default that does not oversubscribe the cores
(issue 28, item 2; the speed it buys is measured by benchmarks/efficiency/busy_sensor.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from traffic_moe_hf import threads as threads_mod
from traffic_moe_hf.cli import MODEL_COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "loopback9"


def _options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return {s for action in sub.choices[command]._actions for s in action.option_strings}


def test_every_command_that_runs_a_model_takes_threads_and_prepare_does_not():
    assert MODEL_COMMANDS == {"pretrain", "finetune", "evaluate", "predict", "robustness", "bench", "demo"}
    for command in MODEL_COMMANDS:
        assert "--threads" in _options(command), command
    assert "--threads" not in _options("prepare")
    with pytest.raises(SystemExit):  # at least one thread: a usage error otherwise
        build_parser().parse_args(["predict", "x.pcap", "--model", "m", "--out", "o.csv", "--threads", "0"])


def test_default_is_the_cores_not_busy_and_at_least_one(monkeypatch):
    cores = threads_mod.usable_cores()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert threads_mod.default_threads() == cores
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert threads_mod.default_threads() == max(1, cores - 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 40.0, 40.0))
    assert threads_mod.default_threads() == 1


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny classifier folder (untrained: these tests count threads, not verdicts)."""
    from traffic_moe_hf import TrafficMoeConfig, TrafficMoeForSequenceClassification, TrafficTokenizer

    folder = tmp_path_factory.mktemp("threads") / "model"
    config = TrafficMoeConfig.from_preset("tiny", num_labels=2, id2label={0: "dns", 1: "ssh"},
                                          label2id={"dns": 0, "ssh": 1})
    TrafficMoeForSequenceClassification(config).save_pretrained(folder)
    TrafficTokenizer().save_pretrained(folder)
    return folder


def _predict_threads(model, *extra, env=None) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-m", "traffic_moe_hf.cli", "predict", str(DEMO / "dns.pcap"), "--model",
                           str(model), "--out", "-", "--no-progress", *extra], capture_output=True, text=True,
                          timeout=600, env={**environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert summary["flows"] == 40  # the demo's dns capture, classified
    return summary["threads"]


def test_predict_runs_with_the_threads_given_or_the_environments(model):
    assert _predict_threads(model, "--threads", "1") == 1
    assert _predict_threads(model, "--threads", "3") == 3
    assert _predict_threads(model, env={"OMP_NUM_THREADS": "1"}) == 1  # no option: the environment's
    assert 1 <= _predict_threads(model) <= threads_mod.usable_cores()

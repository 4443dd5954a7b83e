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
    for busy, want in ((0.2, cores), (1.1, max(1, cores - 1)), (float(cores), 1), (40.0, 1)):
        monkeypatch.setattr(threads_mod, "busy_cores", lambda b=busy: b)
        assert threads_mod.default_threads() == want, busy
    # where /proc/stat cannot be read: the 1-minute load average
    monkeypatch.setattr(threads_mod, "busy_cores", lambda: None)
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


def test_busy_cores_sees_one_busy_process():
    """A real busy loop on one of this process's cores reads as about one busy core (Linux only)."""
    import subprocess
    import sys

    if threads_mod.busy_cores() is None:
        pytest.skip("no /proc/stat")
    idle = threads_mod.busy_cores(0.3)
    if idle > threads_mod.usable_cores() - 1:
        pytest.skip(f"the machine is already busy ({idle:.1f} cores): no free core to see a busy loop on")
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        busy = threads_mod.busy_cores(0.5)
    finally:
        loop.kill()
        loop.wait()
    assert busy >= 0.7 and busy - idle >= 0.5, (idle, busy)


def test_busy_cores_reads_proc_stat(monkeypatch):
    """The share of non-idle time between two reads of /proc/stat, times the cores read."""
    reads = iter([(100, 400), (250, 600)])  # 150 busy jiffies of 200 on this process's cores
    monkeypatch.setattr(threads_mod, "_cpu_times", lambda cpus: next(reads))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads_mod.busy_cores(0.0) == pytest.approx(1.5)
    monkeypatch.setattr(threads_mod, "_cpu_times", lambda cpus: None)
    assert threads_mod.busy_cores(0.0) is None


def test_cpu_times_counts_only_the_given_cores(monkeypatch, tmp_path):
    import builtins

    stat = tmp_path / "stat"
    stat.write_text("cpu  30 5 10 100 2 0 0 0 0 0\n"
                    "cpu0 10 5 5 50 1 0 0 0 0 0\n"
                    "cpu1 20 0 5 50 1 0 0 0 0 0\n"
                    "intr 1 2 3\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(stat if f == "/proc/stat" else f, *a, **k))
    assert threads_mod._cpu_times({1}) == (25, 76)  # user 20 + system 5 busy; idle and iowait not
    assert threads_mod._cpu_times(None) == (45, 147)  # cpu0's nice 5 counts
    assert threads_mod._cpu_times({7}) is None


def test_busy_cores_leaves_out_this_process_s_own_cpu_time(monkeypatch):
    """After a stage of the demo its own OpenMP threads may still spin: that is not another process's load."""
    cores = threads_mod.usable_cores()
    readings = iter([(100, 1000), (100 + 60 * cores, 100 * cores + 1000)])  # 60 % of every core busy in the window
    monkeypatch.setattr(threads_mod, "_cpu_times", lambda cpus: next(readings))
    own = iter([0.0, 60.0 * cores])  # ... all of it this process's own
    monkeypatch.setattr(threads_mod, "_own_jiffies", lambda: next(own))
    assert threads_mod.busy_cores(window=0.0) == 0.0
    readings = iter([(100, 1000), (100 + 60 * cores, 100 * cores + 1000)])
    own = iter([0.0, 0.0])  # another process's
    assert threads_mod.busy_cores(window=0.0) == pytest.approx(0.6 * cores)


def test_refresh_takes_the_default_again_only_where_the_default_was_chosen(monkeypatch):
    """The demo calls refresh_threads before each stage: a busy moment at its start no longer holds all of it to
    one thread; a user's --threads or OMP_NUM_THREADS is never overridden."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_mod, "_defaulted", threads_mod._defaulted)  # restored after the test
    try:
        monkeypatch.setattr(threads_mod, "default_threads", lambda: 1)  # busy at the start
        assert threads_mod.apply_threads(None) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads_mod, "default_threads", lambda: 2)  # idle at the next stage
        assert threads_mod.refresh_threads() == 2 and torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == "2"
        assert threads_mod.apply_threads(1) == 1  # --threads 1: kept
        assert threads_mod.refresh_threads() is None and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's environment: kept
        assert threads_mod.apply_threads(None) is None
        assert threads_mod.refresh_threads() is None
    finally:
        torch.set_num_threads(before)

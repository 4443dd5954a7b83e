"""``progress=False`` in library calls silences transformers' and datasets' bars too, and restores them after."""

from __future__ import annotations

import datasets
import pytest
from transformers.utils import logging as hf_logging

from traffic_moe_hf import TrafficMoeConfig, TrafficMoeForSequenceClassification
from traffic_moe_hf.data.prepare import prepare
from traffic_moe_hf.progress import honours_progress

from _data_util import DEMO


@pytest.fixture(autouse=True)
def bars_on():
    """Start with both libraries' bars on (an earlier CLI test with --no-progress turns them off for the
    process) and leave them as they were found."""
    datasets_were_on, transformers_were_on = not datasets.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    hf_logging.enable_progress_bar()
    yield
    (datasets.enable_progress_bars if datasets_were_on else datasets.disable_progress_bars)()
    (hf_logging.enable_progress_bar if transformers_were_on else hf_logging.disable_progress_bar)()


def test_prepare_progress_false_has_no_save_bar(tmp_path, capsys):
    prepare([str(DEMO / "dns.pcap")], str(tmp_path / "on"), labels="file", progress=True)
    assert "Saving the dataset" in capsys.readouterr().err  # the control: datasets draws it by default
    prepare([str(DEMO / "dns.pcap")], str(tmp_path / "off"), labels="file", progress=False)
    assert "Saving the dataset" not in capsys.readouterr().err
    assert not datasets.are_progress_bars_disabled()  # restored


def test_honours_progress_silences_loading_bar(tmp_path, capsys):
    model = TrafficMoeForSequenceClassification(TrafficMoeConfig.from_preset("tiny", num_labels=2))
    model.save_pretrained(tmp_path)

    @honours_progress
    def load(path, progress=True):
        return TrafficMoeForSequenceClassification.from_pretrained(path)

    load(tmp_path)
    assert "Loading weights" in capsys.readouterr().err
    load(tmp_path, progress=False)
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored
    datasets.disable_progress_bars()  # state the caller set stays as it was
    load(tmp_path, progress=False)
    assert datasets.are_progress_bars_disabled()

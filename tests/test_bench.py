"""`traffic-moe bench`: the compared models are what they claim to be, and a quick measurement runs."""

from __future__ import annotations

import torch

from traffic_moe_hf.bench import build, markdown, measure, ratios


def count(name):
    with torch.device("meta"):
        model, structured = build(name)
    from traffic_moe_hf import count_parameters

    total = sum(p.numel() for p in model.parameters())
    return total, (count_parameters(model)[1] if structured else total)


def test_models_match_their_descriptions():
    etbert_total, _ = count("dense-etbert")
    moe_total, moe_active = count("traffic-moe-base")
    equal_total, _ = count("dense-equal-total")
    assert 80e6 < etbert_total < 90e6  # BERT-base encoder with a 262-token vocabulary
    assert abs(moe_active - etbert_total) / etbert_total < 0.02  # ET-BERT's active compute...
    assert moe_total > 5 * etbert_total  # ...with several times its parameters
    assert abs(equal_total - moe_total) / moe_total < 0.01
    switch_total, _ = count("switch-base")
    assert 0.5 * moe_total < switch_total < 1.5 * moe_total
    # the accuracy tables' pair: the tiny MoE and a dense BERT with its active parameters
    tiny_total, tiny_active = count("traffic-moe-tiny")
    dense_tiny, _ = count("dense-tiny")
    assert tiny_total > tiny_active and abs(dense_tiny - tiny_active) / tiny_active < 0.02


def test_quick_measurement_and_ratios():
    rows = [measure(name, 16, "cpu", "float32", quick=True) for name in ("dense-etbert", "traffic-moe-small")]
    for row in rows:
        assert row["throughput_flows_per_s"] > 0 and row["latency_p99_ms"] >= row["latency_p50_ms"] > 0
        assert row["best_batch"] in (1, 8, 32) and row["peak_memory_mb"] > 0
    assert rows[1]["experts_implementation"] == "dropless"
    (r,) = ratios(rows)
    assert r["model"] == "traffic-moe-small"
    assert abs(r["throughput_x"] - rows[1]["throughput_flows_per_s"] / rows[0]["throughput_flows_per_s"]) < 1e-9
    assert "traffic-moe-small" in markdown({"machine": {}, "models": rows, "ratios": [r]})


def test_model_spec_names_an_experts_implementation():
    import argparse

    import pytest

    from traffic_moe_hf.bench import model_spec

    assert model_spec("traffic-moe-base:grouped_mm") == "traffic-moe-base:grouped_mm"
    assert model_spec("dense-etbert") == "dense-etbert"
    for bad in ("dense-etbert:grouped_mm", "traffic-moe-base:fast", "bert"):
        with pytest.raises(argparse.ArgumentTypeError):
            model_spec(bad)
    row = measure("traffic-moe-tiny:eager", 16, "cpu", "float32", quick=True)
    assert row["experts_implementation"] == "eager" and row["model"] == "traffic-moe-tiny:eager"

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


def test_confusion_plot_labels_are_drawable(tmp_path, recwarn):
    """A label the plot font cannot draw (CJK without a CJK font) is written with escapes, not as empty boxes."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    from traffic_moe_hf.recipes.evaluate import plot_confusion, plot_labels

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    names = ["http", "café", "中文"]
    shown = plot_labels(names)
    assert shown[:2] == ["http", "café"]
    assert shown[2] == ("中文" if font.get_char_index(ord("中")) else "\\u4e2d\\u6587")
    metrics = {"labels": names, "confusion_matrix": [[3, 0, 0], [0, 2, 1], [0, 0, 4]], "accuracy": 0.9, "macro_f1": 0.9}
    plot_confusion(metrics, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert not [w for w in recwarn if "missing from" in str(w.message)], [str(w.message) for w in recwarn]

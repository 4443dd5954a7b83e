"""Issue 28, item 7: `traffic-moe --version`, the model card's install line, the plots' text inside the figure and
not overlapping, and the open-set printout naming each threshold's keep rate."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_version_names_the_package_version_and_the_libraries():
    done = subprocess.run([sys.executable, "-m", "traffic_moe_hf.cli", "--version"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    line = done.stdout.strip()
    assert line.startswith(f"traffic-moe {config['metadata']['version']} (") and "torch " in line
    assert "transformers " in line and len(line.splitlines()) == 1


def test_the_model_card_says_how_to_install_what_exists(tmp_path):
    """`pip install traffic-moe-hf` named a package that is not published: the card says it is not on PyPI and
    how to install it from a clone."""
    from traffic_moe_hf import TrafficMoeConfig, TrafficMoeForSequenceClassification

    model = TrafficMoeForSequenceClassification(TrafficMoeConfig.from_preset("tiny", num_labels=2))
    model.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "pip install traffic-moe-hf" not in card
    assert "not on PyPI" in card and "pip install -e ." in card


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions draw, kept (with their renderer) instead of closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def _inside(fig, text) -> bool:
    box = text.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1


@pytest.mark.parametrize("experts", [4, 8, 32])
def test_expert_load_title_fits_in_the_figure(experts, figures, tmp_path):
    """The tiny preset's 4 experts made a 4-inch figure whose one-line title was cut off at both sides."""
    from traffic_moe_hf.recipes.evaluate import plot_expert_load

    load = {f"layer{i}": list(np.random.default_rng(i).dirichlet(np.ones(experts))) for i in range(2)}
    plot_expert_load(load, tmp_path / "load.png")
    fig = figures[-1]
    fig.canvas.draw()
    title = fig.axes[0].title
    assert title.get_text().startswith("share of token assignments") and _inside(fig, title)


def test_open_set_plot_names_each_threshold_once_without_overlapping_labels(figures, tmp_path):
    """The three threshold labels at their lines overlapped each other (the thresholds lie within one bin);
    they are named in the legend, with the keep rate each was chosen for."""
    from traffic_moe_hf.recipes import open_set

    rng = np.random.default_rng(1)
    inside = 1 - 10 ** -rng.uniform(1.5, 6, 400)
    table = open_set.thresholds(inside)
    open_set.plot(inside, {"zeek": 1 - 10 ** -rng.uniform(0.2, 3, 300)}, table, tmp_path / "open_set.png")
    fig = figures[-1]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for row in table:
        assert sum(f"reject below {row['threshold']:.6f}: keeps {row['keep']:.0%}" in t for t in legend) == 1
    assert all(_inside(fig, t) for t in ax.get_legend().get_texts())


def test_open_set_printout_names_the_keep_rate_of_each_threshold():
    from traffic_moe_hf.recipes import open_set

    rng = np.random.default_rng(2)
    inside = 1 - 10 ** -rng.uniform(1.5, 6, 400)
    table = open_set.thresholds(inside)
    lines = open_set.format_lines({"thresholds": table, "sources": {}})
    for row in table:
        assert sum(f"keep rate {row['keep']:.0%}: reject below {row['threshold']:.6f}" in ln for ln in lines) == 1

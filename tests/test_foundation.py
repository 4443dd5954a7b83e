"""The shipped foundation checkpoints (checkpoints/traffic-moe-mini, checkpoints/bert-mini) and the short names
that select them: they load with the Auto classes installed and via trust_remote_code without the package, give
a new head for K labels, and `pretrain --from` / `finetune --from` take them."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import DEMO, REPO
from traffic_moe_hf.checkpoints import SHIPPED, CheckpointNotFound, resolve_checkpoint

MOE = REPO / "checkpoints" / "traffic-moe-mini"
DENSE = REPO / "checkpoints" / "bert-mini"
shipped = pytest.mark.skipif(not (MOE / "config.json").is_file(), reason="no shipped checkpoint in this checkout")


def _foundation_script(name):
    """A module of benchmarks/foundation (a script folder, not a package), imported by its file name."""
    sys.path.insert(0, str(REPO / "benchmarks" / "foundation"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _flows(real_flows, tokenizer):
    flows = [real_flows[label][0] for label in ("dns", "http", "ssh")]
    return tokenizer([p for p, _ in flows], directions=[d for _, d in flows], padding=True, return_tensors="pt")


@shipped
def test_shipped_checkpoints_load_with_the_auto_classes(real_flows):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    import traffic_moe_hf  # noqa: F401  (registers the Auto classes)

    for folder, model_type in ((MOE, "TrafficMoeModel"), (DENSE, "BertModel")):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        batch = _flows(real_flows, tokenizer)
        encoder = AutoModel.from_pretrained(folder).eval()
        assert type(encoder).__name__ == model_type
        classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4).eval()
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
            logits = classifier(**batch).logits
        assert hidden.shape[:2] == batch["input_ids"].shape and torch.isfinite(hidden).all()
        assert logits.shape == (3, 4)
        # the card names the corpus, the compute and the transfer table
        card = (folder / "README.md").read_text()
        assert "## Pretraining corpus" in card and "## Compute" in card and "## Transfer" in card
        assert (folder / "model.safetensors").stat().st_size < 40e6


@shipped
def test_shipped_checkpoint_loads_without_the_package(real_flows, tmp_path):
    """trust_remote_code=True in a process where traffic_moe_hf cannot be imported: the same hidden states."""
    from transformers import AutoModel, AutoTokenizer
    from safetensors.torch import load_file, save_file

    import traffic_moe_hf  # noqa: F401

    batch = _flows(real_flows, AutoTokenizer.from_pretrained(MOE))
    save_file({k: v.contiguous() for k, v in batch.items()}, tmp_path / "in.safetensors")
    script = textwrap.dedent("""
        import sys
        sys.modules["traffic_moe_hf"] = None  # not importable here
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoTokenizer
        folder, inp, out = sys.argv[1:4]
        assert type(AutoTokenizer.from_pretrained(folder, trust_remote_code=True)).__name__ == "TrafficTokenizer"
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            save_file({"h": model(**load_file(inp)).last_hidden_state.contiguous()}, out)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    r = subprocess.run([sys.executable, "-c", script, str(MOE), str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with torch.no_grad():
        installed = AutoModel.from_pretrained(MOE).eval()(**batch).last_hidden_state
    assert torch.allclose(load_file(tmp_path / "out.safetensors")["h"], installed, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    """A tiny pretraining on the demo slice, placed as a shipped checkpoint under a checkpoints folder."""
    from traffic_moe_hf.data.prepare import prepare
    from traffic_moe_hf.recipes.pretrain import pretrain

    root = tmp_path_factory.mktemp("foundation")
    prepare([str(DEMO)], str(root / "data"), labels="file", progress=False)
    pretrain([str(root / "data")], str(root / "checkpoints" / "traffic-moe-mini"), config="tiny", max_steps=2,
             batch_size=8, progress=False)
    return root


def test_short_names_resolve(tiny_pretrained, monkeypatch, tmp_path):
    assert set(SHIPPED) == {"traffic-moe-mini", "bert-mini"}
    monkeypatch.setenv("TRAFFIC_MOE_CHECKPOINTS", str(tiny_pretrained / "checkpoints"))
    assert resolve_checkpoint("traffic-moe-mini") == str(tiny_pretrained / "checkpoints" / "traffic-moe-mini")
    assert resolve_checkpoint(str(tmp_path)) == str(tmp_path)  # a folder is itself
    assert resolve_checkpoint("no/such/folder") == "no/such/folder"  # not a short name: left to the caller's check
    if not (DENSE / "config.json").is_file():
        with pytest.raises(CheckpointNotFound, match="bert-mini: a shipped checkpoint's short name"):
            resolve_checkpoint("bert-mini")


def test_finetune_and_pretrain_from_a_short_name(tiny_pretrained, monkeypatch):
    from traffic_moe_hf.recipes.finetune import finetune
    from traffic_moe_hf.recipes.pretrain import pretrain

    monkeypatch.setenv("TRAFFIC_MOE_CHECKPOINTS", str(tiny_pretrained / "checkpoints"))
    data = str(tiny_pretrained / "data")
    out = tiny_pretrained / "ft"
    summary = finetune(data, str(out), init_from="traffic-moe-mini", shots=2, min_steps=2, epochs=1, progress=False)
    assert summary["steps"] >= 2 and "traffic-moe-mini" in (out / "README.md").read_text()
    cont = pretrain([data], str(tiny_pretrained / "continued"), init_from="traffic-moe-mini", max_steps=1,
                    batch_size=8, progress=False)
    assert cont["steps"] == 1
    a = json.loads((tiny_pretrained / "checkpoints" / "traffic-moe-mini" / "config.json").read_text())
    b = json.loads((tiny_pretrained / "continued" / "config.json").read_text())
    assert a["hidden_size"] == b["hidden_size"] == 64 and a["num_experts"] == b["num_experts"]


def test_pretrain_from_a_missing_short_name_is_one_clear_error(tiny_pretrained, monkeypatch, tmp_path):
    from traffic_moe_hf.errors import TrafficMoeError
    from traffic_moe_hf.recipes.pretrain import pretrain

    monkeypatch.setenv("TRAFFIC_MOE_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr("traffic_moe_hf.checkpoints.checkpoint_dirs", lambda: [tmp_path])
    with pytest.raises(TrafficMoeError, match="--from traffic-moe-mini: a shipped checkpoint's short name"):
        pretrain([str(tiny_pretrained / "data")], str(tmp_path / "x"), init_from="traffic-moe-mini", max_steps=1,
                 progress=False)
    assert not (tmp_path / "x").exists()


def test_scaling_plot_is_made_from_the_repository_alone(tmp_path):
    """The work folder is scratch space a new machine lacks: benchmarks/foundation/scaling.py draws both panels from
    what the repository keeps (every probe, every cached fine-tuned cell), and its fine-tuned table agrees with the
    transfer table's row of the shipped version (sv17, 10 per class)."""
    script = REPO / "benchmarks" / "foundation" / "scaling.py"
    run = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    table = (tmp_path / "scaling.md").read_text().split("Fine-tuned with", 1)[1]  # the probe table comes first
    cells = sorted((REPO / "benchmarks" / "foundation" / "results" / "sv17").glob("moe@v3-10-*.json"))
    scores = [json.loads(p.read_text())["test_macro_f1"] for p in cells]
    mean = sum(scores) / len(scores)
    row = next(line for line in table.splitlines() if line.startswith("| mini + service | 1.06M | 1600 |"))
    assert f"{mean:.3f} ±" in row and f"| {len(scores)} |" in row
    transfer = (REPO / "benchmarks" / "foundation" / "results" / "transfer.md").read_text().split("**sv17**")[1]
    shipped_row = next(line for line in transfer.splitlines() if line.startswith("| Traffic-MoE mini, shipped checkpoint v3 |"))
    assert shipped_row.split(" | ")[4].startswith(f"{mean:.3f} ±")  # columns: model, all, 1, 5, 10 per class


@shipped
def test_shipped_cards_show_the_current_transfer_table():
    """Both cards carry benchmarks/foundation/results/transfer.md as it is now (a new cell re-makes the table, then
    `ship.py --refresh-cards` the cards), and below it the table's picture, results/transfer.png, copied into the
    folder: a user reading a card reads the repository's figures."""
    ship = _foundation_script("ship")
    results = REPO / "benchmarks" / "foundation" / "results"
    transfer = (results / "transfer.md").read_text().strip()
    for folder in (MOE, DENSE):
        card = (folder / "README.md").read_text()
        start, end = ship.card_transfer(card)
        assert card[start:end].strip() == transfer, f"{folder.name}: card's transfer table differs from transfer.md"
        assert card[end:].startswith(ship.TRANSFER_PLOT)
        assert (folder / "transfer.png").read_bytes() == (results / "transfer.png").read_bytes()


def test_per_class_scores_of_the_cached_cells_agree_with_their_macro_f1():
    """Cells measured since the per-class record (benchmarks/foundation/per_class.py reads them): in every such
    cached cell the per-class F1s average to the cell's macro-F1 over the classes its test split holds, the
    confusion matrix's diagonal gives its accuracy, and the report's per-class mean is the mean over those seeds."""
    per_class = _foundation_script("per_class")
    cells_of, report = per_class.cells_of, per_class.report
    results = REPO / "benchmarks" / "foundation" / "results"
    checked = 0
    for path in sorted(results.glob("*/*.json")):
        record = json.loads(path.read_text())
        if "test_per_class_f1" not in record:
            continue
        labels, matrix = record["test_confusion"]["labels"], record["test_confusion"]["matrix"]
        assert labels == list(record["test_per_class_f1"]), path.name
        present = [name for name, row in zip(labels, matrix) if sum(row)]
        macro = sum(record["test_per_class_f1"][n] for n in present) / len(present)
        assert abs(macro - record["test_macro_f1"]) < 1e-3, path.name  # per-class F1s are rounded to 4 places
        total = sum(map(sum, matrix))
        assert abs(sum(matrix[i][i] for i in range(len(labels))) / total - record["test_accuracy"]) < 1e-9, path.name
        checked += 1
    assert checked >= 2
    records, _ = cells_of(results / "tls9", "dense@v2.2", "10")
    name = next(iter(records[0]["test_per_class_f1"]))
    mean = sum(r["test_per_class_f1"][name] for r in records) / len(records)
    line = next(x for x in report("tls9", ["dense@v2.2"], ["10"]).splitlines() if x.startswith(f"| {name} ("))
    assert line.endswith(f") | {mean:.3f} |")


def test_transfer_plot_draws_the_cached_cells_and_leaves_gaps_for_the_missing(tmp_path, monkeypatch):
    """benchmarks/foundation/transfer.py's picture of the table, from the shipped MoE's cached sv17 cells: a PNG is
    written, every measured cell becomes a point at its mean, and a cell not measured is a gap (NaN), not a zero."""
    transfer = _foundation_script("transfer")
    results = REPO / "benchmarks" / "foundation" / "results" / "sv17"
    cells = {c: [json.loads(p.read_text()) for p in sorted(results.glob(f"moe@v3-{c}-*.json"))] for c in transfer.CELLS}
    assert all(cells[c] for c in ("1", "10"))
    rows = {"Traffic-MoE mini, shipped checkpoint v3": cells,
            "dense BERT mini, shipped checkpoint v2.2": {"all": [], "1": [], "5": [], "10": cells["10"][:1]}}
    report = {"date": "2026-12-07", "tasks": {"sv17": {"classes": 17, "test": 399, "rows": rows}}}
    import matplotlib.pyplot as plt

    drawn = []
    real_errorbar = plt.Axes.errorbar

    def spy(ax, x, y, **kw):
        drawn.append((kw["label"], list(y)))
        return real_errorbar(ax, x, y, **kw)

    monkeypatch.setattr(plt.Axes, "errorbar", spy)
    transfer.plot(report, tmp_path / "transfer.png")
    assert (tmp_path / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    moe, dense = dict(drawn)["Traffic-MoE mini, shipped checkpoint v3"], dict(drawn)["dense BERT mini, shipped checkpoint v2.2"]
    for y, cell in zip(moe, ("1", "5", "10", "all")):
        assert y == pytest.approx(sum(g["test_macro_f1"] for g in cells[cell]) / len(cells[cell]))
    assert [y != y for y in dense] == [True, True, False, True]  # only 10 per class measured


@shipped
def test_upcycled_checkpoint_keeps_the_active_size_and_the_routing(real_flows, tmp_path):
    """benchmarks/foundation/upcycle.py: twice the experts of the shipped MoE, the same compute per token (the
    active parameters grow by the router's new rows only), and on real flows the first layer sends each token to a
    copy of the expert the shipped model picks first (the router rows are copies plus 1% noise)."""
    from transformers import AutoModel, AutoTokenizer

    import traffic_moe_hf  # noqa: F401
    from traffic_moe_hf.recipes.common import parameter_summary

    upcycle = _foundation_script("upcycle").upcycle
    summary = upcycle("traffic-moe-mini", 16, str(tmp_path / "up16"))
    old, new = AutoModel.from_pretrained(MOE).eval(), AutoModel.from_pretrained(tmp_path / "up16").eval()
    assert new.config.num_experts == 16 and summary["experts"] == [8, 16]
    old_size, new_size = parameter_summary(old), parameter_summary(new)
    router_rows = new.config.num_hidden_layers * 8 * new.config.hidden_size
    assert new_size["parameters_active"] == old_size["parameters_active"] + router_rows
    assert new_size["parameters_total"] > 1.8 * old_size["parameters_total"]
    batch = _flows(real_flows, AutoTokenizer.from_pretrained(tmp_path / "up16"))
    with torch.no_grad():
        first_old = old(**batch, output_router_logits=True).router_logits[0].argmax(-1)
        first_new = new(**batch, output_router_logits=True).router_logits[0].argmax(-1)
    agree = (first_new % 8 == first_old).float().mean().item()
    assert agree > 0.99, agree
    with pytest.raises(SystemExit, match="multiple of"):
        upcycle("traffic-moe-mini", 12, str(tmp_path / "up12"))

"""A failed run leaves the earlier output byte for byte as it was (issue 28, item 1): predict's file, prepare's
dataset folder, evaluate's JSON and plots, a checkpoint folder. Each output is first made by a real run on the
shipped captures (data/demo/), then a failing run aims at it, and every byte of it is compared."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from traffic_moe_hf.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "loopback9"


def tree(path: Path) -> dict[str, str]:
    """Every file below ``path`` (or the file itself): relative name -> sha256 of its bytes."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporaries of the atomic writers left in ``folder`` (there must be none after a run, failed or not)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") and (".tmp" in p.name or
                                                                                      p.name.endswith(".old")))


# ------------------------------------------------------------------------------------------------ prepare
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A real prepared dataset of the demo slice (the default 8 packets x 128 stored bytes), and its bytes."""
    out = tmp_path_factory.mktemp("prepared") / "ds"
    assert main(["prepare", str(DEMO), "--out", str(out), "--labels", "file", "--split-ratios", "0.6,0.2,0.2",
                 "--no-progress"]) == 0
    assert (out / "dataset_dict.json").is_file()
    return out


def test_failed_prepare_reruns_leave_the_earlier_dataset_and_its_report_intact(dataset, tmp_path, capsys):
    """The issue's case: a re-run into the same folder that writes no dataset, with other options, overwrote its
    report.json (which finetune and evaluate read the data's options from). Now nothing in the folder changes,
    whether nothing was read (a typo), nothing decodable was read (a text file named .pcap), or captures were
    read but no flow kept; each exits non-zero."""
    before = tree(dataset)
    (tmp_path / "x.pcap").write_text("this is not a capture\n")
    for inputs in ([str(tmp_path / "typo.pcap")], [str(tmp_path / "x.pcap")], [str(DEMO / "dns.pcap")]):
        extra = ["--min-packets", "1000"] if inputs[0].endswith("dns.pcap") else []
        rc = main(["prepare", *inputs, "--out", str(dataset), "--packet-bytes", "30", "--max-packets", "4",
                   "--no-progress", *extra])
        assert rc == 1, inputs
        assert "holds an earlier dataset: left as it was" in capsys.readouterr().out
        assert tree(dataset) == before, inputs
        assert leftovers(dataset.parent) == []
    assert json.loads((dataset / "report.json").read_text())["options"]["packet_bytes"] == 64


def test_prepare_failing_while_writing_leaves_the_earlier_dataset_intact(dataset, tmp_path, monkeypatch):
    """A run that fails while it writes (here: saving the Arrow files raises, as on a full disk) used to leave
    a half-written folder; the new dataset is built beside the old one, which stays as it was, and the
    half-built folder is removed."""
    import shutil

    import datasets

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    before = tree(copy)

    def full_disk(self, path, *args, **kwargs):
        (Path(path) / "train").mkdir(parents=True, exist_ok=True)
        (Path(path) / "train" / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full_disk)
    with pytest.raises(OSError, match="No space left"):
        main(["prepare", str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap"), "--out", str(copy), "--labels", "file",
              "--no-progress"])
    assert tree(copy) == before
    assert leftovers(tmp_path) == []


def test_prepare_writes_no_report_into_a_fresh_folder_it_cannot_fill_and_says_so(tmp_path, capsys):
    """Into a folder holding no dataset a run that keeps no sample still writes its report.json (which says why:
    `load_prepared` quotes it), and exits 1."""
    out = tmp_path / "empty"
    assert main(["prepare", str(DEMO / "dns.pcap"), "--out", str(out), "--min-packets", "1000", "--no-progress"]) == 1
    assert "no samples, so no dataset" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "split_report.json"]
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- predict / evaluate
@pytest.fixture(scope="module")
def model(dataset, tmp_path_factory):
    """A small fine-tuned classifier of the demo dataset (tiny preset, a few steps: these tests check files,
    not accuracy)."""
    from traffic_moe_hf.recipes.finetune import finetune

    out = tmp_path_factory.mktemp("model") / "m"
    finetune(str(dataset), str(out), config="tiny", epochs=1, batch_size=32, lr=2e-3, progress=False)
    return out


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_predict_that_reads_no_capture_leaves_the_earlier_output_intact(model, tmp_path, suffix, capsys):
    """`predict /nonexistent.pcap --out keep.csv` turned a 201-line CSV into its header; a text file named
    x.pcap did the same. The earlier verdicts now survive byte for byte, and the run exits 1."""
    keep = tmp_path / f"keep{suffix}"
    assert main(["predict", str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap"), "--model", str(model), "--out", str(keep),
                 "--no-progress"]) == 0
    before = keep.read_bytes()
    rows = json.loads(before) if suffix == ".json" else before.decode().splitlines()[1:]
    assert len(rows) > 20
    (tmp_path / "x.pcap").write_text("GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    for bad in ("/nonexistent.pcap", str(tmp_path / "x.pcap")):
        capsys.readouterr()
        assert main(["predict", bad, "--model", str(model), "--out", str(keep), "--no-progress"]) == 1
        assert keep.read_bytes() == before, bad
        assert "not written (the earlier file is left as it was)" in capsys.readouterr().err
        assert leftovers(tmp_path) == []


def test_predict_stream_that_is_no_capture_leaves_the_earlier_output_intact(model, tmp_path):
    import io

    from traffic_moe_hf.recipes.predict import predict_stream

    keep = tmp_path / "keep.csv"
    with open(DEMO / "dns.pcap", "rb") as f:
        assert predict_stream(f, str(model), str(keep))["flows"] > 0
    before = keep.read_bytes()
    summary = predict_stream(io.BytesIO(b"not a pcap stream at all" * 10), str(model), str(keep))
    assert summary["files_read"] == 0 and keep.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_predict_failing_mid_run_leaves_the_earlier_output_intact(model, tmp_path, monkeypatch):
    """A run that dies after some rows were written (here the model fails on the second capture) keeps none of
    them: the earlier file is whole, the temporary gone."""
    from traffic_moe_hf.recipes import predict as predict_mod

    keep = tmp_path / "keep.csv"
    assert main(["predict", str(DEMO / "redis.pcap"), "--model", str(model), "--out", str(keep), "--no-progress"]) == 0
    before = keep.read_bytes()
    real = predict_mod.Classifier.__call__
    calls = []

    def failing(self, flows, directions):
        calls.append(len(flows))
        if len(calls) > 1:
            raise RuntimeError("out of memory")
        return real(self, flows, directions)

    monkeypatch.setattr(predict_mod.Classifier, "__call__", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["predict", str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap"), "--model", str(model), "--out", str(keep),
              "--no-progress"])
    assert len(calls) == 2 and keep.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_evaluate_failing_leaves_the_earlier_json_and_plots_intact(model, dataset, tmp_path, monkeypatch):
    """evaluate's JSON and PNGs are one set: a run failing before (a split the data lacks) or while writing them
    (a plot that cannot be drawn) leaves every one of the earlier files byte for byte; none is half new."""
    from traffic_moe_hf.recipes import evaluate as evaluate_mod

    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(dataset), "--model", str(model), "--json", str(out / "m.json"), "--no-audit",
            "--no-progress"]
    assert main(args) == 0
    before = tree(out)
    assert set(before) == {"m.json", "m_confusion.png", "m_expert_load.png"}
    with pytest.raises(SystemExit, match="no split 'nope'"):
        main(args + ["--split", "nope"])
    assert tree(out) == before

    def broken(*a, **k):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(evaluate_mod, "plot_expert_load", broken)  # drawn after the confusion matrix
    with pytest.raises(RuntimeError, match="cannot draw"):
        main(args)
    assert tree(out) == before
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------- checkpoints
def test_finetune_into_a_model_folder_replaces_it_whole_or_not_at_all(model, dataset, tmp_path, monkeypatch):
    """A fine-tuning run saving into a folder that holds an earlier model: when the save fails (here the
    tokenizer's, after the weights were written, as on a full disk) the earlier model is byte for byte as it
    was (the failed run's Trainer checkpoints are in its checkpoints/, where the Trainer writes them while it
    trains); when it succeeds the folder holds the new model, a user's file in it is carried over, and the card
    names the folder (not the staging folder it was written in)."""
    import shutil

    from traffic_moe_hf import TrafficTokenizer
    from traffic_moe_hf.recipes.finetune import finetune

    out = tmp_path / "m"
    shutil.copytree(model, out)
    (out / "notes.txt").write_text("mine")
    before = tree(out)

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(TrafficTokenizer, "save_pretrained", full_disk)
        with pytest.raises(OSError, match="No space left"):
            finetune(str(dataset), str(out), config="tiny", epochs=0.3, batch_size=32, lr=2e-3, seed=1,
                     progress=False)
    after = tree(out)  # (the Trainer's checkpoints/ of the failed run are beside it, as they always were)
    assert {name: digest for name, digest in after.items() if not name.startswith("checkpoints/")} == before
    assert leftovers(tmp_path) == [] and not (tmp_path / ".m.saving").exists()

    finetune(str(dataset), str(out), config="tiny", epochs=0.3, batch_size=32, lr=2e-3, seed=1, progress=False)
    after = tree(out)
    assert after["model.safetensors"] != before["model.safetensors"] and after["notes.txt"] == before["notes.txt"]
    card = (out / "README.md").read_text()
    assert f"path = {str(out)!r}" in card and ".saving" not in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

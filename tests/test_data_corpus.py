"""Unlabelled corpora (`prepare --labels none`), `--exclude`, per-input accounting and `--split-files-by name`
on the demo slice, and pretraining from such a corpus."""

import json
import shutil

import datasets
import pytest

from traffic_moe_hf.errors import TrafficMoeError

from _data_util import DEMO
from traffic_moe_hf.data.prepare import add_parser


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


def test_unlabelled_corpus_with_exclusions(tmp_path, capsys):
    out = tmp_path / "corpus"
    patterns = tmp_path / "held.txt"
    patterns.write_text("# held-out captures\n*/ssh.pcap\n\n")
    rc = _cli([str(DEMO / "dns.pcap"), str(DEMO), "--labels", "none", "--exclude", "*/http.pcap",
               "--exclude-from", str(patterns), "--split-ratios", "0.9,0.1,0", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "per input:" in printed and "excluded by --exclude: 2 files" in printed
    r = json.loads((out / "report.json").read_text())
    assert sorted(r["files_excluded"]) == ["loopback9/http.pcap", "loopback9/ssh.pcap"]
    assert r["labels"] == [] and r["files_read"] == 7  # dns.pcap named twice is read once
    assert sum(s["samples"] for s in r["sources"].values()) == r["samples_total"] == 7 * 40
    assert r["sources"][str(DEMO)]["files"] == 6 and r["sources"][str(DEMO / "dns.pcap")]["flows"] == 40
    dd = datasets.load_from_disk(str(out))
    assert set(dd) == {"train", "validation"}
    assert "label" not in dd["train"].column_names
    assert {f.rsplit("/", 1)[-1] for f in dd["train"]["source_file"]}.isdisjoint({"http.pcap", "ssh.pcap"})


def test_unlabelled_corpus_refused_by_finetune(tmp_path):
    from traffic_moe_hf.recipes.common import load_prepared

    out = tmp_path / "corpus"
    assert _cli([str(DEMO / "dns.pcap"), "--labels", "none", "--out", str(out), "--no-progress"]) == 0
    assert "label" not in load_prepared(out, labelled=False)["train"].column_names
    with pytest.raises(TrafficMoeError, match="unlabelled corpus"):
        load_prepared(out)


def test_split_files_by_name_keeps_a_capture_on_one_side(tmp_path):
    # one source capture written once per label folder (as split-by-label.py does): a/x.pcap and b/x.pcap
    root = tmp_path / "task"
    for i, name in enumerate(sorted(p.name for p in DEMO.glob("*.pcap"))):
        for lab in ("a", "b"):
            (root / lab).mkdir(parents=True, exist_ok=True)
            shutil.copy(DEMO / name, root / lab / f"src{i}.pcap")
    for by, crossing in (("name", False), ("path", True)):
        out = tmp_path / by
        assert _cli([str(root), "--split", "file", "--split-files-by", by, "--dedup", "report",
                     "--out", str(out), "--no-progress"]) == 0
        files = json.loads((out / "split_report.json").read_text())["files"]
        side = {}
        for s, names in files.items():
            for n in names:
                side.setdefault(n.rsplit("/", 1)[-1], set()).add(s)
        assert any(len(v) > 1 for v in side.values()) == crossing


def test_split_files_by_needs_file_split(tmp_path, capsys):
    assert _cli([str(DEMO), "--split-files-by", "name", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "only with --split file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_pretrain_reads_an_unlabelled_corpus(tmp_path):
    from traffic_moe_hf.recipes.pretrain import pretrain

    corpus = tmp_path / "corpus"
    assert _cli([str(DEMO / "dns.pcap"), str(DEMO / "mqtt.pcap"), "--labels", "none", "--out", str(corpus),
                 "--no-progress"]) == 0
    r = pretrain([str(corpus)], tmp_path / "pre", config="tiny", max_steps=2, batch_size=8, progress=False)
    assert r["steps"] == 2 and r["samples"] == len(datasets.load_from_disk(str(corpus))["train"])

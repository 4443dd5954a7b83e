"""`traffic-moe predict` on the shipped real captures: `predict -` on a piped stream (batched, cut, Ctrl-C),
flows assembled as the model's training data was, JSON rows, `--out - | head`, and ensembles.

The shared fixtures (``prepared``: the demo slice prepared once; ``pretrained`` and ``finetuned``: a tiny
model pretrained and fine-tuned on it once per session) are in conftest.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from traffic_moe_hf.data.prepare import prepare
from traffic_moe_hf.errors import TrafficMoeError
from traffic_moe_hf.recipes.evaluate import evaluate
from traffic_moe_hf.recipes.predict import predict_files

from conftest import DEMO, SMALL


def test_predict_stream_matches_file(finetuned, tmp_path):
    """`cat capture | traffic-moe predict -` gives every flow the verdict the file gives it, and the same
    packet accounting (used + skipped by reason = total)."""
    out, _ = finetuned
    capture = DEMO / "redis.pcap"
    from_file = tmp_path / "file.csv"
    file_summary = predict_files([str(capture)], str(out), str(from_file), progress=False)
    with open(capture, "rb") as stream:
        result = subprocess.run(
            [sys.executable, "-m", "traffic_moe_hf.cli", "predict", "-", "--model", str(out), "--out", str(tmp_path / "stream.csv")],
            stdin=stream, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    assert result.returncode == 0, result.stderr[-2000:]

    def verdicts(path):
        with open(path) as f:
            return {(r["five_tuple"], r["start_time"]): (r["label"], round(float(r["probability"]), 4)) for r in csv.DictReader(f)}

    assert verdicts(tmp_path / "stream.csv") == verdicts(from_file)
    assert len(verdicts(from_file)) == 40
    stream_summary = json.loads(result.stderr.strip().splitlines()[-1])
    for key in ("packets_total", "packets_used", "packets_skipped", "flows"):
        assert stream_summary[key] == file_summary[key], key
    assert file_summary["packets_skipped"]["beyond_max_packets"] > 0
    assert file_summary["packets_used"] + sum(file_summary["packets_skipped"].values()) == file_summary["packets_total"]


def test_predict_names_a_cut_capture_alike_from_a_file_and_from_a_stream(finetuned, tmp_path, capsys):
    """A capture cut mid-record (a killed tcpdump): from a file and from a stream its flows are classified
    up to the damage and the damage is named in `files_warnings` (the stream summary had it under another key)."""
    import io

    from traffic_moe_hf.recipes.predict import predict_stream

    out, _ = finetuned
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((DEMO / "http.pcap").read_bytes()[:30000])
    from_file = predict_files([str(cut)], str(out), str(tmp_path / "f.csv"), progress=False)
    from_stream = predict_stream(io.BytesIO(cut.read_bytes()), str(out), str(tmp_path / "s.csv"))
    assert from_file["files_warnings"] == {"cut.pcap": from_stream["files_warnings"]["-"]}
    assert "truncated" in from_stream["files_warnings"]["-"]
    for key in ("packets_total", "packets_used", "packets_skipped", "flows"):
        assert from_stream[key] == from_file[key], key
    # an unreadable stream is named on stderr as an unreadable file is
    capsys.readouterr()
    empty = predict_stream(io.BytesIO(b""), str(out), str(tmp_path / "e.csv"))
    assert empty["files_failed"] == {"-": "empty file"} and "predict: -: empty file" in capsys.readouterr().err


def test_predict_stream_batches_flows_and_surfaces_a_classifier_failure(finetuned, tmp_path, monkeypatch):
    """The stream's classifier thread batches the flows that are ready (fewer forward passes than flows,
    the verdicts of the one-at-a-time path), and an error in it stops the run with that error instead of
    leaving the reader waiting."""
    import io

    from traffic_moe_hf.recipes import predict as predict_mod

    out, _ = finetuned
    data = (DEMO / "redis.pcap").read_bytes()
    calls = []
    real_call = predict_mod.Classifier.__call__

    def counting(self, flows, directions):
        calls.append(len(flows))
        return real_call(self, flows, directions)

    monkeypatch.setattr(predict_mod.Classifier, "__call__", counting)
    batched = predict_mod.predict_stream(io.BytesIO(data), str(out), str(tmp_path / "b.csv"), batch_size=16, max_wait=0.5)
    one_by_one = predict_mod.predict_stream(io.BytesIO(data), str(out), str(tmp_path / "o.csv"), batch_size=1)
    assert batched["flows"] == one_by_one["flows"] == 40 and sum(calls) == 80
    assert len(calls) < 40 + 40 and max(calls) > 1  # some forward passes held several flows

    def rows(path):
        with open(path) as f:
            return {(r["five_tuple"], r["start_time"]): r["label"] for r in csv.DictReader(f)}

    assert rows(tmp_path / "b.csv") == rows(tmp_path / "o.csv")

    def failing(self, flows, directions):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(predict_mod.Classifier, "__call__", failing)
    with pytest.raises(RuntimeError, match="model exploded"):
        predict_mod.predict_stream(io.BytesIO(data), str(out), str(tmp_path / "f.csv"))


def test_predict_stream_ctrl_c_classifies_the_open_flows(finetuned, tmp_path):
    """Ctrl-C on `tcpdump -w - | traffic-moe predict -` ends the stream like its end: DNS flows (2 packets,
    never the model's N) still open are classified and written, exit status 0 (was a traceback, and those
    flows were never written)."""
    import signal
    import time

    out, _ = finetuned
    csv_out = tmp_path / "live.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "traffic_moe_hf.cli", "predict", "-", "--model", str(out), "--out", str(csv_out),
         "--no-progress"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.stdin.write((DEMO / "dns.pcap").read_bytes())
    proc.stdin.flush()  # the stream stays open, as a live capture's does
    deadline = time.monotonic() + 120
    while not csv_out.exists() and time.monotonic() < deadline:  # the model is loaded
        time.sleep(0.2)
    time.sleep(3)  # the records are read
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)  # it ends on the signal alone: the stream is still open (closing it first was a race)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert json.loads(err.decode().strip().splitlines()[-1])["interrupted"] is True
    with open(csv_out) as f:
        assert len(list(csv.DictReader(f))) == 40


def test_predict_stream_ctrl_c_after_the_stream_ended_loses_nothing(finetuned, tmp_path, monkeypatch):
    """Ctrl-C on `tcpdump -w - | predict -` also stops tcpdump, whose end can close the stream before predict
    handles the signal: a SIGINT that arrives once reading is over is recorded, and the open flows are
    still classified and written (it used to be able to interrupt their classification)."""
    import io
    import signal

    from traffic_moe_hf.data.flows import FlowTable
    from traffic_moe_hf.recipes import predict as predict_mod

    original = FlowTable.finish

    def finish_after_ctrl_c(self):
        os.kill(os.getpid(), signal.SIGINT)  # handled at once, in this (main) thread
        return original(self)

    monkeypatch.setattr(FlowTable, "finish", finish_after_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    summary = predict_mod.predict_stream(io.BytesIO((DEMO / "dns.pcap").read_bytes()), str(finetuned[0]),
                                         str(tmp_path / "dns.csv"))
    assert summary["interrupted"] is True and summary["flows"] == 40
    with open(tmp_path / "dns.csv") as f:
        assert len(list(csv.DictReader(f))) == 40
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_predict_assembles_flows_as_the_training_data_was(finetuned):
    """finetune records the data's TCP normalisation / coalescing in the checkpoint; predict uses it."""
    from traffic_moe_hf.recipes.predict import Classifier

    out, _ = finetuned
    config = json.loads((out / "config.json").read_text())
    assert config["traffic_flow_options"] == {"normalize_tcp": True, "coalesce_tcp": False, "ttl": "mask", "level": "flow",
                                              "anonymize": True}
    classifier = Classifier(str(out))
    defaults = {"normalize_tcp": True, "coalesce_tcp": False, "ttl": "mask", "anonymize_packets": True}
    assert classifier.flow_options == defaults and classifier.level == "flow"
    classifier.model.config.traffic_flow_options = {"coalesce_tcp": True}  # older checkpoints: the rest as prepare's defaults
    assert classifier.flow_options == {**defaults, "coalesce_tcp": True}


def test_predict_reads_captures_with_the_models_ttl_anonymisation_and_level(prepared, finetuned, tmp_path, monkeypatch):
    """predict assembles new captures with every option the model's training data had: a model trained with
    `--ttl keep` gets TTLs (was: masked to 0 whatever the training data, every probability off), and a
    packet-level model classifies each packet alone, the flow's verdict their mean (was: a whole flow fed to
    a model trained on single packets). finetune records the options; evaluate names a mismatch."""
    import shutil

    from datasets import concatenate_datasets, load_from_disk

    from traffic_moe_hf.recipes.evaluate import warn_flow_assembly
    from traffic_moe_hf.recipes.predict import Classifier

    out, _ = finetuned
    saved = json.loads((out / "config.json").read_text())["traffic_flow_options"]
    assert saved == {"normalize_tcp": True, "coalesce_tcp": False, "ttl": "mask", "level": "flow", "anonymize": True}
    http = DEMO / "http.pcap"
    kept = tmp_path / "ttl-keep-data"
    prepare([str(http)], str(kept), labels="dir", split="none", ttl="keep", progress=False, **SMALL)
    model = tmp_path / "ttl-keep-model"  # the same weights, recorded as trained on TTLs kept
    shutil.copytree(out, model)
    config = json.loads((model / "config.json").read_text())
    config["traffic_flow_options"]["ttl"] = "keep"
    (model / "config.json").write_text(json.dumps(config))
    seen = []
    real_call = Classifier._probabilities

    def recording(self, flows, directions):
        seen.extend((tuple(ids), len(flow)) for ids, flow in zip(self.tokenizer(flows, directions=directions)["input_ids"], flows))
        return real_call(self, flows, directions)

    monkeypatch.setattr(Classifier, "_probabilities", recording)
    predict_files([str(http)], str(model), str(tmp_path / "keep.csv"), progress=False)
    data = load_from_disk(str(kept))
    stored = sorted(tuple(ids) for ids in concatenate_datasets([data[s] for s in data])["input_ids"])
    assert sorted(ids for ids, _n in seen) == stored and len(stored) == 40
    masked = load_from_disk(str(prepared))
    masked = concatenate_datasets([masked[s] for s in masked])
    assert sorted(tuple(i) for i, f in zip(masked["input_ids"], masked["source_file"]) if f.endswith("http.pcap")) != stored
    # a packet-level model: one packet per forward sample, one row per flow
    config["traffic_flow_options"].update(ttl="mask", level="packet")
    (model / "config.json").write_text(json.dumps(config))
    seen.clear()
    summary = predict_files([str(http)], str(model), str(tmp_path / "packets.csv"), progress=False)
    with open(tmp_path / "packets.csv") as f:
        rows = list(csv.DictReader(f))
    assert summary["flows"] == len(rows) == 40 and all(n == 1 for _ids, n in seen) and len(seen) > 40
    assert all(0 < float(r["probability"]) <= 1 for r in rows)
    # evaluate says when the data was made otherwise than the model's training data
    assert any(d.startswith("ttl: data keep, model mask") for d in warn_flow_assembly(str(kept), load_classifier_of(out), str(out)))


def load_classifier_of(folder):
    from traffic_moe_hf.recipes.evaluate import load_classifier

    return load_classifier(str(folder))


def test_predict_json_rows_hold_numbers(finetuned, tmp_path):
    """`--out X.json` (any case) writes JSON with numbers as numbers (probability, start time, packets were
    partly strings)."""
    out, _ = finetuned
    predict_files([str(DEMO / "dns.pcap")], str(out), str(tmp_path / "rows.JSON"), progress=False)
    rows = json.loads((tmp_path / "rows.JSON").read_text())
    assert len(rows) == 40 and all(isinstance(r[k], (int, float)) for r in rows for k in ("probability", "start_time", "packets"))


def test_predict_piped_into_head_ends_quietly_and_split_none_says_the_audit_is_missing(finetuned, tmp_path):
    """`predict ... --out - | head -1` ends with status 0 and no traceback (was BrokenPipeError); evaluating on
    `prepare --split none` data says the shortcut audit was not measured (it was left out silently)."""
    from traffic_moe_hf.data.prepare import prepare

    out, _ = finetuned
    process = subprocess.Popen(
        [sys.executable, "-m", "traffic_moe_hf.cli", "predict", str(DEMO / "ftp.pcap"), "--model", str(out), "--out", "-",
         "--no-progress", "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.stdout.readline().startswith(b"file,")
    process.stdout.close()  # what `head -1` does
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0 and b"Traceback" not in err, err[-2000:]
    data = tmp_path / "elsewhere"
    prepare([str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap")], str(data), labels="file", split="none", progress=False)
    result = evaluate(str(data), str(out), split="test")
    assert "shortcut_audit" not in result and "not measured" in result["shortcut_audit_skipped"]


def test_predict_ensemble_averages_members_aligned_by_label_name(prepared, finetuned, tmp_path):
    """`predict --model A --model B`: each flow's probabilities are the members' mean, with the members' classes
    matched by name (a member may order its labels otherwise); members that read flows otherwise or know other
    labels are refused before any capture is read."""
    from conftest import read_demo_flows
    from transformers import AutoTokenizer

    from traffic_moe_hf import TrafficMoeForSequenceClassification
    from traffic_moe_hf.recipes.predict import Classifier, Ensemble

    out, _ = finetuned
    model = TrafficMoeForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    n = model.config.num_labels
    perm = list(reversed(range(n)))

    def variant(name, bias_shift=0.0, rename=None):
        m = TrafficMoeForSequenceClassification.from_pretrained(out)
        with torch.no_grad():  # the same classifier with its rows in reversed label order
            m.classifier.weight.copy_(model.classifier.weight[perm])
            m.classifier.bias.copy_(model.classifier.bias[perm] + bias_shift * torch.arange(n))
        names = [model.config.id2label[p] for p in perm]
        if rename:
            names[0] = rename
        m.config.id2label = dict(enumerate(names))
        m.config.label2id = {v: k for k, v in m.config.id2label.items()}
        m.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        return str(tmp_path / name)

    reordered, shifted = variant("reordered"), variant("shifted", bias_shift=0.5)
    flows = read_demo_flows(DEMO / "http.pcap", 4) + read_demo_flows(DEMO / "ssh.pcap", 4)
    packets, directions = [f[0] for f in flows], [f[1] for f in flows]
    base = Classifier(str(out))
    single = base._probabilities(packets, directions)
    assert torch.allclose(Ensemble([str(out), reordered])._probabilities(packets, directions), single, atol=1e-6)
    other = Classifier(shifted)
    other_aligned = other._probabilities(packets, directions)[:, [other.names.index(x) for x in base.names]]
    mixed = Ensemble([str(out), shifted])._probabilities(packets, directions)
    assert not torch.allclose(other_aligned, single, atol=1e-3)  # the second member really differs
    assert torch.allclose(mixed, (single + other_aligned) / 2, atol=1e-6)

    # files: an ensemble of a model and its reordered copy gives the model's own verdicts
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    predict_files([str(DEMO / "dns.pcap")], str(out), str(one), progress=False)
    predict_files([str(DEMO / "dns.pcap")], [str(out), reordered], str(two), progress=False)
    with open(one) as a, open(two) as b:
        assert [(r["label"], r["probability"][:6]) for r in csv.DictReader(a)] == \
            [(r["label"], r["probability"][:6]) for r in csv.DictReader(b)]

    # evaluate scores the same ensemble: with the reordered copy exactly the model's own figures
    alone = evaluate(str(prepared), str(out), audit=False)
    both = evaluate(str(prepared), [str(out), reordered], audit=False)
    assert both["model"] == [str(out), reordered] and both["parameters_total"] == 2 * alone["parameters_total"]
    assert both["confusion_matrix"] == alone["confusion_matrix"] and both["macro_f1"] == alone["macro_f1"]
    assert "expert_load" in alone and "expert_load" not in both

    renamed = variant("renamed", rename="not-a-class")
    with pytest.raises(TrafficMoeError, match="differs from .* in labels"):
        Ensemble([str(out), renamed])
    with pytest.raises(TrafficMoeError, match="other labels"):
        evaluate(str(prepared), [str(out), renamed], audit=False)
    from traffic_moe_hf.cli import build_parser, main

    assert build_parser().parse_args(["predict", "x.pcap", "--model", "A", "--model", "B", "--out", "o.csv"]).model == ["A", "B"]
    with pytest.raises(SystemExit, match="one --model"):
        main(["evaluate", "--data", str(prepared), "--model", str(out), "--model", reordered, "--json",
              str(tmp_path / "e.json"), "--update-card"])

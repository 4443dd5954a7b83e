"""End to end on the shipped real captures: prepare -> pretrain -> finetune -> evaluate -> predict,
resuming a run, a 2-process (gloo) run, and `predict -` on a piped stream."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import datasets
import pytest
import torch

from traffic_moe_hf.data.prepare import prepare
from traffic_moe_hf.errors import TrafficMoeError
from traffic_moe_hf.recipes.evaluate import evaluate
from traffic_moe_hf.recipes.finetune import finetune
from traffic_moe_hf.recipes.predict import predict_files
from traffic_moe_hf.recipes.pretrain import MaskedPacketCollator, pretrain
from traffic_moe_hf.tokenization_traffic_moe import BYTE_OFFSET, MASK_ID, PKT_ID

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "loopback9"
# the defaults (8 packets, 128 stored bytes, 64 tokens each in the compact layout): with fewer bytes the demo
# slice has too few distinct flows for the grouped split to leave a test set that measures anything
# (4 x 32 bytes: 62 distinct inputs among 360 flows)
SMALL = dict(max_packets=8, max_bytes=128)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    report = prepare([str(DEMO)], str(out), labels="file", split="flow", ratios=(0.6, 0.2, 0.2), progress=False, **SMALL)
    assert report["files_read"] == 9 and report["packets_total"] == report["packets_used"] + sum(report["packets_skipped"].values())
    return out


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    summary = pretrain([str(prepared)], str(out), config="tiny", max_steps=30, batch_size=16, lr=2e-3, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def finetuned(prepared, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetuned")
    summary = finetune(str(prepared), str(out), init_from=str(pretrained[0]), epochs=8, batch_size=16, lr=2e-3,
                       progress=False)
    return out, summary


def test_masked_packet_collator_masks_bytes_spans_and_packets(prepared):
    from datasets import load_from_disk

    from traffic_moe_hf import TrafficTokenizer

    rows = load_from_disk(str(prepared))["train"].select(range(32))
    features = [{k: r[k] for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids")} for r in rows]
    torch.manual_seed(0)
    collator = MaskedPacketCollator(TrafficTokenizer(), mlm_probability=0.0, span_probability=0.0, packet_probability=1.0)
    batch = collator(features)
    original = collator.tokenizer.pad(features, return_tensors="pt")["input_ids"]
    is_byte = original >= BYTE_OFFSET
    # packet_probability=1: every byte is a target, structure tokens never are
    assert torch.equal(batch["labels"] != -100, is_byte)
    assert torch.equal(batch["labels"][is_byte], original[is_byte])
    assert (batch["input_ids"][original == PKT_ID] == PKT_ID).all()
    replaced = batch["input_ids"][is_byte]
    assert 0.7 < (replaced == MASK_ID).float().mean() < 0.9  # the 80/10/10 rule
    assert (replaced[replaced != MASK_ID] >= BYTE_OFFSET).all()  # random replacements are bytes

    collator = MaskedPacketCollator(TrafficTokenizer(), mlm_probability=0.0, span_probability=0.2, packet_probability=0.0)
    labels = collator(features)["labels"]
    targets = (labels != -100).float()
    assert 0.2 < targets[is_byte].mean() < 0.9
    # spans: a target's neighbour in the same packet is far more often a target than chance
    same = targets[:, 1:] * targets[:, :-1]
    assert same.sum() / targets[:, 1:].sum() > 0.5


def test_pretraining_lowers_masked_packet_loss(pretrained):
    out, summary = pretrained
    assert summary["steps"] == 30
    assert summary["last_logged_loss"] < summary["first_logged_loss"]
    history = json.loads((out / "pretrain_summary.json").read_text())["log_history"]
    assert any("expert_load_max_over_mean" in h for h in history)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


def test_contrastive_views_pairs_and_loss(prepared, pretrained):
    """Flow-contrastive pretraining: every flow gets a shaped view (changed input, same flow), the
    collator stacks flows then views, NT-Xent is ~0 for matched pairs and high for mismatched ones,
    and the pretraining log carries the contrastive loss, which falls."""
    from datasets import load_from_disk

    from traffic_moe_hf import TrafficTokenizer
    from traffic_moe_hf.recipes.pretrain import VIEW_COLUMNS, TwoViewCollator, nt_xent, shaped_views

    train = load_from_disk(str(prepared))["train"]
    train = train.select(range(0, len(train), max(1, len(train) // 24)))  # every class, not only dns
    views = shaped_views(train, str(prepared), seed=0)
    assert set(VIEW_COLUMNS) <= set(views.column_names)
    from traffic_moe_hf.shaping.attacks import row_seed
    from traffic_moe_hf.shaping.augment import TRAIN_BUDGETS, draw_choices

    attack = [name for name, _budget in draw_choices(np.random.default_rng(row_seed(0, "views", len(train))), len(train), TRAIN_BUDGETS)]
    differs = [a != b for a, b in zip(views["input_ids"], views["view_input_ids"])]
    # TCP normalisation (prepare's default) leaves TCP chaff out of the view: such a view is the flow itself
    tcp = [bool(seqs) for seqs in train["tcp_seq"]]
    assert not any(d for d, a, t in zip(differs, attack, tcp) if a == "chaff" and t)
    shaped = [d for d, a, t in zip(differs, attack, tcp) if not (a == "chaff" and t)]
    # a 2-packet DNS exchange has no segment to split and no chaff slot at low budgets: it may stay as it is
    assert sum(shaped) >= 0.75 * len(shaped), (sum(shaped), len(shaped))
    assert shaped_views(train, str(prepared), seed=0)["view_input_ids"] == views["view_input_ids"]  # seeded
    cols = ("input_ids", "attention_mask", "packet_ids", "direction_ids")
    features = [{k: r[k] for k in (*cols, *VIEW_COLUMNS)} for r in views.select(range(4))]
    collator = TwoViewCollator(MaskedPacketCollator(TrafficTokenizer(), mlm_probability=0.0, span_probability=0.0,
                                                    packet_probability=0.0))
    batch = collator(features)
    assert batch["input_ids"].shape[0] == 8
    for i in range(4):
        n = len(features[i]["view_input_ids"])
        assert batch["input_ids"][4 + i, :n].tolist() == features[i]["view_input_ids"]
    z = torch.eye(8)[:4] * 5
    assert nt_xent(torch.cat([z, z]), 0.1) < 1e-3
    assert nt_xent(torch.cat([z, z.roll(1, 0)]), 0.1) > 10
    out, summary = pretrained
    history = [h for h in json.loads((out / "pretrain_summary.json").read_text())["log_history"] if "contrastive_loss" in h]
    assert summary["contrastive"] == 1.0 and history[-1]["contrastive_loss"] < history[0]["contrastive_loss"]


def test_view_budgets_ranges_and_copies(prepared, monkeypatch):
    """``view_budgets="ranges"`` draws budgets from TRAIN_RANGES (values outside the fixed list
    appear), ``"list"`` only from TRAIN_BUDGETS; ``view_copies`` puts each flow in the corpus once per
    view, with different views."""
    import datasets

    import traffic_moe_hf.recipes.common as common_mod
    import traffic_moe_hf.recipes.pretrain as pretrain_mod
    from traffic_moe_hf.shaping import augment as adversarial

    train = datasets.load_from_disk(str(prepared))["train"]
    train = train.select(range(0, len(train), max(1, len(train) // 40)))
    seen = {}
    real_shape_rows = adversarial.shape_rows

    def spy(dataset, choice, *args, **kwargs):
        seen.setdefault("choices", []).extend(choice)
        return real_shape_rows(dataset, choice, *args, **kwargs)

    monkeypatch.setattr(adversarial, "shape_rows", spy)
    pretrain_mod.shaped_views(train, str(prepared), seed=0, budgets="list")
    listed = {(n, b) for n, bs in adversarial.TRAIN_BUDGETS.items() for b in bs}
    assert set(seen.pop("choices")) <= listed
    pretrain_mod.shaped_views(train, str(prepared), seed=0, budgets="ranges")
    ranged = seen.pop("choices")
    assert any(c not in listed for c in ranged)
    for name, budget in ranged:
        _kind, low, high = adversarial.TRAIN_RANGES[name]
        assert low <= budget <= high
    with pytest.raises(ValueError, match="view budgets"):
        pretrain_mod.shaped_views(train, str(prepared), budgets="nope")
    with pytest.raises(TrafficMoeError, match="view-copies must be at least 1"):
        pretrain_mod.pretrain([str(prepared)], "unused", config="tiny", view_copies=0)

    # copies: capture the corpus the trainer would get, without training
    captured = {}

    class Stop(Exception):
        pass

    def fake_model_view(part, dense=False, extra=()):
        captured.setdefault("parts", []).append(part)
        return part

    def stop(parts):
        raise Stop

    real_views = pretrain_mod.shaped_views
    monkeypatch.setattr(pretrain_mod, "shaped_views",  # the small subset instead of the whole split
                        lambda split, path, seed=0, budgets="list": real_views(train, path, seed, budgets))
    monkeypatch.setattr(common_mod, "model_view", fake_model_view)
    monkeypatch.setattr(datasets, "concatenate_datasets", stop)  # stop before any training
    with pytest.raises(Stop):
        pretrain_mod.pretrain([str(prepared)], "unused", config="tiny", view_copies=2, view_budgets="ranges")
    assert len(captured["parts"]) == 2
    first, second = captured["parts"]
    assert len(first) == len(second) == len(train)
    assert first["input_ids"] == second["input_ids"]  # the same flows ...
    assert first["view_input_ids"] != second["view_input_ids"]  # ... with other views


def run_card_snippet(card: str) -> tuple[str, str]:
    """Runs a classifier card's Python snippet exactly as written; returns the label the pipeline gave and
    the label from the tokenizer's tensors (the two lines it prints)."""
    import ast
    import contextlib
    import io
    import re

    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})
    first, second = printed.getvalue().splitlines()[:2]
    return ast.literal_eval(first)[0]["label"], second


def test_finetune_evaluate_predict(prepared, finetuned, tmp_path, monkeypatch):
    out, summary = finetuned
    assert summary["best_validation_macro_f1"] is not None
    assert not (out / "checkpoints").exists()  # selected model saved, the Trainer's checkpoints removed
    result = evaluate(str(prepared), str(out), split="test", json_out=str(tmp_path / "eval.json"))
    chance = 1 / 9
    assert result["accuracy"] > 3 * chance, result["accuracy"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "shortcut_audit", "expert_load"} <= set(saved)
    # macro-F1 with every distinct model input counted once, beside the per-flow one
    from datasets import load_from_disk

    test = load_from_disk(str(prepared))["test"]
    distinct = {(tuple(i), tuple(d), y) for i, d, y in zip(test["input_ids"], test["direction_ids"], test["label"])}
    assert saved["distinct_inputs"] == len(distinct) <= saved["samples"]
    assert 0 < saved["macro_f1_distinct"] <= 1
    if len(distinct) == saved["samples"]:
        assert saved["macro_f1_distinct"] == pytest.approx(saved["macro_f1"])
    assert Path(saved["plots"]["confusion_matrix"]).stat().st_size > 1000
    assert Path(saved["plots"]["expert_load"]).stat().st_size > 1000
    card = (out / "README.md").read_text()
    assert "initialised from" in card and "validation macro-F1" in card
    assert card.count("always tokenize with it") == 1 and "pipeline_tag: text-classification" in card
    pipeline_label, tensor_label = run_card_snippet(card)  # the card's usage code runs as written
    assert pipeline_label == tensor_label and tensor_label in dense_labels(out)
    # `evaluate --update-card`: the test figures go into the card's Evaluation section (on a copy)
    import shutil

    from traffic_moe_hf.recipes.evaluate import add_to_model_card

    copy = tmp_path / "card-copy"
    shutil.copytree(out, copy)
    add_to_model_card(copy, result)
    updated = (copy / "README.md").read_text()
    evaluation = updated.split("## Evaluation", 1)[1].split("## Limitations", 1)[0]
    assert f"macro-F1 {result['macro_f1']:.4f}" in evaluation and "| mqtt |" in evaluation
    assert "Shortcut audit" in evaluation and updated.startswith(card.split("## Evaluation", 1)[0])

    capture = DEMO / "mqtt.pcap"
    rows_file = tmp_path / "predictions.csv"
    stats = predict_files([str(capture)], str(out), str(rows_file), progress=False)
    with open(rows_file) as f:
        rows = list(csv.DictReader(f))
    assert stats["flows"] == len(rows) == 40
    assert set(rows[0]) == {"file", "five_tuple", "start_time", "packets", "label", "probability"}
    assert all(0 < float(r["probability"]) <= 1 for r in rows)
    # predict reads a capture into exactly the model inputs prepare gave the same flows (header layout,
    # stored bytes and limits travel with the checkpoint's tokenizer): what reaches the model, recorded
    from datasets import concatenate_datasets, load_from_disk

    from traffic_moe_hf.recipes.predict import Classifier

    seen = []
    real_call = Classifier.__call__

    def recording(self, flows, directions):
        seen.extend(tuple(ids) for ids in self.tokenizer(flows, directions=directions)["input_ids"])
        return real_call(self, flows, directions)

    monkeypatch.setattr(Classifier, "__call__", recording)
    http = DEMO / "http.pcap"  # packets longer than 64 bytes: the stored length matters
    predict_files([str(http)], str(out), str(tmp_path / "http.csv"), progress=False, batch_size=8, pool=16)
    monkeypatch.setattr(Classifier, "__call__", real_call)
    data = load_from_disk(str(prepared))
    data = concatenate_datasets([data[split] for split in data])
    stored = sorted(tuple(ids) for ids, f in zip(data["input_ids"], data["source_file"]) if f.endswith("http.pcap"))
    assert len(seen) == len(stored) == 40 and sorted(seen) == stored
    # bfloat16 inference: same verdict for (nearly) every flow
    predict_files([str(capture)], str(out), str(tmp_path / "bf16.csv"), progress=False, bf16=True)
    with open(tmp_path / "bf16.csv") as f:
        bf16_rows = list(csv.DictReader(f))
    assert [r["five_tuple"] for r in bf16_rows] == [r["five_tuple"] for r in rows]  # capture order kept
    agree = sum(a["label"] == b["label"] for a, b in zip(rows, bf16_rows))
    assert agree >= 0.9 * len(rows), agree


def test_evaluate_on_data_with_no_label_the_model_knows_says_so(finetuned, tmp_path):
    """Labels are matched by name: captures labelled otherwise give a clear error naming both label sets,
    not a traceback from the metrics."""
    from traffic_moe_hf.data.prepare import prepare

    out, _ = finetuned
    data = tmp_path / "other-labels"
    prepare([str(DEMO / "dns.pcap")], str(data), labels="dir", split="none", progress=False)  # label "loopback9"
    with pytest.raises(TrafficMoeError, match=r"none of its \d+ samples has a label the model knows.*'loopback9'.*'dns'"):
        evaluate(str(data), str(out), split="test", audit=False)


def test_finetune_refuses_a_train_split_with_one_label(tmp_path):
    """All captures in one folder with `--labels dir` give one label: a clear error, not a 1-class model."""
    from traffic_moe_hf.data.prepare import prepare

    data = tmp_path / "one-label"
    prepare([str(DEMO / "dns.pcap"), str(DEMO / "mqtt.pcap")], str(data), labels="dir", progress=False)
    with pytest.raises(TrafficMoeError, match=r"at least two labels in the train split, found \['loopback9'\]"):
        finetune(str(data), str(tmp_path / "model"), config="tiny", epochs=1, progress=False)


def test_classifying_with_a_checkpoint_that_is_no_classifier_says_so(pretrained, tmp_path):
    """predict / evaluate / robustness load a fine-tuned classifier; a pretraining checkpoint (random head,
    confident-looking nonsense) or a folder that holds no model is a clear error."""
    from traffic_moe_hf.recipes.evaluate import load_classifier

    with pytest.raises(TrafficMoeError, match="TrafficMoeForMaskedLM checkpoint has no trained classifier head; fine-tune it"):
        load_classifier(str(pretrained[0]))
    with pytest.raises(TrafficMoeError, match="not a model folder"):
        predict_files([str(DEMO / "dns.pcap")], str(tmp_path), str(tmp_path / "out.csv"), progress=False)


def test_finetuning_a_classifier_on_other_labels_carries_rows_by_name(finetuned, capfd):
    """A shared classifier fine-tuned on one's own labels: no shape error; rows of labels both know come
    over by name (whatever their position), the others start at random."""
    from safetensors.torch import load_file

    from traffic_moe_hf import TrafficMoeForSequenceClassification
    from traffic_moe_hf.recipes.common import from_pretrained_quietly

    out, _ = finetuned
    old = json.loads((out / "config.json").read_text())["id2label"]
    old_index = {name: int(i) for i, name in old.items()}
    names = ["ssh", "dns", "web-attack"]  # two known (in another order), one new
    model = from_pretrained_quietly(TrafficMoeForSequenceClassification, str(out), num_labels=3,
                                    id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    saved = load_file(str(out / "model.safetensors"))
    for j, name in enumerate(names[:2]):
        assert torch.equal(model.classifier.weight[j], saved["classifier.weight"][old_index[name]])
        assert torch.equal(model.classifier.bias[j], saved["classifier.bias"][old_index[name]])
    assert not any(torch.equal(model.classifier.weight[2], row) for row in saved["classifier.weight"])
    assert "2 of 3 carried over by name (ssh, dns)" in capfd.readouterr().out


def test_pretrained_start_reports_the_new_head_in_one_line(pretrained, capfd):
    """Starting a classifier from a masked-packet checkpoint: the new head and the dropped MLM head are
    named in one line, transformers' UNEXPECTED/MISSING table is not printed, no encoder weight is new."""
    from traffic_moe_hf import TrafficMoeForSequenceClassification
    from traffic_moe_hf.recipes.common import from_pretrained_quietly

    path, _summary = pretrained
    model = from_pretrained_quietly(TrafficMoeForSequenceClassification, str(path), num_labels=9)
    out = capfd.readouterr()
    assert model.loading_info["missing"] == ["classifier.bias", "classifier.weight"]
    assert model.loading_info["encoder_missing"] == [] and model.loading_info["unexpected"]
    assert "new classifier.bias, classifier.weight" in out.out and "WARNING" not in out.out
    assert "UNEXPECTED" not in out.out + out.err and "MISSING" not in out.out + out.err


def dense_labels(folder):
    """The label names a checkpoint folder's config holds."""
    return set(json.loads((Path(folder) / "config.json").read_text())["id2label"].values())


def test_finetune_few_shot_and_dense_baseline(prepared, tmp_path):
    few = finetune(str(prepared), str(tmp_path / "few"), config="tiny", shots=2, min_steps=4, epochs=1, batch_size=8,
                   progress=False)
    assert few["train_samples"] == 18 and few["steps"] == 4 and few["best_validation_macro_f1"] is None
    dense = finetune(str(prepared), str(tmp_path / "dense"), config="tiny", dense=True, epochs=1, batch_size=16,
                     progress=False, keep_checkpoints=True)
    assert dense["model"] == "BertForSequenceClassification"
    # the Trainer's checkpoints: removed by default (the output folder is the model to share), kept on request
    assert dense["checkpoints_kept"] and any((tmp_path / "dense" / "checkpoints").iterdir())
    assert not (tmp_path / "few" / "checkpoints").exists() and not few["checkpoints_kept"]
    result = evaluate(str(prepared), str(tmp_path / "dense"), split="test", audit=False)
    assert 0 <= result["macro_f1"] <= 1 and "expert_load" not in result
    # the baseline's folder has a model card too, which `evaluate --update-card` fills
    from traffic_moe_hf.recipes.evaluate import add_to_model_card

    card = add_to_model_card(str(tmp_path / "dense"), result)
    text = card.read_text()
    assert "BertForSequenceClassification" in text and f"macro-F1 {result['macro_f1']:.4f}" in text
    assert text.index("### test split") < text.index("## Limitations")
    # its usage snippet runs as written, the pipeline and the tensors agreeing (the folder's tokenizer gives
    # BERT the directions as token types)
    pipeline_label, tensor_label = run_card_snippet(text)
    assert pipeline_label == tensor_label and tensor_label in dense_labels(tmp_path / "dense")
    # the checkpoint decides the model: a dense folder fine-tunes the dense baseline without --dense (was a
    # TypeError deep in loading), and --dense with a Traffic-MoE folder is refused
    again = finetune(str(prepared), str(tmp_path / "dense2"), init_from=str(tmp_path / "dense"), shots=2, min_steps=1,
                     batch_size=8, progress=False)
    assert again["model"] == "BertForSequenceClassification"
    with pytest.raises(TrafficMoeError, match="is a Traffic-MoE checkpoint, not a dense BERT"):
        finetune(str(prepared), str(tmp_path / "x"), init_from=str(tmp_path / "few"), dense=True, progress=False)


def test_self_training_labels_the_pool_with_the_teachers_confident_verdicts(prepared, finetuned, tmp_path):
    """pseudo_label takes, per predicted class, the most confident distinct inputs above the threshold and
    labels them with the teacher's verdict (not the pool's label); finetune --self-train trains the model on
    the shots plus those, from the same start, and removes the teacher folder."""
    from traffic_moe_hf.recipes.common import few_shot_indices, model_view
    from traffic_moe_hf.recipes.evaluate import load_classifier, predict_logits
    from traffic_moe_hf.recipes.finetune import pseudo_label

    train = datasets.load_from_disk(str(prepared))["train"]
    chosen = few_shot_indices(train, 2, 0)
    pool = train.select(sorted(set(range(len(train))) - set(chosen)))
    rows, info = pseudo_label(finetuned[0], pool, False, 9, per_class=3, threshold=0.5)
    probabilities = torch.from_numpy(predict_logits(load_classifier(finetuned[0]), model_view(pool))).softmax(-1)
    confident = probabilities.max(-1).values >= 0.5
    assert 0 < info["chosen"] == len(rows) <= 27 and all(0 < n <= 3 for n in info["per_class"].values())
    by_input = {(tuple(ids), tuple(d)): int(p) for ids, d, p in zip(pool["input_ids"], pool["direction_ids"],
                                                                     probabilities.argmax(-1))}
    assert [by_input[(tuple(ids), tuple(d))] for ids, d in zip(rows["input_ids"], rows["direction_ids"])] == rows["label"]
    assert len({tuple(ids) for ids in rows["input_ids"]}) == len(rows)  # distinct inputs
    assert info["chosen"] <= int(confident.sum())
    assert rows.features["label"] == train.features["label"]
    # the recipe: shots + pseudo-labels, the teacher's summary kept, its folder removed
    summary = finetune(str(prepared), str(tmp_path / "st"), config="tiny", shots=2, min_steps=3, epochs=1, batch_size=8,
                       progress=False, self_train=dict(per_class=3, threshold=0.0))
    st = summary["self_training"]
    assert st["pool"] == len(pool) and summary["train_samples"] == 18 + st["chosen"] and st["chosen"] > 0
    assert st["teacher"]["train_samples"] == 18 and 0 <= st["agreement_with_pool_labels"] <= 1
    assert not (tmp_path / "st" / "self-training-teacher").exists()
    with pytest.raises(TrafficMoeError, match="--self-train is for few-shot runs"):
        finetune(str(prepared), str(tmp_path / "x"), config="tiny", progress=False, self_train=dict(per_class=3, threshold=0.9))


def test_shots_beyond_a_class_size_is_said(prepared, tmp_path, capsys):
    """--shots K on classes with fewer training flows uses all of them (as before) and says so."""
    summary = finetune(str(prepared), str(tmp_path / "m"), config="tiny", shots=10_000, min_steps=1, batch_size=8,
                       progress=False)
    train = datasets.load_from_disk(str(prepared))["train"]
    assert summary["train_samples"] == len(train)
    assert "--shots 10000: fewer training flows than that, all of them used" in capsys.readouterr().err


def test_evaluate_says_when_flows_were_assembled_otherwise_than_for_training(prepared, capsys):
    from types import SimpleNamespace

    from traffic_moe_hf.recipes.evaluate import warn_flow_assembly

    trained_coalesced = SimpleNamespace(config=SimpleNamespace(traffic_flow_options={"normalize_tcp": True,
                                                                                     "coalesce_tcp": True}))
    assert warn_flow_assembly(str(prepared), trained_coalesced, "m") == ["coalesce_tcp: data False, model True"]
    assert "flows assembled otherwise than m's training data" in capsys.readouterr().err
    same = SimpleNamespace(config=SimpleNamespace(traffic_flow_options={"normalize_tcp": True, "coalesce_tcp": False}))
    assert warn_flow_assembly(str(prepared), same, "m") == [] and not capsys.readouterr().err


def test_probe_head_initialises_the_classifier_from_a_linear_probe(prepared, pretrained, tmp_path):
    """--head-init probe: before any fine-tuning step, the classifier already predicts what the
    logistic-regression probe on the frozen encoder predicts (same training accuracy), for the MoE
    and (through the same hook) for a BERT classifier; fine-tuning then runs from that head."""
    from datasets import load_from_disk
    from transformers import BertForSequenceClassification

    from traffic_moe_hf import TrafficMoeForSequenceClassification
    from traffic_moe_hf.recipes.common import TrafficCollator, data_tokenizer, dense_config, few_shot, model_view
    from traffic_moe_hf.recipes.finetune import probe_head

    train = few_shot(load_from_disk(str(prepared))["train"], 5, seed=0)
    names = train.features["label"].names
    tokenizer = data_tokenizer(str(prepared), str(pretrained[0]))
    collator = TrafficCollator(tokenizer)

    def train_accuracy(model, view):
        model.eval()
        batch = collator([view[i] for i in range(len(view))])
        labels = batch.pop("labels")
        with torch.inference_mode():
            return float((model(**batch).logits.argmax(-1) == labels).float().mean())

    moe = TrafficMoeForSequenceClassification.from_pretrained(str(pretrained[0]), num_labels=len(names))
    view = model_view(train)
    before = train_accuracy(moe, view)
    fitted = probe_head(moe, view)
    after = train_accuracy(moe, view)
    assert fitted["features"] == moe.config.hidden_size
    assert abs(after - fitted["probe_train_accuracy"]) < 1e-6, (after, fitted)
    assert after > before and after > 0.5, (before, after)

    bert = BertForSequenceClassification(dense_config(moe.config, num_labels=len(names)))
    dense_view = model_view(train, dense=True)
    fitted = probe_head(bert, dense_view)
    assert abs(train_accuracy(bert, dense_view) - fitted["probe_train_accuracy"]) < 1e-6

    summary = finetune(str(prepared), str(tmp_path / "lpft"), init_from=str(pretrained[0]), shots=5, min_steps=4,
                       epochs=1, batch_size=8, progress=False, head_init="probe")
    assert summary["head_init"] == "probe" and summary["probe"]["probe_train_accuracy"] > 0.5
    with pytest.raises(TrafficMoeError, match="pretrained checkpoint"):
        finetune(str(prepared), str(tmp_path / "x"), config="tiny", shots=2, min_steps=1, progress=False, head_init="probe")


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


def test_resume_continues_the_same_run(prepared, tmp_path):
    """Interrupt a run after its first checkpoint, resume it: the final weights equal an uninterrupted run's."""
    common = dict(config="tiny", max_steps=8, batch_size=16, save_steps=4, progress=False, seed=3)
    pretrain([str(prepared)], str(tmp_path / "straight"), **common)
    interrupted = tmp_path / "interrupted"
    pretrain([str(prepared)], str(interrupted), **common)
    # simulate a crash after step 4: drop the later checkpoint and the final model
    import shutil

    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-8")
    (interrupted / "model.safetensors").unlink()
    resumed = pretrain([str(prepared)], str(interrupted), resume=True, **common)
    assert resumed["resumed_from"].endswith("checkpoint-4") and resumed["steps"] == 8
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(interrupted / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    # resuming with another model than the run's is named before training (was torch's "size mismatch" page)
    with pytest.raises(TrafficMoeError, match="is another model than the one asked for: hidden_size"):
        pretrain([str(prepared)], str(interrupted), resume=True, **{**common, "config": "small"})


def test_two_process_training_ranks_agree(prepared, tmp_path):
    """2 CPU processes (torchrun, gloo) run the unchanged pretraining recipe for a few steps. Each rank
    starts from a different seed, so only a real DDP run (rank 0's weights broadcast, gradients
    all-reduced, data sharded) ends with identical weights on both ranks."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os, sys, torch, torch.distributed as dist, transformers\n"
        "import traffic_moe_hf.recipes.pretrain as recipe\n"
        "seen = {}\n"
        "class Grab(transformers.TrainerCallback):\n"
        "    def on_train_end(self, args, state, control, model=None, **kw):\n"
        "        seen['weights'] = torch.cat([p.detach().flatten() for p in model.parameters()])\n"
        "        seen['mode'] = (args.world_size, str(args.parallel_mode), state.epoch)\n"
        "original = transformers.Trainer.__init__\n"
        "def init(self, *a, **k):\n"
        "    k['callbacks'] = list(k.get('callbacks') or []) + [Grab()]\n"
        "    original(self, *a, **k)\n"
        "transformers.Trainer.__init__ = init\n"
        "recipe.pretrain([sys.argv[1]], sys.argv[2], config='tiny', max_steps=3, batch_size=8, progress=False,\n"
        "                save_steps=100, seed=int(os.environ['RANK']))\n"
        "w = seen['weights']\n"
        "gathered = [torch.zeros_like(w) for _ in range(dist.get_world_size())]\n"
        "dist.all_gather(gathered, w)\n"
        "diff = max((g - gathered[0]).abs().max().item() for g in gathered)\n"
        "# one file per rank: two ranks printing to the shared stdout can interleave their lines\n"
        "open(f'result-{os.environ[\"RANK\"]}.txt', 'w').write(' '.join(map(str, (*seen['mode'], diff))))\n"
        "# leave together: a rank exiting while the other's gloo threads still talk to it can abort (SIGABRT)\n"
        "dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    with socket.socket() as probe:  # a free port, so a parallel run elsewhere on the machine cannot collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         str(worker), str(prepared), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    if result.returncode != 0:
        pytest.fail(f"torchrun exited with {result.returncode}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-4000:]}")
    lines = [(tmp_path / f"result-{rank}.txt").read_text().split() for rank in (0, 1)]
    from datasets import load_from_disk

    steps_per_epoch = -(-len(load_from_disk(str(prepared))["train"]) // 16)  # 8 flows per rank x 2 ranks
    for world, mode, epoch, diff in lines:
        assert world == "2" and mode.endswith("DISTRIBUTED") and float(diff) == 0.0, (world, mode, diff)
        assert abs(float(epoch) - 3 / steps_per_epoch) < 1e-3, (epoch, steps_per_epoch)  # the data was sharded
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_selection_score_breaks_saturated_ties_by_validation_loss():
    """Best-checkpoint selection: macro-F1 decides; at equal macro-F1 (a saturated validation set) the
    checkpoint with the lower validation cross-entropy wins instead of the first one."""
    from traffic_moe_hf.recipes.common import selection_score

    labels = np.array([0, 1, 2, 0])
    unsure = np.eye(3)[labels] * 0.5  # right, barely
    sure = np.eye(3)[labels] * 8.0  # right, confidently
    assert selection_score(1.0, sure, labels) > selection_score(1.0, unsure, labels)
    wrong_but_sure = sure.copy()
    wrong_but_sure[0] = [0.0, 30.0, 0.0]
    # a macro-F1 lead visible in four decimals always beats any loss difference
    assert selection_score(0.9999, unsure, labels) < selection_score(1.0, unsure, labels)
    assert selection_score(0.75, wrong_but_sure, labels) < selection_score(0.7501, unsure * 0.0, labels)


def test_selection_counts_each_distinct_input_once():
    """A group of identical flows (one input repeated) is one decision: with distinct weights the
    checkpoint that gets more distinct inputs right is selected, not the one that gets the big group
    right. Modelled on attack10's validation split (800 identical dos-httpflood flows)."""
    from datasets import Dataset
    from transformers import EvalPrediction

    from traffic_moe_hf.recipes.common import distinct_weights, trainer_metrics

    # class 0: one input repeated 8 times + 2 distinct ones; class 1: 3 distinct inputs
    inputs = [[5, 6]] * 8 + [[7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]
    labels = np.array([0] * 10 + [1] * 3)
    data = Dataset.from_dict({"input_ids": inputs, "direction_ids": [[0, 1]] * 13, "label": labels.tolist()})
    weights = distinct_weights(data)
    assert np.allclose(weights[:8], 1 / 8) and np.allclose(weights[8:], 1.0)
    assert np.isclose(weights.sum(), 6)  # six distinct inputs
    # same input under another label is another (conflicting) sample, not a duplicate
    other = Dataset.from_dict({"input_ids": [[5, 6], [5, 6]], "direction_ids": [[0, 1]] * 2, "label": [0, 1]})
    assert np.allclose(distinct_weights(other), 1.0)

    def logits(predicted):
        return np.eye(2)[np.asarray(predicted)] * 5.0

    group_right = [0] * 8 + [1, 1] + [1, 0, 0]  # the repeated input right, 1 of 5 distinct ones
    distinct_right = [1] * 8 + [0, 0] + [1, 1, 1]  # the opposite
    metric = trainer_metrics(["a", "b"], weights)
    a = metric(EvalPrediction(predictions=logits(group_right), label_ids=labels))
    b = metric(EvalPrediction(predictions=logits(distinct_right), label_ids=labels))
    assert a["macro_f1"] > b["macro_f1"]  # per sample the big group wins ...
    assert b["macro_f1_distinct"] > a["macro_f1_distinct"]  # ... per distinct input it does not
    assert b["selection"] > a["selection"]
    plain = trainer_metrics(["a", "b"])
    assert "macro_f1_distinct" not in plain(EvalPrediction(predictions=logits(group_right), label_ids=labels))


def test_data_tokenizer_follows_the_dataset_and_refuses_mismatches(tmp_path):
    """Recipes tokenize like the prepared data (report.json options), and refuse a checkpoint or a
    second dataset tokenized another way instead of training on inputs it would read differently."""
    import json

    from traffic_moe_hf import TrafficTokenizer
    from traffic_moe_hf.recipes.common import data_tokenizer

    def dataset(name, **options):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps({"options": options}))
        return folder

    new = dataset("new", max_packets=8, max_bytes=128, packet_bytes=64, header_layout="compact")
    old = dataset("old", max_packets=8, max_bytes=64)  # written before header layouts: full layout
    tok = data_tokenizer(new)
    assert (tok.max_packets, tok.max_packet_bytes, tok.header_layout, tok.capture_bytes) == (8, 64, "compact", 128)
    legacy = data_tokenizer(old)
    assert (legacy.header_layout, legacy.max_packet_bytes, legacy.capture_bytes) == ("full", 64, 64)
    with pytest.raises(TrafficMoeError, match="tokenized differently"):
        data_tokenizer([new, old])
    ckpt = tmp_path / "ckpt"
    TrafficTokenizer(header_layout="full").save_pretrained(ckpt)
    with pytest.raises(TrafficMoeError, match="ckpt"):
        data_tokenizer(new, ckpt)
    TrafficTokenizer().save_pretrained(ckpt)
    assert data_tokenizer(new, ckpt).header_layout == "compact"
    legacy_ckpt = tmp_path / "legacy-ckpt"  # saved before header layouts: read as full, as `predict` reads it
    TrafficTokenizer(header_layout="full").save_pretrained(legacy_ckpt)
    config = json.loads((legacy_ckpt / "tokenizer_config.json").read_text())
    config.pop("header_layout"), config.pop("capture_bytes")
    (legacy_ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    assert data_tokenizer(old, legacy_ckpt).header_layout == "full"
    with pytest.raises(TrafficMoeError, match="legacy-ckpt"):
        data_tokenizer(new, legacy_ckpt)


def test_dense_baseline_takes_a_16_packet_window(tmp_path):
    """A long window (16 packets x 96 tokens = 1553 tokens, 1560 once padded to a multiple of 8; attack10
    at 16 x 64 takes 1048) holds more than BERT's usual 1024 positions. The dense baseline is built with enough positions (pretraining and fine-tuning), and
    a dense checkpoint with too few is refused with a clear error, not a tensor-size crash."""
    from transformers import BertConfig, BertForSequenceClassification

    from traffic_moe_hf.recipes.common import check_dense_positions, data_tokenizer, load_prepared

    data = tmp_path / "p16"
    prepare([str(DEMO)], str(data), labels="file", split="flow", ratios=(0.6, 0.2, 0.2), progress=False,
            max_packets=16, store_packets=16, packet_bytes=96)
    train = load_prepared(str(data))["train"]
    assert max(len(x) for x in train["input_ids"]) > 1024  # the window really is longer than 1024 tokens
    tokenizer = data_tokenizer(str(data))
    result = finetune(str(data), str(tmp_path / "dense"), config="tiny", dense=True, shots=4, min_steps=2, batch_size=36,
                      progress=False)
    assert result["model"] == "BertForSequenceClassification"
    model = BertForSequenceClassification.from_pretrained(tmp_path / "dense")
    assert model.config.max_position_embeddings == 1560
    pre = pretrain([str(data)], str(tmp_path / "pre"), config="tiny", dense=True, max_steps=1, batch_size=8, progress=False)
    assert pre["steps"] == 1
    short = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, max_position_embeddings=1024))
    with pytest.raises(TrafficMoeError, match=r"old-ckpt: this dense BERT has 1024 position embeddings but .* 1560 tokens"):
        check_dense_positions(short, tokenizer, "old-ckpt")


def test_plain_trainer_example_runs_end_to_end(tmp_path):
    """examples/trainer_recipe.py (prepare -> masked-packet pretraining -> fine-tuning with plain `Trainer`
    -> Hub folder reloaded through the Auto classes) on the shipped captures, shortened."""
    import importlib.util

    from transformers import AutoModelForSequenceClassification

    path = Path(__file__).resolve().parents[1] / "examples" / "trainer_recipe.py"
    spec = importlib.util.spec_from_file_location("trainer_recipe", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--out", str(tmp_path), "--pretrain-steps", "20", "--finetune-epochs", "3", "--no-progress"])
    assert result["test_flows"] > 20
    # 9 classes: chance is ~0.11; a short real fine-tune is far above it (0.88 accuracy when written)
    assert result["test_accuracy"] > 0.5 and result["test_macro_f1"] > 0.4
    model = AutoModelForSequenceClassification.from_pretrained(result["classifier"])
    assert type(model).__name__ == "TrafficMoeForSequenceClassification" and model.config.num_labels == 9


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


def test_balanced_subset_covers_every_class(prepared):
    """`robustness --max-samples N` evaluates on N flows covering the classes evenly (was the split's first N
    rows: a split is sorted by label, so 3 meant 3 flows of one class scored 1.000)."""
    from datasets import load_from_disk

    from traffic_moe_hf.recipes.common import balanced_subset

    test = load_from_disk(str(prepared))["test"]
    classes = len(set(test["label"]))
    assert len(set(test.select(range(9))["label"])) < classes  # the old way: the first rows
    subset = balanced_subset(test, 9, seed=0)
    assert len(subset) == 9 and len(set(subset["label"])) == min(9, classes)
    assert balanced_subset(test, 9, seed=0)["flow_id"] == subset["flow_id"] != balanced_subset(test, 9, seed=1)["flow_id"]
    assert len(balanced_subset(test, 10**6, seed=0)) == len(test)


def test_model_window_fits_the_data_or_is_said(capsys):
    """A model built for data with a window larger than the preset's embeddings gets embeddings that hold it
    (packet 40 or byte 300 used to share the last index silently); a checkpoint that is too small is said."""
    from traffic_moe_hf import TrafficTokenizer
    from traffic_moe_hf.recipes.common import moe_config, warn_window

    wide = TrafficTokenizer(max_packets=40, max_packet_bytes=300)
    config = moe_config("tiny", wide)
    assert config.max_packets >= 40 and config.max_position_embeddings >= 301
    assert moe_config("tiny", TrafficTokenizer()).to_dict() == moe_config("tiny").to_dict()  # default window: unchanged
    assert not warn_window(config, wide, "x")
    assert warn_window(moe_config("tiny"), wide, "ckpt")
    assert "40 packets per flow" in capsys.readouterr().err


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


def test_open_set_report_scores_separation_and_thresholds():
    """The open-set figures on known inputs: thresholds keep at least their share of the own flows, a foreign
    source fully below them is all rejected (ROC AUC 1), one drawn like the own flows is not told apart (0.5)."""
    from traffic_moe_hf.recipes import open_set

    inside = np.linspace(0.9, 1.0, 200)
    table = open_set.thresholds(inside, correct=np.arange(200) % 2 == 0)
    assert [row["keep"] for row in table] == [0.99, 0.95, 0.90]
    assert all(row["inside_kept"] >= row["keep"] for row in table)
    assert table[0]["threshold"] <= table[1]["threshold"] <= table[2]["threshold"]
    assert 0.4 < table[2]["accuracy_kept"] < 0.6
    below = open_set.report(inside, np.linspace(0.1, 0.8, 50), table)
    assert below["auroc"] == 1.0 and set(below["rejected"].values()) == {1.0}
    alike = open_set.report(inside, inside.copy(), table)
    assert abs(alike["auroc"] - 0.5) < 1e-9 and alike["rejected"]["0.95"] < 0.06
    assert np.allclose(open_set.top_probability(np.log([[0.2, 0.8], [0.5, 0.5]])), [0.8, 0.5])
    assert np.allclose(open_set.energy(np.array([[0.0, 0.0], [1000.0, 1000.0]])), [np.log(2), 1000 + np.log(2)])


def test_open_set_evaluate_and_predict_reject_the_same_foreign_flows(prepared, finetuned, tmp_path):
    """`evaluate --ood` on real foreign traffic (the shipped tls9 re-capture, prepared like the model's data):
    the foreign samples whose label the model knows (ssh) are left out and counted, the model is less sure of
    the rest than of its own test flows, and `predict --reject-below` with the reported threshold labels
    `unknown` the same share of those flows' captures as evaluate said it would reject."""
    out, _ = finetuned
    foreign_captures = sorted(p for p in (REPO / "data" / "shifted" / "tls9-mtu700").glob("*.pcap") if p.stem != "ssh")
    foreign = tmp_path / "foreign"
    prepare([str(REPO / "data" / "shifted" / "tls9-mtu700")], str(foreign), labels="file", split="none",
            progress=False, **SMALL)
    result = evaluate(str(prepared), str(out), audit=False, ood=[str(foreign)], json_out=tmp_path / "ev.json")
    source = result["open_set"]["sources"][str(foreign)]
    ssh = sum(1 for x in datasets.load_from_disk(str(foreign))["test"]["source_file"] if x.endswith("ssh.pcap"))
    assert ssh > 0 and source["excluded_known_label"] == ssh
    assert source["auroc"] > 0.8, source  # foreign traffic is less confidently classified than the model's own
    assert 0.0 <= source["auroc_energy"] <= 1.0
    assert Path(result["plots"]["open_set"]).is_file()
    table = {f"{row['keep']:.2f}": row for row in result["open_set"]["thresholds"]}
    assert all(row["inside_kept"] >= row["keep"] for row in table.values())
    # `--update-card` carries the thresholds into a shared model's card (on a copy)
    import shutil

    from traffic_moe_hf.recipes.evaluate import add_to_model_card

    shutil.copytree(out, tmp_path / "card-copy")
    card = add_to_model_card(tmp_path / "card-copy", result).read_text()
    assert f"| {table['0.95']['threshold']:.6f} | " in card and "`foreign` rejected" in card

    threshold = table["0.95"]["threshold"]
    rows_file = tmp_path / "rejected.csv"
    summary = predict_files([str(p) for p in foreign_captures], str(out), str(rows_file), progress=False,
                            reject_below=threshold)
    with open(rows_file) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == source["samples"] and summary["flows_unknown"] == sum(r["label"] == "unknown" for r in rows)
    assert all((r["label"] == "unknown") == (float(r["probability"]) < threshold) for r in rows)
    assert all(r["closest_label"] in result["per_class"] for r in rows)
    # the flows predict reads from the captures are the ones prepare made: the same share rejected (to a flow
    # or two whose probability sits at the threshold's sixth decimal)
    assert abs(summary["flows_unknown"] - source["rejected"]["0.95"] * source["samples"]) <= 2
    # without --reject-below the output is as before: no `unknown`, no extra column
    plain = tmp_path / "plain.csv"
    predict_files([str(foreign_captures[0])], str(out), str(plain), progress=False)
    with open(plain) as f:
        reader = csv.DictReader(f)
        assert "closest_label" not in reader.fieldnames and all(r["label"] != "unknown" for r in reader)
    from traffic_moe_hf.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--data", "d", "--model", "m", "--json", "o.json", "--ood", "a",
                                      "--ood", "b", "--ood-exclude", "https"])
    assert args.ood == ["a", "b"] and args.ood_exclude == ["https"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "x.pcap", "--model", "m", "--out", "o.csv", "--reject-below", "1.5"])
    with pytest.raises(TrafficMoeError, match="not a dataset"):
        evaluate(str(prepared), str(out), audit=False, ood=[str(tmp_path / "missing")])

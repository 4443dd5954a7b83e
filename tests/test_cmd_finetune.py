"""`traffic-moe finetune` on the shipped real captures: the fine-tuned model end to end (its card, evaluate,
predict), few-shot, the dense baseline, self-training, the probe head, labels carried by name, best-checkpoint
selection, the data's tokenizer, a 16-packet window, and the plain-`Trainer` example.

The shared fixtures (``prepared``: the demo slice prepared once; ``pretrained`` and ``finetuned``: a tiny
model pretrained and fine-tuned on it once per session) are in conftest.py.
"""

from __future__ import annotations

import csv
import json
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
from traffic_moe_hf.recipes.pretrain import pretrain

from conftest import DEMO


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


def test_finetune_refuses_a_train_split_with_one_label(tmp_path):
    """All captures in one folder with `--labels dir` give one label: a clear error, not a 1-class model."""
    from traffic_moe_hf.data.prepare import prepare

    data = tmp_path / "one-label"
    prepare([str(DEMO / "dns.pcap"), str(DEMO / "mqtt.pcap")], str(data), labels="dir", progress=False)
    with pytest.raises(TrafficMoeError, match=r"at least two labels in the train split, found \['loopback9'\]"):
        finetune(str(data), str(tmp_path / "model"), config="tiny", epochs=1, progress=False)


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


def test_shots_that_repeat_one_flow_are_said(prepared, tmp_path, capsys):
    """A few-shot draw of identical flows (the demo slice, like loopback9, holds classes made mostly of one
    repeated input) teaches fewer examples than --shots says: finetune names those classes and records the
    distinct count per class in its summary."""
    from traffic_moe_hf.recipes.common import few_shot_indices, label_names, repeated_inputs

    train = datasets.load_from_disk(str(prepared))["train"]
    names = label_names(train)
    draws = {seed: repeated_inputs(train.select(few_shot_indices(train, 5, seed))) for seed in range(5)}
    seed, repeated = next((s, r) for s, r in draws.items() if r)  # real captures: some draw repeats a flow
    for label, (distinct, drawn) in repeated.items():
        inputs = {tuple(ids) for ids, lab in zip(train["input_ids"], train["label"]) if lab == label}
        assert 1 <= distinct < drawn == 5 and distinct <= len(inputs)
    row = train[0]  # the same flow twice beside another of its class: 2 distinct of 3
    other = next(i for i, (ids, lab) in enumerate(zip(train["input_ids"], train["label"]))
                 if lab == row["label"] and ids != row["input_ids"])
    assert repeated_inputs(train.select([0, 0, other])) == {row["label"]: (2, 3)}
    assert repeated_inputs(train.select([0, other])) == {}

    summary = finetune(str(prepared), str(tmp_path / "m"), config="tiny", shots=5, seed=seed, min_steps=1,
                       batch_size=8, progress=False)
    err = capsys.readouterr().err
    assert f"--shots 5 (seed {seed}) drew identical flows" in err
    assert summary["shots_distinct"] == {names[k]: d for k, (d, _) in sorted(repeated.items(), key=lambda kv: names[kv[0]])}
    for label, (distinct, drawn) in repeated.items():
        assert f"{names[label]} ({distinct} distinct of {drawn})" in err


def test_distinct_shots_draws_different_inputs_where_a_class_has_them(prepared, tmp_path, capsys):
    """--distinct-shots: each class's K flows come from min(K, its distinct inputs) different inputs (the plain
    draw, unchanged for the same seed, repeats some on the demo slice's real flows); without --shots it is refused."""
    from traffic_moe_hf.recipes.common import few_shot_indices, input_keys, repeated_inputs

    train = datasets.load_from_disk(str(prepared))["train"]
    labels, keys = np.asarray(train["label"]), input_keys(train)
    content = [(tuple(i), tuple(d), lab) for i, d, lab in zip(train["input_ids"], train["direction_ids"], labels)]
    assert len(set(zip(keys, content))) == len(set(keys)) == len(set(content))  # same key exactly when same input
    assert len(set(keys)) < len(keys)  # the slice repeats some inputs: the draws below are a real test
    for seed in range(3):
        plain, distinct = few_shot_indices(train, 5, seed), few_shot_indices(train, 5, seed, distinct=True)
        assert few_shot_indices(train, 5, seed) == plain  # the tables' draw is kept
        for label in np.unique(labels):
            available = len(set(keys[labels == label]))
            picked = [i for i in distinct if labels[i] == label]
            assert len(picked) == min(5, int((labels == label).sum())) and len(set(picked)) == len(picked)
            assert len(set(keys[picked])) == min(5, available)
    assert any(repeated_inputs(train.select(few_shot_indices(train, 5, s))) for s in range(3))
    summary = finetune(str(prepared), str(tmp_path / "m"), config="tiny", shots=5, distinct_shots=True, min_steps=1,
                       batch_size=8, progress=False)
    assert summary["distinct_shots"] is True and summary["train_samples"] == len(few_shot_indices(train, 5, 0, True))
    with pytest.raises(TrafficMoeError, match="--distinct-shots is for few-shot runs"):
        finetune(str(prepared), str(tmp_path / "x"), config="tiny", distinct_shots=True, progress=False)


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

"""`traffic-moe pretrain` on the shipped real captures: the masked-packet collator, flow-contrastive views and
their budgets, the loss falling, resuming a run, a 2-process (torchrun, gloo) run, and a model built for the
data's window.

The shared fixtures (``prepared``: the demo slice prepared once; ``pretrained`` and ``finetuned``: a tiny
model pretrained and fine-tuned on it once per session) are in conftest.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from traffic_moe_hf.errors import TrafficMoeError
from traffic_moe_hf.recipes.pretrain import MaskedPacketCollator, pretrain
from traffic_moe_hf.tokenization_traffic_moe import BYTE_OFFSET, MASK_ID, PKT_ID


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
    with pytest.raises(TrafficMoeError, match="--view-copies 2 makes views for the contrastive term, which is off"):
        pretrain_mod.pretrain([str(prepared)], "unused", config="tiny", view_copies=2)  # contrastive off (default)

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
        pretrain_mod.pretrain([str(prepared)], "unused", config="tiny", view_copies=2, view_budgets="ranges",
                              contrastive=1.0)
    assert len(captured["parts"]) == 2
    first, second = captured["parts"]
    assert len(first) == len(second) == len(train)
    assert first["input_ids"] == second["input_ids"]  # the same flows ...
    assert first["view_input_ids"] != second["view_input_ids"]  # ... with other views


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
        "                save_steps=100, seed=int(os.environ['RANK']), contrastive=1.0)\n"
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


def test_service_classes_labels_and_collator(prepared, monkeypatch):
    """The service term's labels: the responder's transport/port from the flow table, a class only when enough
    flows in enough capture files have it, -100 for the rest; the collator hands them over beside the batch."""
    from datasets import load_from_disk

    from traffic_moe_hf import TrafficTokenizer
    from traffic_moe_hf.recipes import pretrain as recipe

    assert recipe.service_key("tcp 10.0.0.1:51000-10.0.0.2:443") == "tcp/443"
    assert recipe.service_key("udp [2001:db8::1]:5353-[2001:db8::2]:53") == "udp/53"
    assert recipe.service_key("") is None and recipe.service_key("tcp nothing") is None
    train = load_from_disk(str(prepared))["train"]
    # the demo slice is one capture per protocol: no port is in 3 capture files, so no class
    vocab = recipe.service_vocabulary([train])
    assert vocab["classes"] == [] and vocab["flows_other_port"] == len(train)
    # two splits of the same captures count their files once; a table without five_tuple is counted, not guessed
    monkeypatch.setattr(recipe, "SERVICE_MIN_FLOWS", 2)
    monkeypatch.setattr(recipe, "SERVICE_MIN_FILES", 1)
    vocab = recipe.service_vocabulary([train, train.remove_columns(["five_tuple"])])
    ports = {t.rsplit(":", 1)[-1] for t in train["five_tuple"]}
    assert {"tcp/22", "udp/53", "tcp/80"} <= set(vocab["classes"]) and "53" in ports
    assert vocab["flows_without_port"] == len(train)
    assert vocab["flows_labelled"] + vocab["flows_other_port"] == len(train)
    labels = recipe.service_labels(train, vocab["classes"])
    for label, five_tuple in zip(labels, train["five_tuple"]):
        key = recipe.service_key(five_tuple)
        assert label == (vocab["classes"].index(key) if key in vocab["classes"] else -100)
    rows = [{**{k: train[i][k] for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids")},
             "service_label": labels[i]} for i in range(4)]
    batch = recipe.ServiceLabelCollator(MaskedPacketCollator(TrafficTokenizer()))(rows)
    assert batch["service_labels"].tolist() == labels[:4] and batch["input_ids"].shape[0] == 4


def test_service_term_trains_and_leaves_the_saved_model(prepared, tmp_path, monkeypatch, capsys):
    """With the service term on, its loss is logged and falls, the head is not part of the saved model, and a
    resume that would change the term is named before training."""
    from safetensors import safe_open

    from traffic_moe_hf.recipes import pretrain as recipe

    common = dict(config="tiny", max_steps=24, batch_size=16, lr=3e-3, save_steps=12, progress=False, seed=1,
                  contrastive=0.0)
    monkeypatch.setattr(recipe, "SERVICE_MIN_FILES", 1)
    summary = pretrain([str(prepared)], str(tmp_path / "svc"), **common)
    assert summary["service"] == 1.0 and len(summary["services"]["classes"]) >= 5
    history = json.loads((tmp_path / "svc" / "pretrain_summary.json").read_text())["log_history"]
    service = [h["service_loss"] for h in history if "service_loss" in h]
    assert len(service) >= 2 and service[-1] < service[0]
    with safe_open(str(tmp_path / "svc" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("service_head")]
    with safe_open(str(tmp_path / "svc" / "checkpoints" / "checkpoint-24" / "model.safetensors"), framework="pt") as f:
        assert "service_head.weight" in set(f.keys())  # the Trainer's checkpoints keep it for --resume
    with pytest.raises(TrafficMoeError, match="pretrained with .* service classes, this run has no service term"):
        pretrain([str(prepared)], str(tmp_path / "svc"), resume=True, **{**common, "service": 0.0})
    # ... and so is one that would turn the contrastive term on (the run's log has no contrastive loss)
    with pytest.raises(TrafficMoeError, match="pretrained without the contrastive term, this run has it"):
        pretrain([str(prepared)], str(tmp_path / "svc"), resume=True, **{**common, "contrastive": 1.0})
    # where the corpus has no service class the term is off, and that is said
    monkeypatch.setattr(recipe, "SERVICE_MIN_FILES", 3)
    off = pretrain([str(prepared)], str(tmp_path / "off"), **{**common, "max_steps": 2})
    assert off["service"] == 0.0 and "the service loss is off" in capsys.readouterr().err


def test_service_loss_on_batches_with_and_without_a_known_service(prepared, tmp_path):
    """The service term adds a cross-entropy where a batch has known services; a batch with none stays finite and
    still gives the head a (zero) gradient, so no parameter goes unused (DDP would stop the step)."""
    from datasets import load_from_disk
    from transformers import Trainer, TrainingArguments

    from traffic_moe_hf import TrafficMoeForMaskedLM, TrafficTokenizer
    from traffic_moe_hf.recipes import pretrain as recipe
    from traffic_moe_hf.recipes.common import moe_config

    torch.manual_seed(0)
    model = TrafficMoeForMaskedLM(moe_config("tiny", TrafficTokenizer()))
    recipe.attach_service_head(model, 3)
    trainer = recipe.objectives_trainer(Trainer, 0.0, 0.1, 1.0)(
        model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))
    train = load_from_disk(str(prepared))["train"]
    columns = ("input_ids", "attention_mask", "packet_ids", "direction_ids")
    collator = recipe.ServiceLabelCollator(MaskedPacketCollator(TrafficTokenizer(), mask_seed=0))
    losses = {}
    for name, label in (("known", 1), ("none", -100)):
        batch = collator([{**{k: train[i][k] for k in columns}, "service_label": label} for i in range(8)])
        torch.manual_seed(0)
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        assert torch.isfinite(loss) and model.service_head.weight.grad is not None
        losses[name] = float(loss.detach())
    # the known-service batch adds ~ln(3) (a fresh head) on top of the same masked-packet loss
    assert 0.5 < losses["known"] - losses["none"] < 2.0
    assert trainer._sums["service_loss"][1] == 1


def test_dense_service_term_trains_the_pooler_its_classifier_reads(prepared, tmp_path, monkeypatch):
    """The dense baseline's classifier reads BERT's pooler on [CLS]: with the service term, pretraining trains that
    pooler (a BertForMaskedLM has none of its own), saves it with the model, and a sequence classifier made from the
    folder starts from it — not from a random pooler; continued pretraining from the folder keeps it."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from traffic_moe_hf.recipes import pretrain as recipe

    monkeypatch.setattr(recipe, "SERVICE_MIN_FILES", 1)
    common = dict(config="tiny", dense=True, max_steps=6, batch_size=16, lr=3e-3, save_steps=100, progress=False, seed=2)
    summary = pretrain([str(prepared)], str(tmp_path / "dense"), **common)
    assert summary["service"] == 1.0
    saved = load_file(tmp_path / "dense" / "model.safetensors")
    assert "bert.pooler.dense.weight" in saved and not [k for k in saved if k.startswith("service_head")]
    classifier = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "dense"), num_labels=3)
    torch.testing.assert_close(classifier.bert.pooler.dense.weight.detach(), saved["bert.pooler.dense.weight"])
    # the pooler was trained: its weights moved from the initialisation a run with no steps of it would have
    untrained = pretrain([str(prepared)], str(tmp_path / "none"), **{**common, "lr": 1e-12, "max_steps": 1})
    assert untrained["service"] == 1.0
    start = load_file(tmp_path / "none" / "model.safetensors")["bert.pooler.dense.weight"]
    assert (saved["bert.pooler.dense.weight"] - start).abs().max() > 1e-3
    # continued pretraining from the folder starts from its pooler (BertForMaskedLM.from_pretrained drops it)
    cont = pretrain([str(prepared)], str(tmp_path / "cont"), init_from=str(tmp_path / "dense"), max_steps=1,
                    batch_size=16, lr=1e-12, progress=False)
    assert cont["service"] == 1.0
    torch.testing.assert_close(load_file(tmp_path / "cont" / "model.safetensors")["bert.pooler.dense.weight"],
                               saved["bert.pooler.dense.weight"], rtol=1e-4, atol=1e-6)

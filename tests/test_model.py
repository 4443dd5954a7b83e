"""The sparse-MoE encoder on real traffic: routing, losses, attention paths, expert paths, padding."""

from __future__ import annotations

import copy

import pytest
import torch

from traffic_moe_hf import (
    TrafficMoeConfig,
    TrafficMoeForMaskedLM,
    TrafficMoeForSequenceClassification,
    TrafficMoeModel,
    count_parameters,
)
from traffic_moe_hf.modeling_traffic_moe import packet_byte_offsets, router_losses


def tiny(**overrides) -> TrafficMoeConfig:
    defaults = dict(num_labels=9, hidden_dropout_prob=0.0, classifier_dropout=0.0)
    return TrafficMoeConfig.from_preset("tiny", **{**defaults, **overrides})


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def test_presets_and_validation():
    base = TrafficMoeConfig.from_preset("base")
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads) == (768, 12, 12)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        TrafficMoeConfig(num_experts=4, num_experts_per_tok=5)
    with pytest.raises(ValueError, match="mlp_layer_types"):
        TrafficMoeConfig(num_hidden_layers=2, mlp_layer_types=["moe"])
    with pytest.raises(ValueError, match="unknown preset"):
        TrafficMoeConfig.from_preset("huge")
    every_other = TrafficMoeModel(tiny(num_hidden_layers=4, mlp_layer_types=["dense", "moe"] * 2))
    assert [layer.is_moe for layer in every_other.layers] == [False, True, False, True]


def test_byte_offsets_follow_packets():
    packet_ids = torch.tensor([[0, 1, 1, 1, 2, 2, 3, 0, 0]])
    assert packet_byte_offsets(packet_ids).tolist() == [[0, 0, 1, 2, 0, 1, 0, 0, 1]]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_experts_per_tok=1),
        dict(num_experts_per_tok=2),
        dict(num_experts_per_tok=2, num_shared_experts=1),
        dict(num_experts_per_tok=2, norm_topk_prob=True, classifier_pooling="cls"),
    ],
    ids=["top1", "top2", "top2+shared", "top2-norm-clspool"],
)
def test_configs_train_on_real_batch(real_batch, overrides):
    batch, _ = real_batch
    torch.manual_seed(0)
    model = TrafficMoeForSequenceClassification(tiny(**overrides))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(**batch)
        losses.append(out.loss.item())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert out.logits.shape == (batch["input_ids"].shape[0], 9)
    assert out.aux_loss is not None and out.z_loss is not None
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    if overrides.get("num_shared_experts"):
        assert model.model.layers[0].mlp.shared_expert is not None


@pytest.mark.parametrize("model_class", [TrafficMoeForSequenceClassification, TrafficMoeForMaskedLM])
def test_every_expert_receives_gradient(real_batch, model_class):
    batch, _ = real_batch
    torch.manual_seed(0)
    model = model_class(tiny(num_experts=4, num_experts_per_tok=2))
    if model_class is TrafficMoeForMaskedLM:  # predict every byte back
        batch = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
    model(**batch).loss.backward()
    for layer in model.model.layers:
        grad = layer.mlp.experts.gate_up_proj.grad
        per_expert = grad.abs().flatten(1).sum(1)
        assert (per_expert > 0).all(), f"experts without gradient: {per_expert}"
        assert (layer.mlp.gate.weight.grad.abs().sum(1) > 0).all()


def test_aux_loss_alone_balances_routing(real_batch):
    """Train only the routers on the load-balancing loss: the routing of a real batch gets more even."""
    batch, _ = real_batch
    torch.manual_seed(0)
    model = TrafficMoeModel(tiny(num_experts=4, num_experts_per_tok=1))
    # start from a skewed router so there is imbalance to remove
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.gate.weight.normal_(0.0, 1.0)
    routers = [layer.mlp.gate.weight for layer in model.layers]
    optimizer = torch.optim.Adam(routers, lr=0.05)

    def imbalance():
        with torch.no_grad():
            out = model(**model_inputs(batch), output_router_logits=True)
        mask = batch["attention_mask"].reshape(-1).bool()
        counts = [torch.bincount(l.argmax(-1)[mask], minlength=4).float() for l in out.router_logits]
        return max((c.max() / c.mean()).item() for c in counts)

    before = imbalance()
    for _ in range(60):
        out = model(**model_inputs(batch), output_router_logits=True)
        balance, _ = router_losses(out.router_logits, 1, batch["attention_mask"])
        balance.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = imbalance()
    assert before > 1.5, before
    assert after < before * 0.75, (before, after)


def test_padding_invariance(real_batch):
    """A padded batch gives each flow exactly the outputs it gets alone, unpadded."""
    batch, _ = real_batch
    torch.manual_seed(0)
    model = TrafficMoeForMaskedLM(tiny()).eval()
    with torch.no_grad():
        padded = model(**model_inputs(batch)).logits
        lengths = batch["attention_mask"].sum(1)
        assert (lengths < batch["input_ids"].shape[1]).any(), "batch has no padding"
        for i in range(len(lengths)):
            n = int(lengths[i])
            alone = model(**{k: v[i : i + 1, :n] for k, v in model_inputs(batch).items()}).logits
            torch.testing.assert_close(padded[i, :n], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_class", [TrafficMoeForMaskedLM, TrafficMoeForSequenceClassification])
def test_sdpa_and_eager_attention_agree(real_batch, model_class):
    batch, _ = real_batch
    torch.manual_seed(0)
    sdpa = model_class(tiny()).eval()
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    with torch.no_grad():
        a = sdpa(**model_inputs(batch)).logits
        b = eager(**model_inputs(batch)).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm", "dropless"])
def test_experts_implementations_agree_with_eager(real_batch, implementation):
    batch, _ = real_batch
    torch.manual_seed(0)
    reference = TrafficMoeForSequenceClassification(tiny(num_experts=4, num_experts_per_tok=2))
    reference.set_experts_implementation("eager")
    other = copy.deepcopy(reference)
    other.set_experts_implementation(implementation)
    assert other.config._experts_implementation == implementation
    out_ref = reference(**batch)
    out_other = other(**batch)
    torch.testing.assert_close(out_other.logits, out_ref.logits, rtol=1e-4, atol=1e-5)
    out_ref.loss.backward()
    out_other.loss.backward()
    for (name, p_ref), (_, p_other) in zip(reference.named_parameters(), other.named_parameters()):
        torch.testing.assert_close(p_other.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_gradient_checkpointing_gives_same_gradients(real_batch):
    batch, _ = real_batch
    torch.manual_seed(0)
    plain = TrafficMoeForSequenceClassification(tiny())
    checkpointed = copy.deepcopy(plain)
    enable = getattr(checkpointed, "activation_checkpointing_enable", None) or checkpointed.gradient_checkpointing_enable
    enable()
    assert checkpointed.model.layers[0].gradient_checkpointing
    plain.train()
    checkpointed.train()
    plain(**batch).loss.backward()
    checkpointed(**batch).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_router_logits_and_hidden_states_on_request(real_batch):
    batch, _ = real_batch
    model = TrafficMoeModel(tiny(num_hidden_layers=3, mlp_layer_types=["moe", "dense", "moe"])).eval()
    out = model(**model_inputs(batch), output_router_logits=True, output_hidden_states=True, output_attentions=True)
    tokens = batch["input_ids"].numel()
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (tokens, 4)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3
    assert model(**model_inputs(batch)).router_logits is None
    as_tuple = model(**model_inputs(batch), return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)


def test_num_items_in_batch_makes_accumulation_exact(real_batch):
    """Two micro-batches with the Trainer's num_items_in_batch sum to the full batch's loss (router losses
    off), and the router losses' weights sum to one over the micro-batches (not one per micro-batch)."""
    batch, _ = real_batch
    torch.manual_seed(0)
    model = TrafficMoeForSequenceClassification(tiny(router_aux_loss_coef=0.0, router_z_loss_coef=0.0)).eval()
    full = model(**batch).loss
    halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
    n = batch["labels"].numel()
    summed = sum(model(**half, num_items_in_batch=n).loss for half in halves)
    torch.testing.assert_close(summed, full)

    model.config.router_aux_loss_coef = 1.0
    outs = [model(**half, num_items_in_batch=n) for half in halves]
    plain = [model(**half) for half in halves]
    # plain loss = mean CE + router terms; with the count, CE becomes sum / n and the router terms get weight share
    expected = sum((len(half["labels"]) / n) * p.loss for half, p in zip(halves, plain))
    torch.testing.assert_close(sum(o.loss for o in outs), expected)


def test_parameter_counts():
    model = TrafficMoeModel(tiny(num_experts=4, num_experts_per_tok=1))
    total, active = count_parameters(model)
    experts = sum(layer.mlp.experts.gate_up_proj.numel() + layer.mlp.experts.down_proj.numel() for layer in model.layers)
    assert total == sum(p.numel() for p in model.parameters())
    assert active == total - experts + experts // 4


@pytest.mark.parametrize("model_class", [TrafficMoeModel, TrafficMoeForMaskedLM, TrafficMoeForSequenceClassification])
def test_router_logits_flag_obeys_the_caller(real_batch, model_class):
    """A config with output_router_logits=True returns router logits unless the caller passes False; with
    labels the router losses are still added (they need the logits), only the returned field obeys."""
    batch, _ = real_batch
    inputs = model_inputs(batch)
    torch.manual_seed(0)
    model = model_class(tiny(output_router_logits=True)).eval()
    with torch.no_grad():
        assert len(model(**inputs).router_logits) == 2  # the config's default
        assert model(**inputs, output_router_logits=False).router_logits is None
        if model_class is TrafficMoeModel:
            return
        labels = batch["labels"] if model_class is TrafficMoeForSequenceClassification else batch["input_ids"]
        with_labels = model(**inputs, labels=labels, output_router_logits=False)
        assert with_labels.router_logits is None and with_labels.aux_loss is not None
        model.config.output_router_logits = False
        assert model(**inputs, labels=labels).router_logits is None
        asked = model(**inputs, labels=labels, output_router_logits=True)
        assert len(asked.router_logits) == 2
        torch.testing.assert_close(asked.loss, with_labels.loss)


def test_recorded_outputs_are_the_layers_outputs(real_batch):
    """Hidden states, attentions and router logits recorded by transformers' output hooks are what the layers
    compute: hidden state i + 1 is layer i's output on hidden state i, the router logits are the router's on
    that layer's normalised input, and the attention weights (asked of an sdpa model) are eager's."""
    batch, _ = real_batch
    inputs = model_inputs(batch)
    model = TrafficMoeModel(tiny(num_hidden_layers=3, mlp_layer_types=["moe", "dense", "moe"])).eval()
    with torch.no_grad():
        out = model(**inputs, output_router_logits=True, output_hidden_states=True, output_attentions=True)
        from transformers.masking_utils import create_bidirectional_mask

        attn_mask = create_bidirectional_mask(config=model.config, inputs_embeds=out.hidden_states[0],
                                              attention_mask=inputs["attention_mask"])
        h = out.hidden_states[0]
        torch.testing.assert_close(h, model.embeddings(inputs["input_ids"], inputs["packet_ids"], inputs["direction_ids"]))
        routers = iter(out.router_logits)
        for i, layer in enumerate(model.layers):
            if layer.is_moe:
                flat = layer.mlp_norm(h + layer.attn(layer.attn_norm(h), attn_mask)[0]).reshape(-1, h.shape[-1])
                torch.testing.assert_close(next(routers), layer.mlp.gate(flat)[0])
            h = layer(h, attn_mask)
            if i < 2:
                torch.testing.assert_close(out.hidden_states[i + 1], h)
        torch.testing.assert_close(out.hidden_states[-1], model.final_norm(h))
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        reference = eager(**inputs, output_attentions=True).attentions
    assert all(a is not None for a in out.attentions)
    for a, b in zip(out.attentions, reference):
        torch.testing.assert_close(a, b)

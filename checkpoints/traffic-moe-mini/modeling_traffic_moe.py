"""Traffic-MoE: a bidirectional Transformer encoder over traffic bytes with sparse Mixture-of-Experts FFNs.

Layout follows transformers' own models: ModernBERT for the encoder (attention interface, bidirectional
mask, thin task heads) and OLMoE/Mixtral for the MoE (top-k router, experts as fused 3-D weights behind
`@use_experts_implementation`, Switch load-balancing loss). This file is shipped as remote code with
every saved checkpoint, so it imports only its sibling files, torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.integrations import use_experts_implementation
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_traffic_moe import TrafficMoeConfig
from .hub import TrafficMoeHubMixin
from .moe_dispatch import AUTO, exporting, static_experts_forward


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class TrafficMoeModelOutput(ModelOutput):
    """Encoder output. `router_logits`: one `(batch * seq_len, num_experts)` tensor per MoE layer."""

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class TrafficMoeMaskedLMOutput(ModelOutput):
    """`loss` = masked-byte cross-entropy + weighted router losses; `aux_loss` = load-balancing loss."""

    loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class TrafficMoeSequenceClassifierOutput(ModelOutput):
    """`loss` = classification loss + weighted router losses; `aux_loss` = load-balancing loss."""

    loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    z_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


# -------------------------------------------------------------------------------------------- embeddings
def packet_byte_offsets(packet_ids: torch.Tensor) -> torch.Tensor:
    """Offset of every token inside its packet: 0 at a packet's first token (`[PKT]`), then 1, 2, ...

    A packet is a run of equal `packet_ids`; each run's first position is its smallest (a scatter-min per run,
    then a gather): on device, no host sync, and exportable to ONNX (which has no running maximum).
    """
    positions = torch.arange(packet_ids.shape[-1], device=packet_ids.device).expand_as(packet_ids)
    starts = torch.ones_like(packet_ids, dtype=torch.long)
    starts[..., 1:] = (packet_ids[..., 1:] != packet_ids[..., :-1]).long()
    run = starts.cumsum(dim=-1) - 1  # run index of every token
    run_start = torch.full_like(positions, packet_ids.shape[-1]).scatter_reduce(-1, run, positions, reduce="amin")
    return positions - run_start.gather(-1, run)


class TrafficMoeEmbeddings(nn.Module):
    """Byte embedding + packet index + packet direction + byte offset inside the packet."""

    def __init__(self, config: TrafficMoeConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.packet_embeddings = nn.Embedding(config.max_packets + 1, config.hidden_size)
        self.direction_embeddings = nn.Embedding(config.num_directions, config.hidden_size)
        self.offset_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        packet_ids: torch.LongTensor | None,
        direction_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        shape = inputs_embeds.shape[:-1]
        if packet_ids is None:  # plain byte strings: one packet, offsets = positions
            packet_ids = torch.zeros(shape, dtype=torch.long, device=inputs_embeds.device)
        if direction_ids is None:
            direction_ids = torch.zeros(shape, dtype=torch.long, device=inputs_embeds.device)
        offsets = packet_byte_offsets(packet_ids).clamp(max=self.config.max_position_embeddings - 1)
        embeddings = (
            inputs_embeds
            + self.packet_embeddings(packet_ids.clamp(max=self.config.max_packets))
            + self.direction_embeddings(direction_ids)
            + self.offset_embeddings(offsets)
        )
        return self.dropout(self.norm(embeddings))


# --------------------------------------------------------------------------------------------- attention
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # the sdpa mask (True = attend)
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    elif attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class TrafficMoeAttention(nn.Module):
    """Bidirectional multi-head self-attention through transformers' attention interface."""

    def __init__(self, config: TrafficMoeConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if kwargs.get("output_attentions"):  # weights asked for: only the eager path computes them
            attention_interface = eager_attention_forward
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.o_proj(attn_output), attn_weights


# ---------------------------------------------------------------------------------------------- FFN / MoE
class TrafficMoeMLP(nn.Module):
    """Gated FFN, act(gate) * up -> down: the dense layers' FFN and the shared expert."""

    def __init__(self, config: TrafficMoeConfig, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(hidden_states).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


@use_experts_implementation
class TrafficMoeExperts(nn.Module):
    """The routed experts of one layer, stored as fused 3-D weights (one slice per expert).

    The forward below is the reference (`eager`) path; `experts_implementation` switches to
    transformers' `grouped_mm`/`batched_mm` or this project's `dropless` / `static` dispatch; the default,
    `auto`, picks one per forward by the device and dtype it runs on (moe_dispatch.py).
    """

    def __init__(self, config: TrafficMoeConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.hidden_dim = config.hidden_size
        self.intermediate_dim = config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, 2 * self.intermediate_dim, self.hidden_dim))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim, self.intermediate_dim))
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_idx = expert_idx[0]
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            gate, up = F.linear(hidden_states[token_idx], self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
            current = F.linear(self.act_fn(gate) * up, self.down_proj[expert_idx])
            current = current * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current.to(final_hidden_states.dtype))
        return final_hidden_states


class TrafficMoeRouter(nn.Module):
    """Token-choice top-k router: softmax over experts, keep the k largest."""

    def __init__(self, config: TrafficMoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.zeros(config.num_experts, config.hidden_size))

    def forward(self, hidden_states: torch.Tensor):
        router_logits = F.linear(hidden_states, self.weight)  # (tokens, num_experts)
        router_probs = F.softmax(router_logits, dtype=torch.float32, dim=-1)
        top_k_weights, top_k_index = torch.topk(router_probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_k_weights.to(hidden_states.dtype), top_k_index


class TrafficMoeSparseMoeBlock(nn.Module):
    """Router + routed experts (dropless: every token reaches its k experts) + optional shared expert."""

    def __init__(self, config: TrafficMoeConfig):
        super().__init__()
        self.gate = TrafficMoeRouter(config)
        self.experts = TrafficMoeExperts(config)
        self.shared_expert = (
            TrafficMoeMLP(config, config.num_shared_experts * config.intermediate_size)
            if config.num_shared_experts > 0
            else None
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        _, top_k_weights, top_k_index = self.gate(flat)  # router logits: recorded from the router by a hook
        if exporting():  # traced / exported: the one implementation a graph records exactly, whatever was chosen
            output = static_experts_forward(self.experts, flat, top_k_index, top_k_weights)
        else:
            output = self.experts(flat, top_k_index, top_k_weights)
        if self.shared_expert is not None:
            output = output + self.shared_expert(flat)
        return output.reshape(shape)


class TrafficMoeLayer(GradientCheckpointingLayer):
    """Pre-norm encoder layer: x + Attn(LN(x)), then x + FFN(LN(x)) with a sparse or dense FFN."""

    def __init__(self, config: TrafficMoeConfig, layer_idx: int):
        super().__init__()
        self.is_moe = config.mlp_layer_types[layer_idx] == "moe"
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = TrafficMoeAttention(config, layer_idx)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TrafficMoeSparseMoeBlock(config) if self.is_moe else TrafficMoeMLP(config, config.intermediate_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attn_output, _ = self.attn(self.attn_norm(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


# -------------------------------------------------------------------------------------------- losses
def router_losses(
    router_logits: tuple[torch.Tensor, ...], top_k: int, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load-balancing loss (Switch Transformer eq. 4-6, top-k form as in Mixtral) and router z-loss (ST-MoE),
    averaged over MoE layers and over the tokens that `attention_mask` keeps (padding does not count).

    balance = E * sum_e f_e * P_e, f_e = fraction of (token, slot) assignments to e, P_e = mean router prob
    of e; equals 1 for perfectly uniform routing. z = mean over tokens of logsumexp(logits)^2.
    """
    num_experts = router_logits[0].shape[-1]
    device = router_logits[0].device
    weights = (
        torch.ones(router_logits[0].shape[0], device=device)
        if attention_mask is None
        else attention_mask.reshape(-1).to(device=device, dtype=torch.float32)
    )
    total = weights.sum().clamp(min=1.0)
    balance = torch.zeros((), device=device)
    z_loss = torch.zeros((), device=device)
    for logits in router_logits:
        logits = logits.float()
        probs = F.softmax(logits, dim=-1)
        _, selected = torch.topk(probs, top_k, dim=-1)
        assigned = torch.zeros_like(probs).scatter_(1, selected, 1.0)  # (tokens, experts) in {0, 1}
        fraction = (assigned * weights[:, None]).sum(0) / (total * top_k)
        mean_prob = (probs * weights[:, None]).sum(0) / total
        balance = balance + num_experts * torch.sum(fraction * mean_prob)
        z_loss = z_loss + (torch.logsumexp(logits, dim=-1).square() * weights).sum() / total
    return balance / len(router_logits), z_loss / len(router_logits)


def _reduce_loss(per_item: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """Mean over items, or sum / num_items_in_batch when the Trainer gives the count over all
    gradient-accumulation micro-batches (so that the accumulated gradient is the true mean)."""
    if num_items_in_batch is None:
        return per_item.mean() if per_item.numel() else per_item.sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(per_item.device)
    return per_item.sum() / num_items_in_batch


def masked_lm_item_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every predicted (label != -100) token."""
    labels = labels.to(logits.device).view(-1)
    per_token = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels, ignore_index=-100, reduction="none")
    return per_token[labels != -100]


def classification_item_losses(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """Per-sample loss: MSE (one label), cross-entropy (integer labels; -100 dropped) or BCE (float targets)."""
    labels = labels.to(logits.device)
    if problem_type is None:
        if logits.shape[-1] == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1), reduction="none")
    if problem_type == "single_label_classification":
        keep = labels.view(-1) != -100
        return F.cross_entropy(logits.float(), labels.view(-1), reduction="none")[keep]
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(-1)


# ------------------------------------------------------------------------------------------------ models
class TrafficMoePreTrainedModel(TrafficMoeHubMixin, PreTrainedModel):
    config_class = TrafficMoeConfig
    config: TrafficMoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TrafficMoeLayer"]
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    main_input_name = "input_ids"
    # recorded by transformers' output hooks (`capture_outputs` on the encoder's forward)
    _can_record_outputs = {
        "hidden_states": OutputRecorder(TrafficMoeLayer, index=0),
        "attentions": OutputRecorder(TrafficMoeAttention, index=1),
        "router_logits": OutputRecorder(TrafficMoeRouter, index=0),
    }

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, TrafficMoeExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, TrafficMoeRouter):
            init.normal_(module.weight, mean=0.0, std=std)

    def get_correct_experts_implementation(self, requested_experts: str | None) -> str:
        """Default `auto`: the implementation for the device and dtype each forward runs on (moe_dispatch's
        `default_experts_implementation`, chosen at forward time); explicit requests win."""
        return super().get_correct_experts_implementation(AUTO if requested_experts is None else requested_experts)

    def _encode(self, labels, output_router_logits, **inputs) -> tuple[TrafficMoeModelOutput, bool]:
        """The encoder's outputs for a head, with router logits when the router losses need them (labels
        given) or the caller asks for them; unset output flags (None) fall back to the config."""
        want_router = "moe" in self.config.mlp_layer_types and (labels is not None or bool(
            self.config.output_router_logits if output_router_logits is None else output_router_logits))
        inputs = {k: v for k, v in inputs.items() if v is not None or not k.startswith("output_")}
        return self.model(**inputs, output_router_logits=want_router, return_dict=True), want_router

    def _head_output(self, output_class, logits, item_losses, outputs, attention_mask, want_router,
                     output_router_logits, num_items_in_batch):
        """The heads' one loss helper: the task loss (mean over items, or sum / num_items_in_batch under
        gradient accumulation) plus the weighted router losses, and the output with router logits only when
        the caller (else the config) asks for them.

        Under gradient accumulation the Trainer sums the micro-batch losses without dividing
        (num_items_in_batch given), so the router losses are weighted by this micro-batch's share of the
        items, which makes their accumulated sum an average, like the main loss."""
        loss = aux_loss = z_loss = None
        if item_losses is not None:
            loss = _reduce_loss(item_losses, num_items_in_batch)
        if want_router:
            aux_loss, z_loss = router_losses(outputs.router_logits, self.config.num_experts_per_tok, attention_mask)
            if loss is not None:
                share = 1.0 if num_items_in_batch is None else item_losses.shape[0] / num_items_in_batch
                loss = loss + share * (self.config.router_aux_loss_coef * aux_loss + self.config.router_z_loss_coef * z_loss)
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        return output_class(
            loss=loss,
            aux_loss=aux_loss,
            z_loss=z_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits if output_router_logits else None,
        )


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden_states`` over the real (unpadded) positions: the flow vector mean pooling reads."""
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class TrafficMoeModel(TrafficMoePreTrainedModel):
    """The encoder: embeddings, `num_hidden_layers` layers, final LayerNorm.

    `output_hidden_states`, `output_attentions`, `output_router_logits` (keyword arguments, else the
    config's) are recorded by transformers' output hooks (`_can_record_outputs`)."""

    def __init__(self, config: TrafficMoeConfig):
        super().__init__(config)
        self.embeddings = TrafficMoeEmbeddings(config)
        self.layers = nn.ModuleList([TrafficMoeLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.tok_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.tok_embeddings = value

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        packet_ids: torch.LongTensor | None = None,
        direction_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> TrafficMoeModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        hidden_states = self.embeddings(input_ids, packet_ids, direction_ids, inputs_embeds)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, **kwargs)
        return TrafficMoeModelOutput(last_hidden_state=self.final_norm(hidden_states))


class TrafficMoePredictionHead(nn.Module):
    def __init__(self, config: TrafficMoeConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(hidden_states)))


class TrafficMoeForMaskedLM(TrafficMoePreTrainedModel):
    """Masked-byte / masked-packet modelling head (decoder tied to the byte embeddings)."""

    _tied_weights_keys = {"decoder.weight": "model.embeddings.tok_embeddings.weight"}

    def __init__(self, config: TrafficMoeConfig):
        super().__init__(config)
        self.model = TrafficMoeModel(config)
        self.head = TrafficMoePredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.post_init()

    def get_output_embeddings(self):
        return self.decoder

    def set_output_embeddings(self, new_embeddings):
        self.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        packet_ids: torch.LongTensor | None = None,
        direction_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> TrafficMoeMaskedLMOutput:
        """`labels`: byte ids to predict at masked positions, -100 elsewhere."""
        outputs, want_router = self._encode(
            labels, output_router_logits, input_ids=input_ids, attention_mask=attention_mask, packet_ids=packet_ids,
            direction_ids=direction_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, **kwargs,
        )
        logits = self.decoder(self.head(outputs.last_hidden_state))
        item_losses = None if labels is None else masked_lm_item_losses(logits, labels)
        return self._head_output(TrafficMoeMaskedLMOutput, logits, item_losses, outputs, attention_mask, want_router,
                                 output_router_logits, num_items_in_batch)


class TrafficMoeForSequenceClassification(TrafficMoePreTrainedModel):
    """Flow or packet classification: pooled encoder output ([CLS] or mean) -> head -> labels."""

    def __init__(self, config: TrafficMoeConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = TrafficMoeModel(config)
        self.head = TrafficMoePredictionHead(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pool(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.classifier_pooling == "cls":
            return last_hidden_state[:, 0]
        return masked_mean(last_hidden_state, attention_mask)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        packet_ids: torch.LongTensor | None = None,
        direction_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> TrafficMoeSequenceClassifierOutput:
        """`labels`: class index per sample (-100 ignored), float targets for regression or multi-label."""
        outputs, want_router = self._encode(
            labels, output_router_logits, input_ids=input_ids, attention_mask=attention_mask, packet_ids=packet_ids,
            direction_ids=direction_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, **kwargs,
        )
        logits = self.classifier(self.dropout(self.head(self.pool(outputs.last_hidden_state, attention_mask))))
        item_losses = None if labels is None else classification_item_losses(logits, labels, self.config.problem_type)
        return self._head_output(TrafficMoeSequenceClassifierOutput, logits, item_losses, outputs, attention_mask,
                                 want_router, output_router_logits, num_items_in_batch)


__all__ = [
    "TrafficMoeForMaskedLM",
    "TrafficMoeForSequenceClassification",
    "TrafficMoeModel",
    "TrafficMoePreTrainedModel",
]

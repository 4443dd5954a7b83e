"""Traffic-MoE: a bidirectional Transformer encoder over traffic bytes with sparse Mixture-of-Experts FFNs.

Layout follows transformers' own models: ModernBERT for the encoder (attention interface, bidirectional
mask, thin task heads) and OLMoE/Mixtral for the MoE (top-k router, experts as fused 3-D weights behind
`@use_experts_implementation`, Switch load-balancing loss). This file is shipped as remote code with
every saved checkpoint, so it imports only its sibling files, torch and transformers.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

from .moe_dispatch import default_experts_implementation
from .configuration_traffic_moe import TrafficMoeConfig


# Every Auto class one checkpoint loads as (save_pretrained writes them all, not only the saved class).
AUTO_MAP = {
    "AutoConfig": "configuration_traffic_moe.TrafficMoeConfig",
    "AutoModel": "modeling_traffic_moe.TrafficMoeModel",
    "AutoModelForMaskedLM": "modeling_traffic_moe.TrafficMoeForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_traffic_moe.TrafficMoeForSequenceClassification",
}
# The files a checkpoint folder carries so that it loads with trust_remote_code=True.
REMOTE_CODE_FILES = (
    "configuration_traffic_moe.py",
    "modeling_traffic_moe.py",
    "moe_dispatch.py",
    "moe_triton.py",
    "tokenization_traffic_moe.py",
)


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

    A packet is a run of equal `packet_ids`; computed on device with a running maximum, no host sync.
    """
    positions = torch.arange(packet_ids.shape[-1], device=packet_ids.device).expand_as(packet_ids)
    starts = torch.ones_like(packet_ids, dtype=torch.bool)
    starts[..., 1:] = packet_ids[..., 1:] != packet_ids[..., :-1]
    start_positions = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=-1).values
    return positions - start_positions


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
    if attention_mask is not None:
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
    transformers' `grouped_mm`/`batched_mm` or this project's `dropless` dispatch (moe_dispatch.py).
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

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        router_logits, top_k_weights, top_k_index = self.gate(flat)
        output = self.experts(flat, top_k_index, top_k_weights)
        if self.shared_expert is not None:
            output = output + self.shared_expert(flat)
        return output.reshape(shape), router_logits


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
        attn_output, attn_weights = self.attn(self.attn_norm(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.dropout(attn_output)
        router_logits = None
        if self.is_moe:
            mlp_output, router_logits = self.mlp(self.mlp_norm(hidden_states))
        else:
            mlp_output = self.mlp(self.mlp_norm(hidden_states))
        hidden_states = hidden_states + self.dropout(mlp_output)
        return hidden_states, attn_weights, router_logits


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


def _add_router_losses(loss, outputs, config, attention_mask, num_local_items, num_items_in_batch):
    """loss + aux_coef * balance + z_coef * z. Under gradient accumulation the Trainer sums the micro-batch
    losses without dividing (num_items_in_batch given), so the router losses are weighted by this
    micro-batch's share of the items, which makes their accumulated sum an average, like the main loss."""
    aux_loss, z_loss = router_losses(outputs.router_logits, config.num_experts_per_tok, attention_mask)
    if loss is not None:
        share = 1.0 if num_items_in_batch is None else num_local_items / num_items_in_batch
        loss = loss + share * (config.router_aux_loss_coef * aux_loss + config.router_z_loss_coef * z_loss)
    return loss, aux_loss, z_loss


# ------------------------------------------------------------------------------------------------ models
class TrafficMoePreTrainedModel(PreTrainedModel):
    config_class = TrafficMoeConfig
    config: TrafficMoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TrafficMoeLayer"]
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    main_input_name = "input_ids"

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, TrafficMoeExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            init.normal_(module.down_proj, mean=0.0, std=std)
        elif isinstance(module, TrafficMoeRouter):
            init.normal_(module.weight, mean=0.0, std=std)

    def _wants_router_logits(self, labels, output_router_logits) -> bool:
        """Heads need router logits to add the router losses (labels given) or when asked to return them."""
        if "moe" not in self.config.mlp_layer_types:
            return False
        return labels is not None or bool(
            self.config.output_router_logits if output_router_logits is None else output_router_logits
        )

    def get_correct_experts_implementation(self, requested_experts: str | None) -> str:
        """Default experts path: this project's `dropless` dispatch (fastest here); explicit requests win."""
        if requested_experts is None:
            requested_experts = default_experts_implementation()
        return super().get_correct_experts_implementation(requested_experts)

    def save_pretrained(self, save_directory, *args, card_data: dict | None = None, **kwargs):
        """Writes a Hub-style folder that loads with every Auto class, installed or via `trust_remote_code`:
        safetensors weights, config.json with an `auto_map` for all Auto classes, the remote-code files and
        a README.md model card rendered from `model_card.md` (when the package's template is available).

        A checkpoint loaded and saved again as the same class without ``card_data`` (a dtype conversion, a
        copy) keeps its card — the training data and the figures `evaluate --update-card` wrote — instead of
        a new one reading "not recorded"; pass ``card_data`` to describe new training."""
        source_architectures = list(self.config.architectures or [])
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        here = Path(__file__).resolve().parent
        for name in REMOTE_CODE_FILES:
            if (here / name).is_file():
                shutil.copyfile(here / name, Path(save_directory) / name)
        readme = Path(save_directory) / "README.md"
        data = card_data or getattr(self, "card_data", None)
        source_card = Path(str(getattr(self.config, "name_or_path", "") or "")) / "README.md"
        if data is None and source_card.is_file() and source_architectures == [type(self).__name__]:
            if not (readme.exists() and readme.samefile(source_card)):
                card = source_card.read_text()
                readme.write_text(_CARD_PATH_LINE.sub(f"path = {str(save_directory)!r}  # this folder (its Hub id once uploaded)", card))
            return
        template = here / "model_card.md"
        if template.is_file():
            readme.write_text(render_model_card(template.read_text(), self, data, save_directory))


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden_states`` over the real (unpadded) positions: the flow vector mean pooling reads."""
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active per token): a routed expert counts for top_k / num_experts of its parameters."""
    total = active = 0
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            n = parameter.numel()
            total += n
            if isinstance(module, TrafficMoeExperts):
                n = n * module.config.num_experts_per_tok // module.num_experts
            active += n
    return total, active


#: the usage example's flow: a TCP handshake and an HTTP request (documentation addresses, RFC 5737), one
#: IP packet per line, each led by its direction (> from the initiator, < to it)
EXAMPLE_FLOW = (
    "> 4500002c000100004006f6c7c0000201c0000202c0000050000003e8000000006002faf054f90000020405b4",
    "< 4500002c000100004006f6c7c0000202c00002010050c00000001388000003e96012faf041600000020405b4",
    "> 45000028000100004006f6cbc0000201c0000202c0000050000003e9000013895010faf0591d0000",
    "> 45000049000100004006f6aac0000201c0000202c0000050000003e9000013895018faf0e0ec0000474554202f20485454"
    "502f312e310d0a486f73743a206578616d706c650d0a0d0a",
)
_CARD_PATH_LINE = re.compile(r"^path = .*$", flags=re.MULTILINE)


def usage_snippet(model_class: str, path, remote_code: bool = True) -> tuple[str, str]:
    """(Hub pipeline tag, Python code) of a model card's "Use" section; the code runs as written on the
    folder ``path`` (a classifier: through transformers' pipeline and through the tokenizer and model)."""
    trust = ", trust_remote_code=True" if remote_code else ""
    flow = "\n".join(EXAMPLE_FLOW)
    head = (f"path = {str(path)!r}  # this folder (its Hub id once uploaded)\n"
            "# a flow: its first IP packets, one hex line each, led by the direction (> from the initiator, < to it)\n"
            f"flow = {flow!r}\n")
    if model_class.endswith("ForSequenceClassification"):
        return "text-classification", (
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline\n\n" + head +
            "\nclassify = pipeline(\"text-classification\", model=path, trust_remote_code=True)\n"
            "print(classify(flow))  # [{'label': ..., 'score': ...}]\n\n"
            "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n"
            f"model = AutoModelForSequenceClassification.from_pretrained(path{trust})\n"
            "inputs = tokenizer(flow, return_tensors=\"pt\")  # or tokenizer([packets], directions=[[0, 1, ...]], ...)\n"
            "print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])")
    if model_class.endswith("ForMaskedLM"):
        return "fill-mask", (
            "from transformers import AutoModelForMaskedLM, AutoTokenizer\n\n" + head +
            "\ntokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n"
            f"model = AutoModelForMaskedLM.from_pretrained(path{trust})\n"
            "inputs = tokenizer(flow, return_tensors=\"pt\")\n"
            "logits = model(**inputs).logits  # per token: scores over the vocabulary (256 byte values + specials)\n"
            "print(logits.shape)\n"
            "# a pretrained encoder: fine-tune it on labelled captures with\n"
            "#   traffic-moe finetune --data PREPARED --from " + str(path) + " --out CLASSIFIER")
    return "feature-extraction", (
        "from transformers import AutoModel, AutoTokenizer\n\n" + head +
        "\ntokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n"
        f"model = AutoModel.from_pretrained(path{trust})\n"
        "inputs = tokenizer(flow, return_tensors=\"pt\")\n"
        "print(model(**inputs).last_hidden_state.shape)  # one vector per token")


def render_model_card(template: str, model: TrafficMoePreTrainedModel, card_data: dict | None, path=".") -> str:
    """Fill `{placeholders}` of the model-card template; unknown ones read "not recorded"."""
    config = model.config
    total, active = count_parameters(model)
    pipeline_tag, usage = usage_snippet(type(model).__name__, path)
    fields = {
        "pipeline_tag": pipeline_tag,
        "usage": usage,
        "model_class": type(model).__name__,
        "num_parameters": f"{total / 1e6:.2f}M",
        "active_parameters": f"{active / 1e6:.2f}M",
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_experts": config.num_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        "num_shared_experts": config.num_shared_experts,
        "moe_intermediate_size": config.moe_intermediate_size,
        "mlp_layer_types": ", ".join(config.mlp_layer_types),
        "labels": ", ".join(str(v) for v in config.id2label.values()) if config.id2label else "none",
    }
    fields.update(card_data or {})

    class _Missing(dict):
        def __missing__(self, key):
            return "not recorded"

    return template.format_map(_Missing(fields))


class TrafficMoeModel(TrafficMoePreTrainedModel):
    """The encoder: embeddings, `num_hidden_layers` layers, final LayerNorm."""

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

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        packet_ids: torch.LongTensor | None = None,
        direction_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> TrafficMoeModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_router_logits = self.config.output_router_logits if output_router_logits is None else output_router_logits

        hidden_states = self.embeddings(input_ids, packet_ids, direction_ids, inputs_embeds)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        all_router_logits = () if output_router_logits else None
        for layer in self.layers:
            hidden_states, attn_weights, router_logits = layer(hidden_states, mask, **kwargs)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
            if output_router_logits and router_logits is not None:
                all_router_logits += (router_logits,)
        hidden_states = self.final_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        return TrafficMoeModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            router_logits=all_router_logits,
        )


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
        want_router = self._wants_router_logits(labels, output_router_logits)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            packet_ids=packet_ids,
            direction_ids=direction_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_router_logits=want_router,
            **kwargs,
        )
        logits = self.decoder(self.head(outputs.last_hidden_state))
        loss = aux_loss = z_loss = None
        num_local = None
        if labels is not None:
            labels = labels.to(logits.device)
            per_token = F.cross_entropy(
                logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100, reduction="none"
            )
            keep = labels.view(-1) != -100
            num_local = keep.sum()
            loss = _reduce_loss(per_token[keep], num_items_in_batch)
        if want_router:
            loss, aux_loss, z_loss = _add_router_losses(
                loss, outputs, self.config, attention_mask, num_local, num_items_in_batch
            )
        return TrafficMoeMaskedLMOutput(
            loss=loss,
            aux_loss=aux_loss,
            z_loss=z_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits if output_router_logits or self.config.output_router_logits else None,
        )


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
        want_router = self._wants_router_logits(labels, output_router_logits)
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            packet_ids=packet_ids,
            direction_ids=direction_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_router_logits=want_router,
            **kwargs,
        )
        pooled = self.dropout(self.head(self.pool(outputs.last_hidden_state, attention_mask)))
        logits = self.classifier(pooled)

        loss = aux_loss = z_loss = None
        num_local = None
        if labels is not None:
            labels = labels.to(logits.device)
            problem_type = self.config.problem_type
            if problem_type is None:
                if self.num_labels == 1:
                    problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    problem_type = "single_label_classification"
                else:
                    problem_type = "multi_label_classification"
            if problem_type == "regression":
                per_item = F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1), reduction="none")
            elif problem_type == "single_label_classification":
                keep = labels.view(-1) != -100
                per_item = F.cross_entropy(logits.float(), labels.view(-1), reduction="none")[keep]
            else:
                per_item = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(-1)
            num_local = per_item.shape[0]
            loss = _reduce_loss(per_item, num_items_in_batch)
        if want_router:
            loss, aux_loss, z_loss = _add_router_losses(
                loss, outputs, self.config, attention_mask, num_local, num_items_in_batch
            )
        return TrafficMoeSequenceClassifierOutput(
            loss=loss,
            aux_loss=aux_loss,
            z_loss=z_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits if output_router_logits or self.config.output_router_logits else None,
        )


__all__ = [
    "TrafficMoeForMaskedLM",
    "TrafficMoeForSequenceClassification",
    "TrafficMoeModel",
    "TrafficMoePreTrainedModel",
    "count_parameters",
]

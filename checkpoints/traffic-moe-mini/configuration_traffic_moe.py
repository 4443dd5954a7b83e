"""Configuration of the Traffic-MoE sparse encoder, with named size presets."""

from __future__ import annotations

from transformers import PretrainedConfig


# Named sizes. `base` has ET-BERT's shape (hidden 768, 12 layers, 12 heads); its experts are sized so
# that one token's active FFN (top-2 of 3072/2 wide gated experts) costs about what ET-BERT's dense
# 3072-wide FFN does, while the layer holds 8x the FFN parameters.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_experts=4,
        num_experts_per_tok=2,
    ),
    "mini": dict(  # between tiny and small: ~4x cheaper per step than small on a CPU, 3.5M parameters
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        moe_intermediate_size=256,
        num_experts=8,
        num_experts_per_tok=2,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        moe_intermediate_size=512,
        num_experts=8,
        num_experts_per_tok=2,
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        moe_intermediate_size=1024,
        num_experts=16,
        num_experts_per_tok=2,
    ),
}


class TrafficMoeConfig(PretrainedConfig):
    r"""Configuration of [`TrafficMoeModel`]: a bidirectional Transformer encoder over traffic bytes whose
    feed-forward blocks are sparse mixtures of experts.

    Args:
        vocab_size (`int`, defaults to 262): 6 special tokens + 256 byte values (see `TrafficTokenizer`).
        hidden_size (`int`, defaults to 256): width of the residual stream.
        num_hidden_layers (`int`, defaults to 4): encoder layers.
        num_attention_heads (`int`, defaults to 4): attention heads.
        intermediate_size (`int`, defaults to 1024): width of the gated FFN in `"dense"` layers and of each
            shared expert.
        hidden_act (`str`, defaults to `"gelu"`): activation of the gated FFNs (act(gate) * up).
        mlp_layer_types (`list[str]`, *optional*): per layer `"moe"` or `"dense"`; defaults to every layer `"moe"`.
            `["dense", "moe"] * 6` gives MoE every other layer.
        num_experts (`int`, defaults to 8): routed experts per MoE layer.
        num_experts_per_tok (`int`, defaults to 2): experts each token is routed to (top-k).
        moe_intermediate_size (`int`, defaults to 512): width of each routed expert's gated FFN.
        num_shared_experts (`int`, defaults to 0): always-on experts added to the routed output
            (their width is `num_shared_experts * intermediate_size`).
        norm_topk_prob (`bool`, defaults to `False`): renormalise the top-k routing weights to sum to 1.
        router_aux_loss_coef (`float`, defaults to 0.01): weight of the load-balancing loss (Switch Transformer).
        router_z_loss_coef (`float`, defaults to 0.001): weight of the router z-loss (ST-MoE).
        output_router_logits (`bool`, defaults to `False`): return the router logits of every MoE layer.
        max_position_embeddings (`int`, defaults to 256): largest byte offset inside a packet (+1 for `[PKT]`).
        max_packets (`int`, defaults to 32): largest packet index embedded (later packets share the last index).
        hidden_dropout_prob (`float`, defaults to 0.1), attention_dropout (`float`, defaults to 0.0),
        classifier_dropout (`float`, defaults to 0.1): dropout rates.
        classifier_pooling (`str`, defaults to `"mean"`): `"mean"` (over real tokens) or `"cls"` pooling for sequence
            classification. Mean pooling is the default because with `"cls"` only the `[CLS]` token's route through
            the last layer reaches the loss, so that layer's other experts get no training signal.
        layer_norm_eps (`float`, defaults to 1e-12), initializer_range (`float`, defaults to 0.02).

    Positions are traffic-structured: a token is located by its packet index (`packet_ids`), the direction of
    its packet (`direction_ids`) and its byte offset inside the packet (derived from `packet_ids`), so a
    header field keeps its embedding whatever the packets before it look like.
    """

    model_type = "traffic_moe"
    keys_to_ignore_at_inference = ["aux_loss", "z_loss", "router_logits", "hidden_states", "attentions"]

    def __init__(
        self,
        vocab_size: int = 262,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 1024,
        hidden_act: str = "gelu",
        mlp_layer_types: list[str] | None = None,
        num_experts: int = 8,
        num_experts_per_tok: int = 2,
        moe_intermediate_size: int = 512,
        num_shared_experts: int = 0,
        norm_topk_prob: bool = False,
        router_aux_loss_coef: float = 0.01,
        router_z_loss_coef: float = 0.001,
        output_router_logits: bool = False,
        max_position_embeddings: int = 256,
        max_packets: int = 32,
        num_directions: int = 3,
        hidden_dropout_prob: float = 0.1,
        attention_dropout: float = 0.0,
        classifier_dropout: float = 0.1,
        classifier_pooling: str = "mean",
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        cls_token_id: int = 2,
        sep_token_id: int = 3,
        mask_token_id: int = 4,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
        if not 1 <= num_experts_per_tok <= num_experts:
            raise ValueError(f"num_experts_per_tok must be in 1..num_experts={num_experts}, got {num_experts_per_tok}")
        if mlp_layer_types is None:
            mlp_layer_types = ["moe"] * num_hidden_layers
        if len(mlp_layer_types) != num_hidden_layers or set(mlp_layer_types) - {"moe", "dense"}:
            raise ValueError(
                f"mlp_layer_types must list 'moe' or 'dense' for each of the {num_hidden_layers} layers, got {mlp_layer_types}"
            )
        if classifier_pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling must be 'cls' or 'mean', got {classifier_pooling!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.mlp_layer_types = list(mlp_layer_types)
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size
        self.num_shared_experts = num_shared_experts
        self.norm_topk_prob = norm_topk_prob
        self.router_aux_loss_coef = router_aux_loss_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.output_router_logits = output_router_logits
        self.max_position_embeddings = max_position_embeddings
        self.max_packets = max_packets
        self.num_directions = num_directions
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_dropout = attention_dropout
        self.classifier_dropout = classifier_dropout
        self.classifier_pooling = classifier_pooling
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.mask_token_id = mask_token_id
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrafficMoeConfig":
        """A named size (`tiny`, `small`, `base`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


__all__ = ["PRESETS", "TrafficMoeConfig"]

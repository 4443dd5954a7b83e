"""traffic-moe-hf: a sparse Mixture-of-Experts foundation model for network traffic, as a Transformers plugin.

Importing the package registers the configuration, the three model classes and the tokenizer with the
Auto factories, so ``AutoConfig``/``AutoModel``/``AutoModelForMaskedLM``/``AutoModelForSequenceClassification``
and ``AutoTokenizer`` load Traffic-MoE folders without ``trust_remote_code``.

Only torch/transformers/tokenizers are imported here; the data pipeline (dpkt, datasets) and the recipes
are imported on use (``traffic_moe_hf.data``, ``traffic_moe_hf.recipes``).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .configuration_traffic_moe import PRESETS, TrafficMoeConfig
from .modeling_traffic_moe import (
    TrafficMoeForMaskedLM,
    TrafficMoeForSequenceClassification,
    TrafficMoeModel,
    TrafficMoePreTrainedModel,
    count_parameters,
)
from .tokenization_traffic_moe import TrafficTokenizer


__version__ = "0.1.0"

AutoConfig.register(TrafficMoeConfig.model_type, TrafficMoeConfig, exist_ok=True)
AutoModel.register(TrafficMoeConfig, TrafficMoeModel, exist_ok=True)
AutoModelForMaskedLM.register(TrafficMoeConfig, TrafficMoeForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(TrafficMoeConfig, TrafficMoeForSequenceClassification, exist_ok=True)
AutoTokenizer.register(TrafficMoeConfig, tokenizer_class=TrafficTokenizer, exist_ok=True)

__all__ = [
    "PRESETS",
    "TrafficMoeConfig",
    "TrafficMoeForMaskedLM",
    "TrafficMoeForSequenceClassification",
    "TrafficMoeModel",
    "TrafficMoePreTrainedModel",
    "TrafficTokenizer",
    "count_parameters",
]

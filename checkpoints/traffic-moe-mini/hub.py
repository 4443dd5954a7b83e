"""Hub folders and model cards for Traffic-MoE checkpoints (beside the model, not in it).

`TrafficMoeHubMixin.save_pretrained` makes a saved folder load with every Auto class, installed or via
``trust_remote_code=True``: an ``auto_map`` for all of them, the remote-code files copied in, and a
README.md model card rendered from ``model_card.md``. This file is itself shipped as remote code (the
modeling file imports it), so it imports only its siblings, the standard library and transformers.

``python -m traffic_moe_hf.hub --write-tokenizer tokenizer/`` writes the repository's default tokenizer
folder from the package (CI fails when the committed folder drifts from it).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path


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
    "hub.py",
    "moe_dispatch.py",
    "moe_triton.py",
    "tokenization_traffic_moe.py",
)

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


def count_parameters(model) -> tuple[int, int]:
    """(total, active per token): a routed expert counts for top_k / num_experts of its parameters."""
    try:
        from .modeling_traffic_moe import TrafficMoeExperts  # noqa: PLC0415 - the modeling file imports this one
    except ImportError:  # pragma: no cover - file imported as a top-level module
        from modeling_traffic_moe import TrafficMoeExperts  # noqa: PLC0415

    total = active = 0
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            n = parameter.numel()
            total += n
            if isinstance(module, TrafficMoeExperts):
                n = n * module.config.num_experts_per_tok // module.num_experts
            active += n
    return total, active


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


def render_model_card(template: str, model, card_data: dict | None, path=".") -> str:
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


class TrafficMoeHubMixin:
    """`save_pretrained` for the Traffic-MoE models (mixed in before `PreTrainedModel`)."""

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


def write_tokenizer_folder(folder) -> list[str]:
    """Write the default tokenizer's Hub folder (tokenizer.json, tokenizer_config.json and its remote-code
    file) into ``folder``, as the repository ships it in ``tokenizer/``; returns the file names written."""
    try:
        from .tokenization_traffic_moe import TrafficTokenizer  # noqa: PLC0415
    except ImportError:  # pragma: no cover - file imported as a top-level module
        from tokenization_traffic_moe import TrafficTokenizer  # noqa: PLC0415

    TrafficTokenizer().save_pretrained(folder)
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file())


__all__ = [
    "AUTO_MAP",
    "REMOTE_CODE_FILES",
    "TrafficMoeHubMixin",
    "count_parameters",
    "render_model_card",
    "usage_snippet",
    "write_tokenizer_folder",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traffic_moe_hf.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-tokenizer", metavar="DIR", required=True,
                        help="write the default tokenizer folder (the repository's tokenizer/) into DIR")
    args = parser.parse_args(argv)
    names = write_tokenizer_folder(args.write_tokenizer)
    print(f"{args.write_tokenizer}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

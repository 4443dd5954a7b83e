"""Export a Traffic-MoE model for deployment: ONNX (run by onnxruntime), ``torch.export``, TorchScript.

Every exporter records the model through its trace-safe experts path (``moe_dispatch.static_experts_forward``:
every expert on every token, weighted by the routing, no data-dependent shape), chosen by the model itself
while it is traced or exported, so the exported graph computes what the PyTorch model computes for every
input, not only for the example it was recorded on. Batch size and sequence length stay dynamic.

    from traffic_moe_hf.export import export_onnx, onnx_logits
    export_onnx(model, tokenizer(flows, directions=dirs, padding=True, return_tensors="pt"), "model.onnx")
    logits = onnx_logits("model.onnx", tokenizer(other_flows, ..., return_tensors="np"))

ONNX needs the ``export`` extra (``pip install -e ".[export]"``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

#: the tensors a Traffic-MoE model reads, in the exported graph's input order
INPUT_NAMES = ("input_ids", "attention_mask", "packet_ids", "direction_ids")


class ExportableModel(nn.Module):
    """A Traffic-MoE model as a function of positional tensors returning one tensor: the logits of a head
    (classifier, masked LM) or the encoder's last hidden state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.output_name = "last_hidden_state" if type(model).__name__ == "TrafficMoeModel" else "logits"

    def forward(self, input_ids, attention_mask, packet_ids, direction_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, packet_ids=packet_ids,
                         direction_ids=direction_ids, return_dict=True)
        return getattr(out, self.output_name)


def _example(inputs: Mapping) -> tuple[torch.Tensor, ...]:
    missing = [name for name in INPUT_NAMES if name not in inputs]
    if missing:
        raise ValueError(f"export inputs lack {', '.join(missing)}: tokenize with padding=True, return_tensors='pt'")
    example = tuple(torch.as_tensor(inputs[name]) for name in INPUT_NAMES)
    if example[0].dim() != 2 or example[0].shape[0] < 2 or example[0].shape[1] < 3:
        # torch.export specialises a dimension of size 0 or 1 to that constant (it would not stay dynamic), and
        # the graph holds for sequences of 3 tokens or more ([CLS], [PKT], a byte: any real packet)
        raise ValueError(f"export needs an example batch of at least 2 flows and 3 tokens, got {tuple(example[0].shape)}")
    return example


def _dynamic_shapes() -> dict:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", min=3)
    return {name: {0: batch, 1: sequence} for name in INPUT_NAMES}


def export_program(model: nn.Module, inputs: Mapping) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (batch and sequence dynamic); ``program.module()(*tensors)`` runs it."""
    with torch.no_grad():
        return torch.export.export(ExportableModel(model), _example(inputs), dynamic_shapes=_dynamic_shapes())


def export_onnx(model: nn.Module, inputs: Mapping, path, opset: int | None = None) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (through ``torch.onnx.export``'s ``torch.export`` path;
    inputs ``INPUT_NAMES``, one output: ``logits`` or ``last_hidden_state``). Written under a temporary name
    and moved into place when complete, so a failed export leaves an earlier file intact."""
    try:
        import onnxscript  # noqa: F401, PLC0415 - torch.onnx's exporter needs it
    except ImportError as e:
        raise RuntimeError('ONNX export needs onnx and onnxscript: pip install -e ".[export]"') from e
    path = Path(path)
    wrapper = ExportableModel(model)
    example = _example(inputs)
    kwargs = {} if opset is None else {"opset_version": opset}
    with torch.no_grad():
        program = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=_dynamic_shapes(),
                                    input_names=list(INPUT_NAMES), output_names=[wrapper.output_name], **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def onnx_logits(path, inputs: Mapping):
    """Run an exported ONNX file with onnxruntime on tokenized inputs (tensors or arrays); returns a numpy array."""
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError as e:
        raise RuntimeError('running ONNX needs onnxruntime: pip install -e ".[export]"') from e
    import numpy as np  # noqa: PLC0415

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {}
    for name in INPUT_NAMES:
        value = inputs[name]
        feed[name] = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, dtype=np.int64)
    return session.run(None, feed)[0]


def trace(model: nn.Module, inputs: Mapping) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``model`` (deprecated by torch in favour of ``torch.export``; kept for TorchScript
    users). The trace records the trace-safe experts path, so it is exact for inputs of any shape."""
    with torch.no_grad():
        return torch.jit.trace(ExportableModel(model), _example(inputs), strict=False)


__all__ = ["INPUT_NAMES", "ExportableModel", "export_onnx", "export_program", "onnx_logits", "trace"]

"""Exports for deployment agree with the PyTorch model on real flows (data/demo/loopback9): ONNX run by
onnxruntime, torch.export, and torch.jit.trace -- each recorded on one small example and then run on other
flows, batch sizes and lengths."""

from __future__ import annotations

import pytest
import torch

from traffic_moe_hf import TrafficMoeConfig, TrafficMoeForSequenceClassification, TrafficTokenizer
from traffic_moe_hf.export import INPUT_NAMES, export_onnx, export_program, onnx_logits, trace


@pytest.fixture(scope="module")
def classifier(real_batch):
    """A tiny classifier trained a few steps on real flows, so that its verdicts differ between flows."""
    batch, labels = real_batch
    torch.manual_seed(0)
    model = TrafficMoeForSequenceClassification(TrafficMoeConfig.from_preset(
        "tiny", num_labels=len(labels), hidden_dropout_prob=0.0, classifier_dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def flows(real_flows):
    """Every demo flow the fixtures read (4 per class), tokenized as the classifier was trained, and the
    example the exports are recorded on: the first 2 flows."""
    tokenizer = TrafficTokenizer(max_packets=4, max_packet_bytes=48)
    pairs = [f for name in sorted(real_flows) for f in real_flows[name]]
    everything = tokenizer([p for p, _ in pairs], directions=[d for _, d in pairs], padding=True, return_tensors="pt")
    example = {k: v[:2] for k, v in everything.items()}
    return example, everything


def _pytorch(model, inputs):
    with torch.no_grad():
        return model(**{k: inputs[k] for k in INPUT_NAMES}).logits


def test_onnx_verdicts_equal_pytorch_on_real_flows(classifier, flows, tmp_path):
    pytest.importorskip("onnxruntime")
    example, everything = flows
    path = export_onnx(classifier, example, tmp_path / "classifier.onnx")
    assert path.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    expected = _pytorch(classifier, everything)
    got = torch.from_numpy(onnx_logits(path, everything))
    assert everything["input_ids"].shape[0] == 36 and len(set(expected.argmax(-1).tolist())) >= 3
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # one flow alone, unpadded: a batch size and length the export never saw
    one = {k: v[7:8, : int(everything["attention_mask"][7].sum())] for k, v in everything.items()}
    torch.testing.assert_close(torch.from_numpy(onnx_logits(path, one)), _pytorch(classifier, one), rtol=1e-4, atol=1e-4)


def test_torch_export_equals_pytorch(classifier, flows):
    example, everything = flows
    program = export_program(classifier, example)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("traffic_moe" in t for t in targets), "the program needs this package's custom ops"
    with torch.no_grad():
        got = program.module()(*(everything[k] for k in INPUT_NAMES))
    torch.testing.assert_close(got, _pytorch(classifier, everything), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", [None, "dropless", "eager"])
def test_jit_trace_is_exact_for_other_inputs(flows, implementation):
    """torch.jit.trace recorded on 6 tokens, which reach only some of 16 experts, is exact on all 36 flows
    whichever experts implementation the model runs (default: chosen per forward). The trace records the
    trace-safe path; eager's loop over the experts the example hit was baked into the trace before."""
    _, everything = flows
    example = {k: v[:2, :3] for k, v in everything.items()}
    torch.manual_seed(0)
    model = TrafficMoeForSequenceClassification(TrafficMoeConfig.from_preset(
        "tiny", num_labels=9, num_experts=16, num_experts_per_tok=1)).eval()
    if implementation is not None:
        model.set_experts_implementation(implementation)
    with torch.no_grad():
        routed = model(**{k: example[k] for k in INPUT_NAMES}, output_router_logits=True).router_logits
    assert all(len(set(r.argmax(-1).tolist())) < 16 for r in routed)  # experts the example never reaches
    traced = trace(model, example)
    with torch.no_grad():
        got = traced(*(everything[k] for k in INPUT_NAMES))
    expected = _pytorch(model, everything)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the model itself traced directly, as in the issue: the same
    with torch.no_grad():
        direct = torch.jit.trace(model, tuple(example[k] for k in INPUT_NAMES), strict=False)
        out = direct(*(everything[k] for k in INPUT_NAMES))
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-5)


def test_export_refuses_an_example_that_would_fix_the_shapes(classifier, flows):
    example, _ = flows
    with pytest.raises(ValueError, match="at least 2 flows and 3 tokens"):
        export_program(classifier, {k: v[:1] for k, v in example.items()})
    with pytest.raises(ValueError, match="lack packet_ids"):
        export_program(classifier, {k: v for k, v in example.items() if k != "packet_ids"})

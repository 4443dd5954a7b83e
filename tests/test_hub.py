"""Hub-style folders: one checkpoint loads with every Auto class, installed or via trust_remote_code,
gives exactly the outputs of the model that saved it, and never unpickles anything."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from traffic_moe_hf import (
    TrafficMoeConfig,
    TrafficMoeForMaskedLM,
    TrafficMoeForSequenceClassification,
    TrafficMoeModel,
    TrafficTokenizer,
)

AUTO_CLASSES = {
    "AutoModel": (AutoModel, TrafficMoeModel, "last_hidden_state"),
    "AutoModelForMaskedLM": (AutoModelForMaskedLM, TrafficMoeForMaskedLM, "logits"),
    "AutoModelForSequenceClassification": (AutoModelForSequenceClassification, TrafficMoeForSequenceClassification, "logits"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, real_batch):
    """A trained-looking checkpoint: a classifier whose masked-LM head also exists (saved from the
    masked-LM model first, then the classifier over it), plus reference outputs of each class."""
    batch, labels = real_batch
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    config = TrafficMoeConfig.from_preset(
        "tiny", num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )
    classifier = TrafficMoeForSequenceClassification(config).eval()
    classifier.save_pretrained(folder, card_data={"training_data": "loopback9 demo slice"})
    TrafficTokenizer(max_packets=4, max_packet_bytes=48).save_pretrained(folder)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return folder, inputs, classifier


def test_folder_layout_and_auto_map(checkpoint):
    folder, _, _ = checkpoint
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"configuration_traffic_moe.py", "modeling_traffic_moe.py", "tokenization_traffic_moe.py", "moe_dispatch.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".pth")) for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "traffic_moe"
    assert set(config["auto_map"]) == {"AutoConfig", *AUTO_CLASSES}
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["auto_map"]["AutoTokenizer"][0] == "tokenization_traffic_moe.TrafficTokenizer"
    card = (folder / "README.md").read_text()
    assert "loopback9 demo slice" in card and "{" not in card.split("```")[0] and "http" in card


@pytest.mark.parametrize("auto_name", list(AUTO_CLASSES))
def test_installed_auto_classes_reproduce_outputs_exactly(checkpoint, auto_name):
    folder, inputs, classifier = checkpoint
    auto_class, model_class, field = AUTO_CLASSES[auto_name]
    loaded = auto_class.from_pretrained(folder).eval()
    assert type(loaded) is model_class
    assert isinstance(AutoConfig.from_pretrained(folder), TrafficMoeConfig)
    with torch.no_grad():
        if auto_name == "AutoModelForSequenceClassification":
            expected = classifier(**inputs).logits
        elif auto_name == "AutoModel":
            expected = classifier.model(**inputs).last_hidden_state
        else:  # the encoder and shared head come from the checkpoint; the byte decoder is tied to the embeddings
            expected = None
        got = getattr(loaded(**inputs), field)
    if expected is not None:
        assert torch.equal(got, expected)
    assert loaded.config.id2label == classifier.config.id2label


def test_masked_lm_round_trip_is_exact(tmp_path, real_batch):
    batch, _ = real_batch
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.manual_seed(1)
    model = TrafficMoeForMaskedLM(TrafficMoeConfig.from_preset("tiny", num_shared_experts=1)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert loaded.decoder.weight.data_ptr() == loaded.model.embeddings.tok_embeddings.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_loading_never_unpickles(checkpoint, monkeypatch):
    folder, _, _ = checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    for auto_class, _, _ in AUTO_CLASSES.values():
        auto_class.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/src")]
    try:
        import traffic_moe_hf
    except ImportError:
        pass
    else:
        raise SystemExit("traffic_moe_hf is importable: this would not test remote code")
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    folder, inputs_file, out_file = sys.argv[1:4]
    inputs = load_file(inputs_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert type(tokenizer).__name__ == "TrafficTokenizer", type(tokenizer)
    assert type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__ == "TrafficMoeConfig"
    outputs = {}
    with torch.no_grad():
        for name, auto in [("AutoModel", AutoModel), ("AutoModelForMaskedLM", AutoModelForMaskedLM),
                           ("AutoModelForSequenceClassification", AutoModelForSequenceClassification)]:
            model = auto.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            out = model(**inputs)
            outputs[name] = out.last_hidden_state if name == "AutoModel" else out.logits
    # the experts dispatch found its Triton sibling (copied with the remote code; used on CUDA)
    dispatch = [m for n, m in sys.modules.items() if n.startswith("transformers_modules") and n.endswith(".moe_dispatch")]
    assert dispatch and all(m._moe_triton is not None for m in dispatch), "remote code lost the Triton path"
    # saved again from remote code: the same files, and the model card carried over
    import os
    resaved = os.path.join(os.path.dirname(out_file), "resaved")
    model.save_pretrained(resaved)
    assert {"moe_triton.py", "README.md", "moe_dispatch.py"} <= set(os.listdir(resaved)), os.listdir(resaved)
    outputs["tokenized"] = tokenizer([bytes(range(40)), bytes(range(40, 90))], directions=[0, 1], return_tensors="pt")["input_ids"]
    save_file({k: v.contiguous() for k, v in outputs.items()}, out_file)
    """
)


def test_remote_code_loads_without_the_package(checkpoint, tmp_path):
    """A fresh Python process where traffic_moe_hf is NOT importable loads the folder with
    trust_remote_code=True and reproduces the installed package's outputs exactly."""
    folder, inputs, classifier = checkpoint
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(tmp_path / "out.safetensors")
    installed = {}
    with torch.no_grad():
        for name, (auto_class, _, field) in AUTO_CLASSES.items():
            installed[name] = getattr(auto_class.from_pretrained(folder).eval()(**inputs), field)
    for name in AUTO_CLASSES:
        assert torch.equal(remote[name], installed[name]), name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = tokenizer([bytes(range(40)), bytes(range(40, 90))], directions=[0, 1], return_tensors="pt")["input_ids"]
    assert torch.equal(remote["tokenized"], expected)


def test_text_classification_pipeline_reads_hex_packets(checkpoint, real_flows):
    """transformers' own `pipeline("text-classification")` works on a saved folder: hex text, one packet
    per line, in; the same probabilities as the model on the tokenizer's tensors out. It used to fail:
    one sample tokenized to 1-D tensors (transformers keeps a batch axis, [1, L])."""
    from transformers import pipeline

    folder, _, classifier = checkpoint
    tokenizer = AutoTokenizer.from_pretrained(folder)
    packets, directions = (x[:3] for x in real_flows["http"][0])
    assert 0 in directions and 1 in directions  # a real flow with both directions
    # each line led by the packet's direction (> from the initiator, < to it): a pipeline passes text only,
    # and without them every packet read as the initiator's (other verdicts than `predict`'s)
    text = "\n".join(("<" if d else ">") + " " + p.hex() for p, d in zip(packets, directions))
    single = tokenizer(text, return_tensors="pt")
    assert torch.equal(single["input_ids"], tokenizer([packets], directions=[directions], return_tensors="pt")["input_ids"])
    assert torch.equal(single["direction_ids"], tokenizer([packets], directions=[directions], return_tensors="pt")["direction_ids"])
    assert single["input_ids"].shape[0] == 1 and single["input_ids"].shape == single["packet_ids"].shape
    assert tokenizer(text)["input_ids"] == single["input_ids"][0].tolist()  # no tensors: one unbatched sample
    assert tokenizer(text=text)["direction_ids"] == single["direction_ids"][0].tolist()  # transformers' keyword
    unmarked = tokenizer("\n".join(p.hex() for p in packets), return_tensors="pt")
    assert not torch.equal(unmarked["direction_ids"], single["direction_ids"])
    with pytest.raises(ValueError, match="mark every packet line"):
        tokenizer("> " + packets[0].hex() + "\n" + packets[1].hex())
    with torch.no_grad():
        expected = classifier(**single).logits.softmax(-1)[0]
    result = pipeline("text-classification", model=str(folder), top_k=None)(text)
    result = result[0] if isinstance(result[0], list) else result  # every label's score, best first
    assert {r["label"]: round(r["score"], 5) for r in result} == {
        classifier.config.id2label[i]: round(float(p), 5) for i, p in enumerate(expected)}


def test_saving_a_loaded_checkpoint_again_keeps_its_card(checkpoint, tmp_path):
    """A checkpoint loaded and saved again as the same class (a dtype conversion, a copy) keeps its model
    card — training data and test figures — with the usage path pointing at the new folder; it used to get
    a fresh card reading "not recorded". Loaded as another class, it gets that class's own card."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    folder, _, _ = checkpoint
    original = (folder / "README.md").read_text()
    assert "loopback9 demo slice" in original and "pipeline_tag: text-classification" in original
    copy = tmp_path / "bf16"
    AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(copy)
    card = (copy / "README.md").read_text()
    assert "loopback9 demo slice" in card and f"path = {str(copy)!r}" in card and str(folder) not in card
    assert (folder / "README.md").read_text() == original
    other = tmp_path / "mlm"
    AutoModelForMaskedLM.from_pretrained(folder).save_pretrained(other)
    card = (other / "README.md").read_text()
    assert "loopback9 demo slice" not in card and "pipeline_tag: fill-mask" in card and "AutoModelForMaskedLM" in card

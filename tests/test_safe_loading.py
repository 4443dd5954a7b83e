"""Model folders whose weights are a pickle are refused unread (issue 28, item 3): one line naming the file,
and the pickle's payload never runs — for predict, evaluate and finetune --from."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from traffic_moe_hf.errors import TrafficMoeError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "loopback9"


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    """A real tiny classifier folder (config, tokenizer) whose weights are a malicious ``pytorch_model.bin``
    instead of ``model.safetensors``; and the marker file its payload would create."""
    from traffic_moe_hf import TrafficMoeConfig, TrafficMoeForSequenceClassification, TrafficTokenizer

    root = tmp_path_factory.mktemp("pickled")
    folder = root / "model"
    config = TrafficMoeConfig.from_preset("tiny", num_labels=2, id2label={0: "dns", 1: "ssh"},
                                          label2id={"dns": 0, "ssh": 1})
    TrafficMoeForSequenceClassification(config).save_pretrained(folder)
    TrafficTokenizer().save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    marker = root / "payload-ran"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"classifier.weight": _Payload(marker)}, f)
    # the control: the file does run its payload when unpickled (so the tests below can fail)
    control = root / "control-ran"
    pickle.loads(pickle.dumps({"w": _Payload(control)}))
    assert control.exists()
    return folder, marker


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "traffic_moe_hf.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def _one_line_naming(err: str, folder: Path) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err[-3000:]
    assert str(folder / "pytorch_model.bin") in lines[0] and "refused" in lines[0]


def test_predict_refuses_pickled_weights_in_one_line_without_running_them(pickled_model, tmp_path):
    folder, marker = pickled_model
    out = tmp_path / "verdicts.csv"
    done = _cli("predict", str(DEMO / "dns.pcap"), "--model", str(folder), "--out", str(out), "--no-progress")
    assert done.returncode != 0 and not out.exists()
    _one_line_naming(done.stderr, folder)
    assert not marker.exists()


def test_evaluate_refuses_pickled_weights_without_running_them(pickled_model, tmp_path):
    from traffic_moe_hf.recipes.evaluate import load_classifier

    folder, marker = pickled_model
    with pytest.raises(TrafficMoeError) as refused:
        load_classifier(folder)
    assert str(folder / "pytorch_model.bin") in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()


def test_finetune_from_refuses_pickled_weights_without_running_them(pickled_model, tmp_path):
    from traffic_moe_hf.data.prepare import prepare
    from traffic_moe_hf.recipes.finetune import finetune

    folder, marker = pickled_model
    data = tmp_path / "data"
    prepare([str(DEMO / "dns.pcap"), str(DEMO / "ssh.pcap")], str(data), labels="file", progress=False)
    with pytest.raises(TrafficMoeError) as refused:
        finetune(str(data), str(tmp_path / "out"), init_from=str(folder), epochs=1, progress=False)
    assert str(folder / "pytorch_model.bin") in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists() and not (tmp_path / "out" / "model.safetensors").exists()


def test_a_folder_without_weights_is_one_line_too(tmp_path):
    from traffic_moe_hf.safe_loading import UnsafeWeightsError, require_safetensors

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnsafeWeightsError, match=r"no model weights \(model.safetensors\)"):
        require_safetensors(tmp_path)

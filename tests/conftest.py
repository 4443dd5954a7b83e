"""Shared fixtures: real flows from the capture slice shipped in the repository (data/demo/loopback9)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "loopback9"
SHARED_DATA = REPO.parent / "shared" / "data"
# the defaults (8 packets, 128 stored bytes, 64 tokens each in the compact layout): with fewer bytes the demo
# slice has too few distinct flows for the grouped split to leave a test set that measures anything
# (4 x 32 bytes: 62 distinct inputs among 360 flows)
SMALL = dict(max_packets=8, max_bytes=128)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_demo_flows(path: Path, max_flows: int = 4) -> list[tuple[list[bytes], list[int]]]:
    """The first flows of a demo capture as (IP packets, directions), grouped by bidirectional 5-tuple.

    Deliberately independent of the project's own reader (it is what the model tests feed the model)."""
    import dpkt

    flows: dict = {}
    with open(path, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                continue
            a, b = (ip.src, ip.data.sport), (ip.dst, ip.data.dport)
            key = (ip.p,) + (a + b if a <= b else b + a)
            if key not in flows:
                if len(flows) == max_flows:
                    continue
                flows[key] = ([], [], a)
            packets, directions, initiator = flows[key]
            packets.append(bytes(ip))
            directions.append(0 if a == initiator else 1)
    return [(p, d) for p, d, _ in flows.values()]


@pytest.fixture(scope="session")
def real_flows() -> dict[str, list[tuple[list[bytes], list[int]]]]:
    """label -> a few real flows (packets, directions) of that application protocol."""
    return {path.stem: read_demo_flows(path) for path in sorted(DEMO.glob("*.pcap"))}


@pytest.fixture(scope="session")
def real_batch(real_flows):
    """One padded batch of real flows (2 per class, 18 flows) and their class indices."""
    import torch

    from traffic_moe_hf import TrafficTokenizer

    tokenizer = TrafficTokenizer(max_packets=4, max_packet_bytes=48)
    labels = sorted(real_flows)
    flows, directions, targets = [], [], []
    for index, label in enumerate(labels):
        for packets, dirs in real_flows[label][:2]:
            flows.append(packets)
            directions.append(dirs)
            targets.append(index)
    batch = tokenizer(flows, directions=directions, padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor(targets)
    return batch, labels


# The recipes' fixtures (tests/test_cmd_*.py): the demo slice prepared once, a tiny model pretrained on it and
# fine-tuned from that, each once per session however many of those files run (test_robustness.py prepares
# its own data under the same name).


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    from traffic_moe_hf.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    report = prepare([str(DEMO)], str(out), labels="file", split="flow", ratios=(0.6, 0.2, 0.2), progress=False, **SMALL)
    assert report["files_read"] == 9 and report["packets_total"] == report["packets_used"] + sum(report["packets_skipped"].values())
    return out


@pytest.fixture(scope="session")
def pretrained(prepared, tmp_path_factory):
    from traffic_moe_hf.recipes.pretrain import pretrain

    out = tmp_path_factory.mktemp("pretrained")
    summary = pretrain([str(prepared)], str(out), config="tiny", max_steps=30, batch_size=16, lr=2e-3, progress=False,
                       contrastive=1.0)  # both objectives on top of masking: the tests read each one's loss
    return out, summary


@pytest.fixture(scope="session")
def finetuned(prepared, pretrained, tmp_path_factory):
    from traffic_moe_hf.recipes.finetune import finetune

    out = tmp_path_factory.mktemp("finetuned")
    summary = finetune(str(prepared), str(out), init_from=str(pretrained[0]), epochs=8, batch_size=16, lr=2e-3,
                       progress=False)
    return out, summary

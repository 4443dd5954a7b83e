"""Issue 6: traffic-shaping attacks keep captures valid, are seeded, change what they claim; the
white-box attack lowers a model's confidence; the CLI and the adversarial fine-tuning run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from traffic_moe_hf.data.decode import Decoded, parse_ip
from traffic_moe_hf.data.samples import get_tokenizer, tokenizer_settings
from traffic_moe_hf.data.prepared import dataset_options
from traffic_moe_hf.shaping.attacks import (
    ACK, DEFAULT_BUDGETS, FIN, MTU, SYN, Flow, attack_columns, make_attack, packet_info,
)

from conftest import DEMO, read_demo_flows

CASES = [(name, b) for name, budgets in DEFAULT_BUDGETS.items() for b in budgets]


@pytest.fixture(scope="module")
def full_flows():
    """Complete (untruncated, not anonymised) real flows: TCP (http, ssh, https, redis) and UDP (dns)."""
    flows = {}
    for label in ("http", "ssh", "https", "redis", "dns"):
        packets, dirs = read_demo_flows(DEMO / f"{label}.pcap", max_flows=1)[0]
        flows[label] = Flow(packets[:24], dirs[:24])
    return flows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from traffic_moe_hf.cli import main

    out = tmp_path_factory.mktemp("rob") / "demo"
    assert main(["prepare", str(DEMO), "--out", str(out), "--labels", "file", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_model(prepared):
    """A tiny Traffic-MoE classifier trained for a few dozen steps on the demo train split."""
    from traffic_moe_hf import TrafficMoeForSequenceClassification, TrafficTokenizer
    from traffic_moe_hf.recipes.common import TrafficCollator, load_prepared, model_view, moe_config

    torch.manual_seed(0)
    data = load_prepared(prepared)
    train = model_view(data["train"])
    model = TrafficMoeForSequenceClassification(moe_config("tiny", num_labels=9))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    collate = TrafficCollator(TrafficTokenizer())
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(24):
        batch = collate([train[int(i)] for i in rng.choice(len(train), 8, replace=False)])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _checksum_ok(p: bytes, info) -> bool:
    from traffic_moe_hf.shaping.attacks import _checksum

    l4 = info["l4"]
    if info["version"] == 4 and _checksum(p[:l4]) != 0:
        return False
    total = len(p)
    if info["version"] == 4:
        pseudo = p[12:20] + struct.pack(">BBH", 0, info["proto"], total - l4)
    else:
        pseudo = p[8:40] + struct.pack(">IxxxB", total - l4, info["proto"])
    return _checksum(pseudo + p[l4:]) == 0


def _stream(flow: Flow, direction: int):
    """(seq, length) of the non-chaff TCP segments of one direction, SYN/FIN counting one byte."""
    out = []
    for p, d in zip(flow.packets, flow.directions):
        info = packet_info(p)
        if d != direction or info is None or info["proto"] != 6:
            continue
        seq = struct.unpack_from(">I", p, info["l4"] + 4)[0]
        n = info["ip_len"] - info["hdr_end"] + bool(info["flags"] & SYN) + bool(info["flags"] & FIN)
        out.append((seq, n))
    return out


def _contiguous(segments) -> bool:
    expect = None
    for seq, n in segments:
        if expect is not None and n and seq != expect:
            return False
        if n:
            expect = (seq + n) & 0xFFFFFFFF
    return True


@pytest.mark.parametrize("name,budget", CASES)
def test_transform_keeps_capture_valid(full_flows, name, budget, tmp_path):
    """Every shaped packet re-parses, lengths and checksums are consistent, the capture re-reads as
    the same single flow, TCP sequence numbers stay contiguous (chaff aside), MTU respected."""
    from traffic_moe_hf.data.samples import PrepareConfig, process_file, write_pcap

    for label, flow in full_flows.items():
        out = make_attack(name, budget)(flow, seed=3)
        assert len(out.packets) == len(out.directions) == len(out.timestamps) == len(out.editable)
        assert out.timestamps == sorted(out.timestamps)
        for p in out.packets:
            info = packet_info(p)
            assert isinstance(parse_ip(p), Decoded) and info is not None
            assert info["ip_len"] == len(p) <= max(MTU, max(len(q) for q in flow.packets))
            if info["proto"] == 17:
                assert struct.unpack_from(">H", p, info["l4"] + 4)[0] == len(p) - info["l4"]
            assert _checksum_ok(p, info), (label, name, budget)
        path = tmp_path / f"{label}.pcap"
        write_pcap(path, out.packets, out.timestamps)
        raw = process_file(str(path), PrepareConfig(max_packets=10_000, max_bytes=2000, root_label={str(path): label},
                                                    normalize_tcp=False))
        assert raw["error"] is None and raw["flows_used"] == 1, (label, raw["flows"], raw["packets_skipped"])
        assert raw["packets_used"] == len(out.packets)
        assert raw["columns"]["ip_lengths"][0] == out.ip_lengths
        # TCP normalisation (prepare's default) leaves out exactly the chaff segments, nothing else
        res = process_file(str(path), PrepareConfig(max_packets=10_000, max_bytes=2000, root_label={str(path): label}))
        left_out = res["packets_skipped"]["tcp_retransmission"] + res["packets_skipped"]["tcp_out_of_window"]
        if name == "chaff" and packet_info(flow.packets[0])["proto"] == 6:
            assert left_out == len(out.packets) - len(flow.packets) > 0, (label, budget, res["packets_skipped"])
            assert res["columns"]["ip_lengths"][0] == flow.ip_lengths
        else:
            assert left_out == 0 and res["packets_used"] == len(out.packets), (label, name, res["packets_skipped"])
        if name != "chaff" and label != "dns":
            for d in (0, 1):
                assert _contiguous(_stream(flow, d)) <= _contiguous(_stream(out, d)), (label, name, d)


@pytest.mark.parametrize("name,budget", CASES)
def test_transform_on_prepared_rows(prepared, name, budget):
    """On stored (anonymised, 128-byte) rows: packets re-parse, are at most max_bytes long, the IP
    total length holds the on-wire length, and the result re-tokenizes."""
    from datasets import load_from_disk

    ds = load_from_disk(str(prepared))["test"]
    opts = dataset_options(prepared)
    cols = attack_columns(ds, make_attack(name, budget), seed=1, **opts)
    for packets, dirs, lens, ids in zip(cols["packets"], cols["directions"], cols["ip_lengths"], cols["input_ids"]):
        assert 1 <= len(packets) == len(dirs) == len(lens) <= opts["max_packets"]
        for p, n in zip(packets, lens):
            d = parse_ip(p)
            assert isinstance(d, Decoded) and len(p) <= opts["max_bytes"] and d.ip_len == n <= MTU
            assert d.src == bytes(4) and d.sport == 0 and d.seq == 0  # re-anonymised
        tok = get_tokenizer(None, tokenizer_settings(opts))
        assert len(ids) == 1 + sum(len(tok.layout(p)[: tok.max_packet_bytes]) + 1 for p in packets)


@pytest.mark.parametrize("name,budget", CASES)
def test_transform_deterministic_for_seed(full_flows, name, budget):
    attack = make_attack(name, budget)
    for flow in full_flows.values():
        a, b = attack(flow, seed=7), attack(flow, seed=7)
        assert a.packets == b.packets and a.directions == b.directions and a.timestamps == b.timestamps
    flow = full_flows["http"]
    if name in ("padding", "chaff", "headers"):  # random content: another seed gives other bytes
        assert attack(flow, seed=7).packets != attack(flow, seed=8).packets


def _data_packets(flow):
    out = []
    for p in flow.packets:
        info = packet_info(p)
        if info and info["ip_len"] > info["hdr_end"] and not info["flags"] & SYN:
            out.append((p, info))
    return out


def test_padding_adds_budget_bytes(full_flows):
    for budget in (16, 1500):
        for flow in full_flows.values():
            out = make_attack("padding", budget)(flow, seed=0)
            assert len(out.packets) == len(flow.packets)
            for (p, i), (q, j) in zip(_data_packets(flow), _data_packets(out)):
                assert j["ip_len"] == min(i["ip_len"] + budget, MTU)
                assert q[j["hdr_end"] + (j["ip_len"] - i["ip_len"]) :] == p[i["hdr_end"] :]  # payload follows the padding


def test_split_and_normalize_keep_payload(full_flows):
    flow = full_flows["http"]
    before = [p[i["hdr_end"] :] for p, i in _data_packets(flow)]
    out = make_attack("split", 4)(flow, seed=0)
    after = [p[i["hdr_end"] :] for p, i in _data_packets(out)]
    assert b"".join(after) == b"".join(before) and len(after) > len(before)
    assert max(len(a) for a in after) <= -(-max(len(b) for b in before) // 4)
    for size in (256, 512):
        out = make_attack("normalize", size)(flow, seed=0)
        assert all(i["ip_len"] == size for _, i in _data_packets(out))
        acks = [p for p in out.packets if packet_info(p)["ip_len"] == packet_info(p)["hdr_end"]]
        assert len(acks) == sum(1 for p in flow.packets if packet_info(p)["ip_len"] == packet_info(p)["hdr_end"])


def test_chaff_one_per_packet(full_flows):
    for flow in full_flows.values():
        out = make_attack("chaff", 1.0)(flow, seed=0)
        assert len(out.packets) == 2 * len(flow.packets)
        real = [out.packets[i] for i in range(0, len(out.packets), 2)]
        def body(p):  # after the IP header, checksum aside (loopback captures carry offload checksums)
            at = 20 + (16 if p[9] == 6 else 6)
            return p[20:at] + p[at + 2 :]

        assert [body(p) for p in real] == [body(p) for p in flow.packets]  # real packets untouched
        for p in out.packets[1::2]:
            info = packet_info(p)
            assert not info["flags"] & SYN
            if info["proto"] == 6:
                assert info["flags"] & ACK


def test_headers_change_only_kept_fields(full_flows):
    flow = full_flows["http"]
    out = make_attack("headers", 1.0)(flow, seed=0)
    assert out.ip_lengths == flow.ip_lengths
    ttl = {d: {p[8] for p, dd in zip(out.packets, out.directions) if dd == d} for d in (0, 1)}
    assert all(len(v) == 1 and 1 <= min(v) <= 255 for v in ttl.values())  # one TTL per direction
    windows_before = [struct.unpack_from(">H", p, 34)[0] for p in flow.packets]
    windows_after = [struct.unpack_from(">H", p, 34)[0] for p in out.packets]
    assert windows_before != windows_after
    for p, q in zip(flow.packets, out.packets):
        i = packet_info(p)
        assert q[i["hdr_end"] :] == p[i["hdr_end"] :]  # payload untouched
        assert q[12:20] == p[12:20] and q[20:32] == p[20:32]  # addresses, ports, seq, ack untouched
        assert sorted(q[40 : i["hdr_end"]]) == sorted(q[40 : i["hdr_end"]])
    syn = packet_info(out.packets[0])
    assert syn["flags"] & SYN and syn["hdr_end"] == packet_info(flow.packets[0])["hdr_end"]


def test_whitebox_lowers_confidence(prepared, tiny_model):
    """HotFlip-chosen padding bytes lower the true-class probability below random padding bytes
    of the same budget, on real flows."""
    from datasets import load_from_disk

    from traffic_moe_hf.data.samples import encode_packets, get_tokenizer, tokenizer_settings
    from traffic_moe_hf.recipes.whitebox import confidence, whitebox_columns

    ds = load_from_disk(str(prepared))["test"]
    opts = dataset_options(prepared)
    tokenizer = get_tokenizer(None, tokenizer_settings(opts))
    labels = np.asarray(ds["label"])
    cols = attack_columns(ds, make_attack("padding", 32), seed=0, **opts)
    random_conf = confidence(tiny_model, cols, labels, dense=False)
    attacked = whitebox_columns(tiny_model, cols, labels, False, tokenizer, steps=4)
    white_conf = confidence(tiny_model, attacked, labels, dense=False)
    assert white_conf.mean() < random_conf.mean()
    assert (white_conf < random_conf).mean() > 0.5
    # the bytes written back into the packets are the chosen tokens (through the header layout)
    assert list(encode_packets(attacked["packets"], attacked["directions"], tokenizer)["input_ids"]) == attacked["input_ids"]
    # only the inserted bytes changed: packets still parse, same lengths
    for before, after in zip(cols["packets"], attacked["packets"]):
        assert [len(p) for p in before] == [len(p) for p in after]
        assert all(isinstance(parse_ip(p), Decoded) for p in after)


def test_pgd_bound_lowers_accuracy(prepared, tiny_model):
    from datasets import load_from_disk

    from traffic_moe_hf.recipes.whitebox import pgd_eval, predict

    ds = load_from_disk(str(prepared))["test"]
    labels = np.asarray(ds["label"])
    cols = attack_columns(ds, None, **dataset_options(prepared))
    clean = predict(tiny_model, cols, dense=False)
    attacked = pgd_eval(tiny_model, cols, labels, dense=False, eps=1.0, steps=3)
    ce = torch.nn.functional.cross_entropy
    assert ce(torch.from_numpy(attacked), torch.from_numpy(labels)) > ce(torch.from_numpy(clean), torch.from_numpy(labels))


def test_cli_writes_json(prepared, tiny_model, tmp_path, capsys):
    from traffic_moe_hf.cli import main

    ckpt = tmp_path / "m"
    tiny_model.config.id2label = {i: n for i, n in enumerate(json.loads((prepared / "train" / "dataset_info.json").read_text())["features"]["label"]["names"])}
    tiny_model.config.label2id = {n: i for i, n in tiny_model.config.id2label.items()}
    tiny_model.save_pretrained(ckpt)
    out = tmp_path / "r.json"
    rc = main(["robustness", "--data", str(prepared), "--model", str(ckpt), "--json", str(out), "--attacks", "padding,chaff",
               "--budgets", '{"padding": [1500], "chaff": [1.0]}', "--plot", str(tmp_path / "r.png"), "--max-samples", "12"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["clean"]) == {"accuracy", "macro_f1"}
    assert set(result["attacks"]) == {"padding", "chaff"} and set(result["attacks"]["padding"]) == {"1500"}
    assert set(result["attacks"]["padding"]["1500"]) == {"accuracy", "macro_f1"}
    # the data was prepared with TCP normalisation (the default): the shaped flows are normalised too,
    # and the chaff segments it left out are reported
    chaff = result["attacks"]["chaff"]["1.0"]
    assert result["options"]["normalize_tcp"] and sum(chaff["normalized_out"].values()) > 0
    assert (tmp_path / "r.png").stat().st_size > 1000
    # a progress bar over the evaluations: clean, padding 1500, chaff 1.0
    assert "3/3" in capsys.readouterr().err


def test_finetune_adversarial_flag(prepared, tmp_path):
    """`finetune --adversarial` trains on clean + shaped flows with the embedding-PGD loss and selects
    its checkpoint on clean + shaped validation flows."""
    from traffic_moe_hf.cli import build_parser
    from traffic_moe_hf.recipes.finetune import finetune

    args = build_parser().parse_args(["finetune", "--data", "d", "--out", "o", "--adversarial", "--adv-eps", "0.2"])
    assert args.adversarial and args.adv_eps == 0.2
    summary = finetune(str(prepared), str(tmp_path / "m"), config="tiny", epochs=0.02, batch_size=8, progress=False,
                       adversarial=dict(copies=1, eps=0.3, steps=1, weight=0.5))
    from datasets import load_from_disk

    clean = load_from_disk(str(prepared))
    assert summary["train_samples"] == 2 * len(clean["train"]) and summary["adversarial"]["eps"] == 0.3
    # the checkpoint is selected on clean + shaped validation flows too
    assert summary["validation_samples"] == 2 * len(clean["validation"])
    assert np.isfinite([h["loss"] for h in summary["log_history"] if "loss" in h]).all()


def test_few_shot_adversarial_copies_are_of_the_chosen_flows(prepared, tmp_path):
    """`--shots K --adversarial`: K clean flows per class plus shaped copies of those same flows (not K
    drawn from a pool of clean and shaped rows)."""
    from datasets import load_from_disk

    from traffic_moe_hf.recipes.finetune import finetune

    classes = len(set(load_from_disk(str(prepared))["train"]["label"]))
    summary = finetune(str(prepared), str(tmp_path / "m"), config="tiny", shots=2, min_steps=1, epochs=0.01,
                       batch_size=8, progress=False, adversarial=dict(copies=2, eps=0.0))
    assert summary["train_samples"] == 3 * 2 * classes


def test_augment_split_draws_budgets_from_ranges_and_is_seeded(prepared):
    """Shaping augmentation: budgets come from continuous ranges (not only the reported values), the
    copies are seeded, keep their labels, and change the model input."""
    from datasets import load_from_disk

    from traffic_moe_hf.shaping.augment import TRAIN_RANGES, augment_split, draw_budget

    rng = np.random.default_rng(0)
    padding = [draw_budget(rng, TRAIN_RANGES["padding"]) for _ in range(2000)]
    assert min(padding) >= 1 and max(padding) <= 4096 and len(set(padding)) > 300
    assert {draw_budget(rng, TRAIN_RANGES["split"]) for _ in range(200)} == {2, 3, 4}
    assert draw_budget(rng, [16, 64]) in (16, 64)
    train = load_from_disk(str(prepared))["train"].select(range(24))
    a = augment_split(train, prepared, seed=3, copies=1)
    b = augment_split(train, prepared, seed=3, copies=1)
    assert len(a) == 2 * len(train) and a["input_ids"] == b["input_ids"]
    assert a["label"][len(train):] == train["label"]
    changed = sum(x != y for x, y in zip(a["input_ids"][len(train):], train["input_ids"]))
    assert changed >= len(train) // 2, changed


def test_adv_attacks_restricts_the_drawn_attacks():
    """`finetune --adv-attacks padding,headers`: the copies draw only those attacks; unknown names fail."""
    from traffic_moe_hf.shaping.augment import copy_choices, training_ranges

    budgets = training_ranges(["padding", "headers"])
    drawn = {name for name, _ in copy_choices(500, 0, 0, budgets)}
    assert drawn == {"padding", "headers"}
    assert {name for name, _ in copy_choices(500, 0, 0, training_ranges(None))} == {
        "padding", "split", "chaff", "normalize", "headers"}
    with pytest.raises(ValueError, match="paddding"):
        training_ranges(["paddding"])
    with pytest.raises(ValueError, match="no shaping attack"):
        training_ranges([])


@pytest.mark.parametrize("strength", [2, 4])
def test_tcp_coalescing_undoes_segment_splitting(full_flows, strength, tmp_path):
    """A real flow and the same flow with every data segment split into `strength` reach the model
    as the same input once `prepare --tcp-coalesce` merges the segments of each write; without
    coalescing they differ."""
    from traffic_moe_hf.data.samples import PrepareConfig, process_file, write_pcap

    checked = 0
    for label in ("http", "ssh", "https", "redis"):
        flow = full_flows[label]
        split = make_attack("split", strength)(flow, seed=5)
        assert len(split.packets) > len(flow.packets)
        inputs = {}
        for name, f in (("clean", flow), ("split", split)):
            path = tmp_path / f"{label}-{name}.pcap"
            write_pcap(path, f.packets, f.timestamps)
            for coalesce in (False, True):
                cfg = PrepareConfig(max_packets=8, store_packets=24, root_label={str(path): label}, coalesce_tcp=coalesce)
                res = process_file(str(path), cfg)
                assert res["packets_total"] == res["packets_used"] + sum(res["packets_skipped"].values())
                inputs[name, coalesce] = (res["columns"]["input_ids"][0], res["columns"]["direction_ids"][0])
        assert inputs["clean", True] == inputs["split", True], label
        assert inputs["clean", False] != inputs["split", False], label
        checked += 1
    assert checked == 4


def test_tcp_coalescing_of_shaped_rows(prepared, tmp_path):
    """On stored (anonymised, cut) rows prepared with --tcp-coalesce: `attack_columns` with the
    dataset's options gives split flows the clean flows' model input."""
    from datasets import load_from_disk

    from traffic_moe_hf.cli import main

    out = tmp_path / "co"
    assert main(["prepare", str(DEMO), "--out", str(out), "--labels", "file", "--no-progress", "--tcp-coalesce",
                 "--store-packets", "16"]) == 0
    ds = load_from_disk(str(out))["test"]
    opts = dataset_options(out)
    assert opts["coalesce_tcp"] and opts["normalize_tcp"]
    clean = attack_columns(ds, None, seed=1, **opts)
    assert clean["input_ids"] == list(ds["input_ids"])  # the stored input is reproduced
    split = attack_columns(ds, make_attack("split", 4), seed=1, **opts)
    same = sum(a == b for a, b in zip(split["input_ids"], clean["input_ids"]))
    uncoalesced = attack_columns(ds, make_attack("split", 4), seed=1, **{**opts, "coalesce_tcp": False})
    same_without = sum(a == b for a, b in zip(uncoalesced["input_ids"], clean["input_ids"]))
    assert same == len(ds) and same_without < len(ds) // 2, (same, same_without, len(ds))


def test_longer_window_keeps_flow_shape_under_padding(tmp_path):
    """`prepare --max-packets 16 --packet-bytes 30` (the window that defends padding on tls9, README):
    shaped rows are cut to 16 packets of 30 tokens, and padding to the MTU changes the sizes of the
    packets the model reads but not their number or directions once flows are coalesced — the signal
    a padded flow keeps."""
    from datasets import load_from_disk

    from traffic_moe_hf.cli import main

    out = tmp_path / "p16"
    assert main(["prepare", str(DEMO), "--out", str(out), "--labels", "file", "--no-progress", "--tcp-coalesce",
                 "--max-packets", "16", "--packet-bytes", "30", "--store-packets", "32"]) == 0
    ds = load_from_disk(str(out))["test"]
    opts = dataset_options(out)
    assert opts["max_packets"] == 16 and opts["packet_bytes"] == 30
    clean = attack_columns(ds, None, seed=0, **opts)
    assert clean["input_ids"] == list(ds["input_ids"])
    assert max(len(d) for d in clean["directions"]) == 16
    padded = attack_columns(ds, make_attack("padding", 1500), seed=0, **opts)
    tcp = [i for i, p in enumerate(ds["packets"]) if p and parse_ip(bytes(p[0])).proto == 6]
    assert len(tcp) > 10
    assert all(padded["directions"][i] == clean["directions"][i] for i in tcp)
    assert sum(padded["ip_lengths"][i] != clean["ip_lengths"][i] for i in tcp) > len(tcp) // 2
    assert max(len(d) for d in padded["directions"]) == 16


def test_ceiling_refuses_a_window_longer_than_the_stored_flows(tmp_path):
    """`benchmarks/robustness/robustness_ceiling.py --packets K` with K above `prepare --store-packets`: refused with
    the dataset named (reading on would give the forest zero-filled packets)."""
    import importlib.util

    from traffic_moe_hf.cli import main

    out = tmp_path / "p8"
    assert main(["prepare", str(DEMO), "--out", str(out), "--labels", "file", "--no-progress"]) == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness" / "robustness_ceiling.py"
    spec = importlib.util.spec_from_file_location("robustness_ceiling", script)
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    assert ceiling.stored_packets(str(out), dataset_options(out)) == 8
    with pytest.raises(SystemExit, match=r"p8: --packets 16 but the dataset stores at most 8"):
        ceiling.run_task(str(out), {}, lambda *a: None, packets=16)

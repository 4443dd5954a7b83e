"""The byte-level traffic tokenizer on real packets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from traffic_moe_hf import TrafficTokenizer
from traffic_moe_hf.tokenization_traffic_moe import BYTE_OFFSET, CLS_ID, PKT_ID

REPO = Path(__file__).resolve().parents[1]


def test_round_trip_real_packets_exactly(real_flows):
    tokenizer = TrafficTokenizer(max_packets=64, max_packet_bytes=1600, header_layout="full")
    count = 0
    for flows in real_flows.values():
        for packets, directions in flows:
            enc = tokenizer(packets, directions=directions)
            assert tokenizer.decode_flow(enc["input_ids"]) == packets
            # hex text of the same packets goes through the tokenizers backend to the same ids
            text = tokenizer.decode(enc["input_ids"], skip_special_tokens=True)
            assert tokenizer(text)["input_ids"] == enc["input_ids"]
            count += len(packets)
    assert count > 100


def test_structure_ids_and_truncation(real_flows):
    packets, directions = real_flows["http"][0]
    assert len(packets) >= 4 and set(directions[:4]) == {0, 1}
    tokenizer = TrafficTokenizer(max_packets=3, max_packet_bytes=20, header_layout="full")
    enc = tokenizer(packets, directions=directions, return_special_tokens_mask=True)
    ids = enc["input_ids"]
    assert ids[0] == CLS_ID and ids.count(PKT_ID) == 3
    assert len(ids) == 1 + 3 * (1 + 20) == len(enc["packet_ids"]) == len(enc["direction_ids"])
    assert enc["packet_ids"] == [0] + [1] * 21 + [2] * 21 + [3] * 21
    assert enc["direction_ids"] == [0] + [1 + d for d in directions[:3] for _ in range(21)]
    assert ids[2:22] == [b + BYTE_OFFSET for b in packets[0][:20]]
    assert enc["special_tokens_mask"] == [int(i < BYTE_OFFSET) for i in ids]
    cut = tokenizer(packets, directions=directions, max_length=30, truncation=True)
    assert cut["input_ids"] == ids[:30]
    wider = tokenizer(packets, directions=directions, max_packets=5, max_packet_bytes=8)
    assert wider["input_ids"].count(PKT_ID) == 5 and len(wider["input_ids"]) == 1 + 5 * 9


def _ipv6_packets() -> list[bytes]:
    """IPv6 TCP (with options and payload), IPv6 UDP behind a hop-by-hop header, built with dpkt."""
    import dpkt

    tcp = dpkt.tcp.TCP(sport=40000, dport=443, seq=123456, ack=654321, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH,
                       win=501, opts=b"\x01\x01\x08\x0a\x00\x01\x02\x03\x04\x05\x06\x07", data=b"GET / HTTP/1.1\r\n")
    a = dpkt.ip6.IP6(src=bytes(range(16)), dst=bytes(range(16, 32)), nxt=6, hlim=64, flow=0x12345, data=tcp)
    a.plen = len(bytes(tcp))
    udp = bytes(dpkt.udp.UDP(sport=5353, dport=53, data=b"\x12\x34query"))
    hop = bytes([17, 0]) + bytes([1, 4, 0xAA, 0xBB, 0xCC, 0xDD])  # next: UDP, 8 bytes, a PadN-like option
    b = bytearray(bytes(dpkt.ip6.IP6(src=bytes(16), dst=bytes(range(1, 17)), nxt=0, hlim=7, data=b"")))
    b[4:6] = (len(hop) + len(udp)).to_bytes(2, "big")
    return [bytes(a), bytes(b) + hop + udp]


def test_compact_layout_drops_exactly_what_anonymisation_changes(real_flows):
    """Compact-layout tokens of a raw packet equal those of its anonymised copy (TTL kept): the layout
    leaves out every byte anonymisation changes, and the bytes it drops are zeros once anonymised."""
    from traffic_moe_hf.data.anonymize import anonymize
    from traffic_moe_hf.data.decode import Decoded, parse_ip
    from traffic_moe_hf.tokenization_traffic_moe import compact_ranges

    compact = TrafficTokenizer(max_packet_bytes=1600, capture_bytes=1600)
    packets = [p for flows in real_flows.values() for f, _ in flows for p in f] + _ipv6_packets()
    saved = 0
    for packet in packets:
        d = parse_ip(packet)
        assert type(d) is Decoded
        anon = anonymize(d, 1600, ttl="keep")
        assert compact.layout(packet) == compact.layout(anon)
        kept = {i for s, e in compact_ranges(anon) for i in range(s, e)}
        assert all(anon[i] == 0 for i in range(len(anon)) if i not in kept)
        # payload is never dropped
        header = d.l4 + ((packet[d.l4 + 12] >> 4) * 4 if d.proto == 6 else 8)
        assert compact.layout(packet).endswith(packet[header:])
        saved += len(packet) - len(compact.layout(packet))
    assert saved >= 20 * len(packets)
    # an IPv4/TCP packet with timestamps keeps 18 of its 52 header bytes: 46 payload bytes in 64 tokens
    http = next(p for f, _ in real_flows["http"] for p in f if len(p) > 120 and p[32] == 0x80)
    assert len(compact.layout(http[:52])) == 18
    assert TrafficTokenizer()([http])["input_ids"][2 + 18 : 2 + 64] == [b + BYTE_OFFSET for b in http[52 : 52 + 46]]


def test_token_byte_indices_follow_the_layout(real_flows):
    for tokenizer in (TrafficTokenizer(), TrafficTokenizer(header_layout="full"), TrafficTokenizer(max_packet_bytes=20)):
        for packet in [p for f, _ in real_flows["http"] for p in f] + _ipv6_packets():
            index = tokenizer.token_byte_indices(packet)
            assert bytes(packet[i] for i in index) == tokenizer.layout(packet)[: tokenizer.max_packet_bytes]
            assert index == sorted(set(index)) and all(i < tokenizer.capture_bytes for i in index)


def test_compact_ranges_never_fail_on_arbitrary_bytes():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from traffic_moe_hf.tokenization_traffic_moe import compact_ranges

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200), st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x41, 0x00]))
    def check(data, first):
        packet = bytes([first]) + data
        ranges = compact_ranges(packet)
        assert all(0 <= s < e <= len(packet) for s, e in ranges)
        assert all(e1 < s2 for (_s1, e1), (s2, _e2) in zip(ranges, ranges[1:]))

    check()


def test_encode_flat_equals_the_per_flow_encoding(real_flows):
    """What prepare stores (flat buffers -> Arrow) is token for token what the tokenizer returns per flow."""
    flows = [f for name in sorted(real_flows) for f in real_flows[name]] + [(_ipv6_packets(), [0, 1]), ([b""], [1])]
    for tokenizer in (TrafficTokenizer(), TrafficTokenizer(header_layout="full", max_packets=3, max_packet_bytes=20)):
        packets, directions = [f for f, _ in flows], [d for _, d in flows]
        flat = tokenizer.encode_flat(packets, directions)
        ref = tokenizer(packets, directions=directions)
        offsets = flat["offsets"].tolist()
        assert offsets[0] == 0 and offsets[-1] == len(flat["input_ids"]) and len(offsets) == len(flows) + 1
        for key in ("input_ids", "packet_ids", "direction_ids"):
            assert [flat[key][a:b].tolist() for a, b in zip(offsets, offsets[1:])] == ref[key]
        without = tokenizer.encode_flat(packets)  # no directions: every packet from the initiator, as __call__
        assert without["direction_ids"].tolist() == [d for row in tokenizer(packets)["direction_ids"] for d in row]
    assert TrafficTokenizer().encode_flat([])["offsets"].tolist() == [0]
    # padded tensors (what predict asks for) come from the flat buffers: the same as padding the lists
    for tokenizer in (TrafficTokenizer(), TrafficTokenizer().set_bert_inputs()):
        for multiple in (None, 8):
            fast = tokenizer(packets, directions=directions, padding=True, pad_to_multiple_of=multiple, return_tensors="pt")
            lists = tokenizer(packets, directions=directions)
            ref = tokenizer.pad(lists, padding=True, pad_to_multiple_of=multiple, return_tensors="pt")
            assert list(fast) == list(ref) and all(torch.equal(fast[k], ref[k]) and fast[k].dtype == ref[k].dtype for k in ref)
    with pytest.raises(ValueError, match="direction must be 0 or 1"):
        TrafficTokenizer().encode_flat([flows[0][0]], [[0, 2] + [0] * len(flows[0][0])])
    with pytest.raises(ValueError, match="directions for"):
        TrafficTokenizer().encode_flat([flows[0][0]], [[]])


def test_batch_padding_and_tensors(real_flows):
    tokenizer = TrafficTokenizer()
    flows = [real_flows["dns"][0], real_flows["ssh"][0]]
    batch = tokenizer([f for f, _ in flows], directions=[d for _, d in flows], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "packet_ids", "direction_ids"}
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] < lengths[1] == batch["input_ids"].shape[1]
    assert (batch["input_ids"][0, lengths[0] :] == tokenizer.pad_token_id).all()
    assert (batch["packet_ids"][0, lengths[0] :] == 0).all()
    with pytest.raises(ValueError, match="padding"):
        tokenizer([f for f, _ in flows], return_tensors="pt")
    # a padded batch decodes to one text per flow (transformers 5's decode / batch_decode take batches);
    # it used to fail with a TypeError on the nested list
    texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert texts == tokenizer.decode(batch["input_ids"], skip_special_tokens=True)
    assert texts == [tokenizer.decode(batch["input_ids"][i], skip_special_tokens=True) for i in range(2)]
    assert texts[0] == "\n".join(p.hex() for p in tokenizer.decode_flow(batch["input_ids"][0]))
    # one sequence given as a list of numpy integers (list(array)) stays one sequence, as before batches
    import numpy as np

    row = batch["input_ids"][0].tolist()
    assert tokenizer.decode([np.int64(i) for i in row]) == tokenizer.decode(row)
    assert tokenizer.decode([torch.tensor(row), torch.tensor(row)]) == [tokenizer.decode(row)] * 2


def test_bad_input_errors():
    tokenizer = TrafficTokenizer()
    with pytest.raises(ValueError, match="not hex"):
        tokenizer("45zz")
    with pytest.raises(TypeError, match="packet"):
        tokenizer([[1, 2, 3]])
    with pytest.raises(ValueError, match="direction"):
        tokenizer([b"\x45\x00"], directions=[3])


def test_collator_pads_structure_fields(real_flows):
    tokenizer = TrafficTokenizer(max_packets=4, max_packet_bytes=32)
    samples = [tokenizer(p, directions=d) for p, d in real_flows["redis"][:3]]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=0)
    batch = collator(samples)
    assert batch["input_ids"].shape == batch["packet_ids"].shape == batch["direction_ids"].shape == batch["labels"].shape
    masked = batch["labels"] != -100
    assert masked.any()
    # special tokens ([CLS], [PKT], padding) are never chosen for prediction
    assert (batch["labels"][masked] >= BYTE_OFFSET).all()


def test_default_tokenizer_folder_loads_with_autotokenizer(real_flows):
    tokenizer = AutoTokenizer.from_pretrained(REPO / "tokenizer")
    assert isinstance(tokenizer, TrafficTokenizer)
    packets, directions = real_flows["mqtt"][0]
    assert tokenizer(packets, directions=directions)["input_ids"] == TrafficTokenizer()(packets, directions=directions)["input_ids"]
    assert len(tokenizer) == 262 and tokenizer.mask_token_id == 4 and tokenizer.convert_tokens_to_ids("[PKT]") == PKT_ID


def test_save_and_reload_keeps_settings(tmp_path, real_flows):
    tokenizer = TrafficTokenizer(max_packets=5, max_packet_bytes=40, header_layout="full", capture_bytes=90)
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert (again.max_packets, again.max_packet_bytes, again.header_layout, again.capture_bytes) == (5, 40, "full", 90)
    # a folder saved before header layouts (no `header_layout` / `capture_bytes`) fed a full-layout model
    import json

    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("header_layout"), config.pop("capture_bytes")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    legacy = AutoTokenizer.from_pretrained(tmp_path)
    assert (legacy.header_layout, legacy.capture_bytes) == ("full", 40)
    assert TrafficTokenizer().header_layout == "compact"
    # a folder with no tokenizer files at all (a model saved alone): an error saying so, not the defaults
    for name in ("tokenizer_config.json", "tokenizer.json"):
        (tmp_path / name).unlink()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "traffic_moe"}))
    with pytest.raises(ValueError, match="no tokenizer saved here"):
        AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.decode([CLS_ID, 6 + 0x45, -100, 6]) == "[CLS]4500"  # -100 (ignored label positions) skipped
    packets, directions = real_flows["smtp"][0]
    assert again(packets, directions=directions) == tokenizer(packets, directions=directions)
    assert torch.equal(
        again([packets], directions=[directions], return_tensors="pt")["input_ids"],
        tokenizer([packets], directions=[directions], return_tensors="pt")["input_ids"],
    )


def test_shipped_tokenizer_folder_is_generated_from_the_package(tmp_path):
    """tokenizer/ is produced by `python -m traffic_moe_hf.hub --write-tokenizer tokenizer/`, not edited by hand:
    regenerated here, every file must equal the committed one byte for byte (the remote-code copy included)."""
    import subprocess
    import sys

    out = tmp_path / "tokenizer"
    result = subprocess.run([sys.executable, "-m", "traffic_moe_hf.hub", "--write-tokenizer", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    shipped = {p.name: p.read_bytes() for p in (REPO / "tokenizer").iterdir() if p.is_file()}
    generated = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert set(generated) == {"tokenizer.json", "tokenizer_config.json", "tokenization_traffic_moe.py"}
    drifted = sorted(n for n in set(shipped) | set(generated) if shipped.get(n) != generated.get(n))
    assert not drifted, f"tokenizer/ drifted from the package: {drifted}; run python -m traffic_moe_hf.hub --write-tokenizer tokenizer/"
    source = REPO / "src" / "traffic_moe_hf" / "tokenization_traffic_moe.py"
    assert generated["tokenization_traffic_moe.py"] == source.read_bytes()

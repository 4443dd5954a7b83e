"""Two copies of a real flow that differ only in the anonymised fields give identical model input."""

import struct

import dpkt

from _data_util import DEMO, write_pcap
from traffic_moe_hf.data.anonymize import anonymize
from traffic_moe_hf.data.decode import Decoded, parse_ip
from traffic_moe_hf.data.prepare import prepare
from traffic_moe_hf.data.reader import iter_records
from traffic_moe_hf.data.samples import encode_packets


def _shift_ts_option(opts: bytes, delta: int) -> bytes:
    out, i = bytearray(opts), 0
    while i < len(out):
        kind = out[i]
        if kind in (0, 1):
            i += 1
            continue
        ln = out[i + 1]
        if kind == 8:
            tv, te = struct.unpack_from(">II", out, i + 2)
            struct.pack_into(">II", out, i + 2, (tv + delta) & 0xFFFFFFFF, (te + delta) & 0xFFFFFFFF)
        i += ln
    return bytes(out)


def _disguise(frame: bytes) -> bytes:
    """Change MACs, addresses, ports, IP ID, TTL, seq/ack, TCP timestamps; recompute checksums."""
    eth = dpkt.ethernet.Ethernet(frame)
    eth.src, eth.dst = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    ip = eth.data
    l4 = ip.data
    client = l4.sport != 80
    ip.src, ip.dst = (b"\xc0\xa8\x01\x07", b"\x0a\x09\x08\x07") if client else (b"\x0a\x09\x08\x07", b"\xc0\xa8\x01\x07")
    ip.id = (ip.id + 4321) & 0xFFFF
    ip.ttl = 117
    ip.sum = 0
    l4.sport, l4.dport = (51515, 8080) if client else (8080, 51515)
    l4.seq = (l4.seq + 0x12345678) & 0xFFFFFFFF
    if l4.ack:
        l4.ack = (l4.ack + 0x0BADBEEF) & 0xFFFFFFFF
    l4.opts = _shift_ts_option(l4.opts, 777777)
    l4.sum = 0
    return bytes(eth)


def test_disguised_copy_gives_identical_model_input(tmp_path):
    recs = [(ts, fr) for ts, _lt, fr in iter_records(DEMO / "http.pcap")]
    first = dpkt.ethernet.Ethernet(recs[0][1]).data.data
    flow = [(ts, fr) for ts, fr in recs
            if {dpkt.ethernet.Ethernet(fr).data.data.sport, dpkt.ethernet.Ethernet(fr).data.data.dport} == {first.sport, 80}][:16]
    assert len(flow) == 16
    a = write_pcap(tmp_path / "a" / "x.pcap" if (tmp_path / "a").mkdir() is None else None, flow)
    b = write_pcap(tmp_path / "b" / "x.pcap" if (tmp_path / "b").mkdir() is None else None,
                   [(ts, _disguise(fr)) for ts, fr in flow])
    raw_a = [fr for _t, fr in flow]
    raw_b = [_disguise(fr) for fr in raw_a]
    assert all(x != y for x, y in zip(raw_a, raw_b))  # every packet really differs
    ra = prepare([a], None, labels="dir", split="none", max_packets=16, max_bytes=96, progress=False, save=False)
    rb = prepare([b], None, labels="dir", split="none", max_packets=16, max_bytes=96, progress=False, save=False)
    da, db = ra["_dataset"]["test"][0], rb["_dataset"]["test"][0]
    for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids", "packets", "directions"):
        assert da[k] == db[k], k
    assert da["five_tuple"] != db["five_tuple"]  # metadata keeps the real endpoints
    # and without anonymisation the inputs do differ (the test can fail)
    ra = prepare([a], None, labels="dir", split="none", anonymize=False, progress=False, save=False)
    rb = prepare([b], None, labels="dir", split="none", anonymize=False, progress=False, save=False)
    assert ra["_dataset"]["test"][0]["input_ids"] != rb["_dataset"]["test"][0]["input_ids"]


def test_fields_zeroed_and_idempotent():
    for _ts, lt, fr in list(iter_records(DEMO / "https.pcap"))[:50]:
        d = parse_ip(dpkt.ethernet.Ethernet(fr).data.__bytes__())
        assert isinstance(d, Decoded)
        out = anonymize(d, 1500)
        assert out[4:6] == b"\0\0" and out[8] == 0 and out[10:20] == bytes(10)
        assert out[20:32] == bytes(12) and out[36:38] == b"\0\0"
        d2 = parse_ip(out)
        assert anonymize(d2, 1500) == out
        assert encode_packets([out], [0])["input_ids"][0][:3] == [2, 5, 0x45 + 6]

"""Flows: SYN restart vs retransmitted SYN, UDP idle timeout, directions, bursts; counts on real data."""

import collections

import dpkt
import pytest

from _data_util import DEMO, SHARED, ether, tcp_packet, udp_packet, write_pcap
from traffic_moe_hf.data.flows import bursts
from traffic_moe_hf.data.samples import PrepareConfig, process_file

S, SA, A = dpkt.tcp.TH_SYN, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, dpkt.tcp.TH_ACK
C, SV = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"


def _cfg(**kw):
    return PrepareConfig(tokenize=False, label_mode="file", **kw)


def test_syn_restart_and_retransmission(tmp_path):
    pk = [
        tcp_packet(C, SV, 40000, 80, S, seq=1),
        tcp_packet(C, SV, 40000, 80, S, seq=1),  # retransmitted SYN: same flow
        tcp_packet(SV, C, 80, 40000, SA, seq=50, ack=2),
        tcp_packet(C, SV, 40000, 80, A, seq=2, ack=51),
        tcp_packet(C, SV, 40000, 80, S, seq=9999),  # port reuse: new flow
        tcp_packet(SV, C, 80, 40000, SA, seq=70, ack=10000),
    ]
    p = write_pcap(tmp_path / "t.pcap", [(i * 0.1, ether(x)) for i, x in enumerate(pk)])
    cfg = _cfg()
    cfg.root_label = {str(p): "t"}
    r = process_file(str(p), cfg)
    cols = r["columns"]
    assert r["flows"] == 2
    assert cols["directions"] == [[0, 0, 1, 0], [0, 1]]
    assert cols["packet_count"] == [4, 2]
    assert cols["five_tuple"][0] == "tcp 10.0.0.1:40000-10.0.0.2:80"


def test_synack_first_makes_receiver_the_client(tmp_path):
    pk = [tcp_packet(SV, C, 80, 40000, SA, seq=50, ack=2), tcp_packet(C, SV, 40000, 80, A, seq=2, ack=51)]
    p = write_pcap(tmp_path / "t.pcap", [(i, ether(x)) for i, x in enumerate(pk)])
    cfg = _cfg()
    cfg.root_label = {str(p): "t"}
    cols = process_file(str(p), cfg)["columns"]
    assert cols["directions"] == [[1, 0]] and cols["five_tuple"] == ["tcp 10.0.0.1:40000-10.0.0.2:80"]


def test_udp_idle_timeout(tmp_path):
    pk = [(0.0, udp_packet(C, SV)), (1.0, udp_packet(SV, C, 53, 5353)), (100.0, udp_packet(C, SV))]
    p = write_pcap(tmp_path / "u.pcap", [(t, ether(x)) for t, x in pk])
    for timeout, flows in ((60.0, 2), (200.0, 1)):
        cfg = _cfg(udp_timeout=timeout)
        cfg.root_label = {str(p): "u"}
        assert process_file(str(p), cfg)["flows"] == flows


def test_bursts():
    assert bursts([0, 0, 1, 0, 0, 0], [1, 2, 3, 4, 5, 6]) == [(0, 2, 3), (1, 1, 3), (0, 3, 15)]
    assert bursts([]) == []


def _reference_flow_count(path):
    """Independent count with dpkt's full decode, the rule of ../shared/tools/cut-flows.py."""
    gen, isn, seen = collections.Counter(), {}, set()
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                continue
            l4 = ip.data
            a, b = (bytes(ip.src), l4.sport), (bytes(ip.dst), l4.dport)
            key = (type(l4).__name__,) + (a + b if a <= b else b + a)
            syn = isinstance(l4, dpkt.tcp.TCP) and l4.flags & S and not l4.flags & A
            if syn and isn.get(key) != l4.seq:
                gen[key] += 1
                isn[key] = l4.seq
            seen.add((key, gen[key]))
    return len(seen)


def test_flow_counts_loopback9():
    d = SHARED / "loopback9"
    if not d.exists():
        pytest.skip(f"{d} absent (../shared/data not next to the checkout)")
    for path in sorted(d.glob("*.pcap")):
        cfg = _cfg()
        cfg.root_label = {str(path): path.stem}
        r = process_file(str(path), cfg)
        expected = 400 if path.stem == "ftp" else 200
        assert r["flows"] == expected == _reference_flow_count(path), path.name
        assert r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values())


def test_flow_counts_demo_slice():
    for path in sorted(DEMO.glob("*.pcap")):
        cfg = _cfg()
        cfg.root_label = {str(path): path.stem}
        r = process_file(str(path), cfg)
        assert r["flows"] == _reference_flow_count(path) == 40, path.name

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


def test_tcp_normalisation_leaves_out_retransmissions_and_out_of_window_segments(tmp_path):
    """A retransmission and a segment 2^31 away are left out and counted; a reordered segment that
    fills a gap, pure ACKs and the server's data (its own sequence space) are kept."""
    P = dpkt.tcp.TH_PUSH | A
    pk = [
        tcp_packet(C, SV, 40000, 80, S, seq=100),
        tcp_packet(SV, C, 80, 40000, SA, seq=7000, ack=101),
        tcp_packet(C, SV, 40000, 80, A, seq=101, ack=7001),
        tcp_packet(C, SV, 40000, 80, P, seq=111, ack=7001, payload=b"B" * 10),  # arrives before the gap fills
        tcp_packet(C, SV, 40000, 80, P, seq=101, ack=7001, payload=b"A" * 10),  # fills the gap: kept
        tcp_packet(C, SV, 40000, 80, P, seq=101, ack=7001, payload=b"A" * 10),  # retransmission
        tcp_packet(C, SV, 40000, 80, P, seq=101 + (1 << 31), ack=7001, payload=b"X" * 30),  # out of window
        tcp_packet(SV, C, 80, 40000, P, seq=7001, ack=121, payload=b"R" * 50),  # other direction: kept
        tcp_packet(C, SV, 40000, 80, A, seq=121, ack=7051),  # pure ACK: kept
        tcp_packet(C, SV, 40000, 80, A, seq=121, ack=7051),  # duplicate pure ACK: kept (no payload)
    ]
    p = write_pcap(tmp_path / "t.pcap", [(i * 0.01, ether(x)) for i, x in enumerate(pk)])
    for normalize, kept in ((True, [0, 1, 2, 3, 4, 7, 8, 9]), (False, list(range(10)))):
        cfg = _cfg(normalize_tcp=normalize, max_packets=16)
        cfg.root_label = {str(p): "t"}
        r = process_file(str(p), cfg)
        assert r["columns"]["ip_lengths"] == [[len(pk[i]) for i in kept]]
        assert r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values()) == 10
        if normalize:
            assert r["packets_skipped"] == {"tcp_retransmission": 1, "tcp_out_of_window": 1}
            assert r["columns"]["tcp_seq"] == [[0, 0, 1, 11, 1, 1, 21, 21]]


def test_tcp_coalescing_merges_one_write_and_keeps_the_accounting(tmp_path):
    """Segments without PSH are merged with the next contiguous one of the same direction: IP lengths
    add up, payloads are concatenated, PSH of the last is kept; a PSH segment ends the write."""
    P = dpkt.tcp.TH_PUSH | A
    pk = [
        tcp_packet(C, SV, 40000, 80, S, seq=100),
        tcp_packet(SV, C, 80, 40000, SA, seq=7000, ack=101),
        tcp_packet(C, SV, 40000, 80, A, seq=101, ack=7001, payload=b"GET / HT"),
        tcp_packet(C, SV, 40000, 80, A, seq=109, ack=7001, payload=b"TP/1.1\r\n"),
        tcp_packet(C, SV, 40000, 80, P, seq=117, ack=7001, payload=b"\r\n"),
        tcp_packet(C, SV, 40000, 80, P, seq=119, ack=7001, payload=b"next"),  # after PSH: a new write
        tcp_packet(SV, C, 80, 40000, P, seq=7001, ack=123, payload=b"HTTP/1.1 200"),
    ]
    p = write_pcap(tmp_path / "t.pcap", [(i * 0.01, ether(x)) for i, x in enumerate(pk)])
    cfg = _cfg(coalesce_tcp=True, max_packets=16, anonymize=False)
    cfg.root_label = {str(p): "t"}
    r = process_file(str(p), cfg)
    cols = r["columns"]
    assert cols["ip_lengths"] == [[40, 40, 40 + 18, 44, 52]]
    assert cols["packets"][0][2][40:] == b"GET / HTTP/1.1\r\n\r\n" and cols["packets"][0][2][33] & dpkt.tcp.TH_PUSH
    assert cols["tcp_seq"] == [[0, 0, 1, 19, 1]]
    assert r["packets_used"] == 7 and r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values())


def test_tcp_coalescing_across_the_peers_acks_matches_one_segment_write(tmp_path):
    """A server write sent as two segments with the client's ACK in between (a small MTU) reaches the
    model as the same write sent in one segment followed by one ACK."""
    P = dpkt.tcp.TH_PUSH | A
    head = [
        tcp_packet(C, SV, 40000, 443, S, seq=100),
        tcp_packet(SV, C, 443, 40000, SA, seq=7000, ack=101),
        tcp_packet(C, SV, 40000, 443, P, seq=101, ack=7001, payload=b"hello"),
    ]
    body = bytes(range(256)) * 4
    one = head + [tcp_packet(SV, C, 443, 40000, P, seq=7001, ack=106, payload=body),
                  tcp_packet(C, SV, 40000, 443, A, seq=106, ack=7001 + len(body))]
    two = head + [tcp_packet(SV, C, 443, 40000, A, seq=7001, ack=106, payload=body[:600]),
                  tcp_packet(C, SV, 40000, 443, A, seq=106, ack=7601),
                  tcp_packet(SV, C, 443, 40000, P, seq=7601, ack=106, payload=body[600:]),
                  tcp_packet(C, SV, 40000, 443, A, seq=106, ack=7001 + len(body))]
    out = {}
    for name, pk in (("one", one), ("two", two)):
        p = write_pcap(tmp_path / f"{name}.pcap", [(i * 0.01, ether(x)) for i, x in enumerate(pk)])
        for coalesce in (False, True):
            cfg = PrepareConfig(label_mode="file", coalesce_tcp=coalesce, max_packets=8)
            cfg.root_label = {str(p): "t"}
            r = process_file(str(p), cfg)
            assert r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values()) == len(pk)
            out[name, coalesce] = (r["columns"]["input_ids"][0], r["columns"]["direction_ids"][0], r["columns"]["ip_lengths"][0])
    assert out["one", True] == out["two", True] == out["one", False]
    assert out["two", False] != out["one", False]


def test_predict_reader_takes_full_samples_and_assembles_files_as_prepare_does(tmp_path):
    """predict's reader hands over a flow's sample once it holds max_packets packets and goes on counting the
    flow (the flow keeps no packets: bounded memory); read from a file (no idle eviction) it makes the flows
    prepare makes even when the capture's clock jumps ahead and back, which idle eviction does not."""
    from collections import Counter

    from traffic_moe_hf.data.flows import FlowTable
    from traffic_moe_hf.data.reader import open_capture
    from traffic_moe_hf.recipes.predict import _read_flows

    other = b"\x0a\x00\x00\x03"
    pk = [(0.0, udp_packet(C, SV)), (1.0, udp_packet(SV, C, 53, 5353)), (1000.0, udp_packet(other, SV)),
          (2.0, udp_packet(C, SV)), (3.0, udp_packet(C, SV)), (4.0, udp_packet(C, SV))]
    p = write_pcap(tmp_path / "jump.pcap", [(t, ether(x)) for t, x in pk])
    cfg = _cfg(max_packets=2)
    cfg.root_label = {str(p): "j"}
    cols = process_file(str(p), cfg)["columns"]
    expected = sorted(zip(cols["five_tuple"], cols["start_time"], cols["packet_count"], map(tuple, cols["packets"])))
    assert [c for _t, _s, c, _p in expected] == [5, 1]

    def read(evict):
        table = FlowTable(max_packets=2, max_bytes=cfg.max_bytes)
        summary = {"packets_total": 0, "packets_used": 0, "packets_skipped": Counter(), "flows_evicted": 0,
                   "max_open_flows": 0}
        samples, rows, taken_while_open = {}, [], []

        def ready(flow, sample):
            samples[flow.index] = sample
            taken_while_open.append(flow.packets is table.taken)

        def closed(flow, sample):
            if sample is not None:
                samples[flow.index] = sample
            rows.append((flow.five_tuple(), flow.start, flow.count, tuple(samples[flow.index][0])))

        _read_flows(open_capture(str(p)), table, 2, summary, ready, closed, evict=evict)
        for flow in table.finish():
            closed(flow, None if flow.packets is table.taken else (flow.packets, flow.directions))
        assert summary["packets_used"] + sum(summary["packets_skipped"].values()) == summary["packets_total"] == 6
        return sorted(rows), taken_while_open

    rows, taken = read(evict=False)
    assert rows == expected and taken == [True]  # the 5-packet flow: sample taken at 2 packets, 3 more counted
    evicted, _ = read(evict=True)  # the jump to t=1000 evicts the first flow; its later packets make a new one
    assert len(evicted) == 3 and evicted != expected

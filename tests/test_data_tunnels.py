"""Tunnels are decapsulated (issue #28, item 6): GRE, ERSPAN, IP-in-IP, VXLAN, GTP-U on the public traces'
real captures. The expected counts come from an independent reader written here with dpkt (``_reference``),
checked against the numbers this file states; the implementation must then produce exactly those inner flows,
packets and per-kind counts. ``--tunnels outer`` must read the outer packets as before, captures without tunnels
must read the same either way, and the inner headers the model sees must be anonymised."""

import argparse
import ipaddress
import struct
from collections import Counter
from types import SimpleNamespace

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _data_util import DEMO, SHARED, ether, tcp_packet, udp_packet, write_pcap
from traffic_moe_hf.data.decode import MAX_TUNNEL_DEPTH, SKIP_REASONS, Decoded, decode, parse_ip
from traffic_moe_hf.data.flows import FlowTable
from traffic_moe_hf.data.prepare import add_parser, format_report, prepare
from traffic_moe_hf.data.reader import iter_records, open_capture
from traffic_moe_hf.data.samples import PrepareConfig, process_file, tunnels_record

ZEEK = SHARED / "public" / "zeek-traces" / "tunnels"
SV = SHARED / "public" / "suricata-verify" / "pcaps"
needs_shared = pytest.mark.skipif(not (ZEEK.is_dir() and SV.is_dir()),
                                  reason=f"{SHARED}/public absent (../shared/data not next to the checkout)")

# capture, tunnel headers per kind, inner TCP/UDP flows, inner TCP/UDP packets — as _reference counts them
CASES = [
    (ZEEK / "gre-sample.pcap", {"gre": 40}, 5, 30),  # GRE, inner IPv4: 22 TCP + 8 UDP + 10 ICMP
    (ZEEK / "gre-within-gre.pcap", {"gre": 1256}, 2, 4),  # 628 packets in GRE in GRE (624 ICMP)
    (SV / "bug-2576-02" / "temp1.pcap", {"gre": 17}, 1, 17),  # GRE transparent Ethernet bridging (0x6558)
    (ZEEK / "gre-pptp.pcap", {"ipv4_in_ip": 2, "gre": 2}, 1, 2),  # IPv4 in IPv6, then PPTP (GRE v1, PPP)
    (SV / "bug-5437-02" / "input.pcap", {"erspan": 60}, 10, 60),  # ERSPAN type II
    (ZEEK / "6in4.pcap", {"ipv6_in_ip": 1}, 1, 1),
    (ZEEK / "4in6.pcap", {"ipv4_in_ip": 1}, 1, 1),
    (ZEEK / "6in6in6.pcap", {"ipv6_in_ip": 2}, 1, 1),
    (SV / "bug-4571-04" / "ipv6_over_ipv4.pcap", {"ipv6_in_ip": 1}, 1, 1),
    (ZEEK / "vxlan-encapsulated-http.pcap", {"vxlan": 12}, 1, 12),
    (SV / "vxlan-decoder-03" / "vxlan.pcap", {"vxlan": 100}, 13, 100),
    (ZEEK / "vxlan-triple-v2.pcap", {"vxlan": 3}, 1, 1),  # three VXLAN headers nested
    (ZEEK / "gtp" / "gtp6_gtp_0x32.pcap", {"gtpu": 31}, 1, 31),  # G-PDUs with a sequence number
    (ZEEK / "gtp" / "gtp7_ipv6.pcap", {"gtpu": 2}, 1, 1),  # inner IPv6 (one UDP, one ICMPv6)
]
IDS = [str(c[0].relative_to(c[0].parents[1])) for c in CASES]


# ---- the independent reader: dpkt's layers, VXLAN and GTP-U by hand (dpkt 1.9 has neither) ----

def _gtp_inner(b: bytes):
    if len(b) < 8 or b[0] >> 5 != 1 or not b[0] & 0x10 or b[1] != 0xFF:
        return None
    off = 8
    if b[0] & 0x07:
        off, nxt = 12, (b[11] if b[0] & 0x04 else 0)
        while nxt:
            size = b[off] * 4
            nxt, off = b[off + size - 1], off + size
    return b[off : 8 + struct.unpack(">H", b[2:4])[0]]


def _endpoint(ip: bytes, port: int) -> str:
    a = ipaddress.ip_address(bytes(ip))
    return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"


def _reference(path, decapsulate=True):
    """(tunnel headers per kind, inner TCP/UDP flows as {(proto, {endpoint, endpoint})}, their packets,
    per packet (outer addresses, inner addresses, inner IP length)). Flows by 5-tuple only: the captures
    here have no reused ports or idle gaps."""
    kinds, flows, packets, seen = Counter(), set(), 0, []
    for _ts, _lt, frame in iter_records(path):
        x = dpkt.ethernet.Ethernet(frame).data
        outer = (x.src, x.dst) if isinstance(x, (dpkt.ip.IP, dpkt.ip6.IP6)) else ()
        for _ in range(8 if decapsulate else 0):
            if not isinstance(x, (dpkt.ip.IP, dpkt.ip6.IP6)):
                break
            proto, y = (x.p if isinstance(x, dpkt.ip.IP) else x.nxt), x.data
            if proto in (4, 41) and isinstance(y, (dpkt.ip.IP, dpkt.ip6.IP6)):
                kinds["ipv4_in_ip" if proto == 4 else "ipv6_in_ip"] += 1
                x = y
            elif isinstance(y, dpkt.gre.GRE) and y.p == 0x88BE:  # ERSPAN II: 8-byte header, then Ethernet
                kinds["erspan"] += 1
                x = dpkt.ethernet.Ethernet(y.data[8:]).data
            elif isinstance(y, dpkt.gre.GRE):  # dpkt decodes what GRE carries: IP, Ethernet or PPP
                kinds["gre"] += 1
                g = y.data.data if isinstance(y.data, dpkt.ppp.PPP) else y.data
                x = g.data if isinstance(g, dpkt.ethernet.Ethernet) else g
            elif isinstance(y, dpkt.udp.UDP) and 4789 in (y.sport, y.dport):
                kinds["vxlan"] += 1
                x = dpkt.ethernet.Ethernet(y.data[8:]).data
            elif isinstance(y, dpkt.udp.UDP) and 2152 in (y.sport, y.dport) and _gtp_inner(bytes(y.data)):
                kinds["gtpu"] += 1
                b = _gtp_inner(bytes(y.data))
                x = dpkt.ip.IP(b) if b[0] >> 4 == 4 else dpkt.ip6.IP6(b)
            else:
                break
        if not isinstance(x, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(x.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
            continue
        if isinstance(x, dpkt.ip.IP) and (x.mf or x.offset):
            continue
        l4 = x.data
        flows.add(("tcp" if isinstance(l4, dpkt.tcp.TCP) else "udp",
                   frozenset((_endpoint(x.src, l4.sport), _endpoint(x.dst, l4.dport)))))
        packets += 1
        ip_len = x.len if isinstance(x, dpkt.ip.IP) else 40 + x.plen
        seen.append((outer, (x.src, x.dst), ip_len))
    return kinds, flows, packets, seen


def _flows_of(res) -> set:
    """The flows ``process_file`` built, in _reference's form (from the five_tuple column)."""
    out = set()
    for five in res["columns"]["five_tuple"]:
        proto, pair = five.split(" ")
        out.add((proto, frozenset(pair.split("-"))))
    return out


def _process(path, tunnels="decap", **kw):
    cfg = PrepareConfig(tokenize=False, label_mode="file", root_label={str(path): "x"}, tunnels=tunnels, **kw)
    res = process_file(str(path), cfg)
    assert res["error"] is None
    assert res["packets_total"] == res["packets_used"] + sum(res["packets_skipped"].values())
    return res


@needs_shared
@pytest.mark.parametrize("path,kinds,n_flows,n_packets", CASES, ids=IDS)
def test_inner_flows_counted(path, kinds, n_flows, n_packets):
    ref_kinds, ref_flows, ref_packets, _ = _reference(path)
    assert (dict(ref_kinds), len(ref_flows), ref_packets) == (kinds, n_flows, n_packets)  # the reference reads as stated
    res = _process(path)
    assert dict(res["tunnels_decapsulated"]) == kinds
    assert _flows_of(res) == ref_flows and res["flows"] == n_flows
    assert sum(res["columns"]["packet_count"]) == n_packets  # every inner TCP/UDP packet is in its flow
    assert res["packets_skipped"].get("tunnel_malformed", 0) == 0


@needs_shared
@pytest.mark.parametrize("path,kinds,n_flows,n_packets", CASES, ids=IDS)
def test_outer_keeps_the_old_view(path, kinds, n_flows, n_packets):
    """--tunnels outer: the outer packets only, as before tunnels were decapsulated: GRE / IP-in-IP are
    not TCP/UDP (counted by protocol), VXLAN and GTP-U the UDP flows between the tunnel endpoints."""
    _k, outer_flows, outer_packets, _ = _reference(path, decapsulate=False)
    res = _process(path, "outer")
    assert dict(res["tunnels_decapsulated"]) == {}
    assert _flows_of(res) == outer_flows and sum(res["columns"]["packet_count"]) == outer_packets
    if any(k in kinds for k in ("gre", "erspan", "ipv4_in_ip", "ipv6_in_ip")):  # the outermost tunnel is an IP protocol
        assert outer_flows == set() and res["flows"] == 0
        outer_protocols = set(res["ip_protocols_skipped"])
        assert outer_protocols and outer_protocols <= {"gre", "ipip", "ipv6"}
    else:
        ports = {"vxlan": ":4789", "gtpu": ":2152"}[next(iter(kinds))]
        assert outer_flows and all(ports in five for five in res["columns"]["five_tuple"])


def test_no_tunnel_reads_the_same_either_way():
    """Captures without tunnels: decap and outer give identical rows and accounting."""
    for name in ("dns.pcap", "http.pcap"):
        a, b = _process(DEMO / name), _process(DEMO / name, "outer")
        assert a["columns"] == b["columns"] and a["packets_skipped"] == b["packets_skipped"] and a["flows"] > 0
        assert a["tunnels_decapsulated"] == b["tunnels_decapsulated"] == Counter()


@needs_shared
@pytest.mark.parametrize("path", [ZEEK / "gre-sample.pcap", SV / "vxlan-decoder-03" / "vxlan.pcap",
                                  ZEEK / "6in4.pcap", ZEEK / "gtp" / "gtp6_gtp_0x32.pcap"],
                         ids=["gre", "vxlan", "6in4", "gtpu"])
def test_the_model_sees_the_anonymised_inner_packet(path):
    """The stored packet is the inner one from its IP header on (the outer headers are dropped), with the
    inner addresses and ports masked; without anonymisation the same rows hold the inner addresses."""
    _k, _f, _n, seen = _reference(path)
    inner_lengths = Counter(ip_len for _o, _i, ip_len in seen)
    addresses = {a for outer, inner, _l in seen for a in (*outer, *inner)}
    res = _process(path, store_packets=256, max_packets=256, normalize_tcp=False)
    stored = [bytes(p) for flow in res["columns"]["packets"] for p in flow]
    assert len(stored) == sum(inner_lengths.values())  # every inner TCP/UDP packet: no normalisation drop here
    assert Counter(n for flow in res["columns"]["ip_lengths"] for n in flow) == inner_lengths
    for p in stored:
        d = parse_ip(p)
        assert isinstance(d, Decoded) and d.proto in (6, 17)
        assert set(d.src) == set(d.dst) == {0} and d.sport == d.dport == 0
        headers = p[: d.l4 + 8]
        assert not any(a in headers for a in addresses)
    raw = _process(path, store_packets=256, max_packets=256, normalize_tcp=False, anonymize=False)
    stored_raw = [parse_ip(bytes(p)) for flow in raw["columns"]["packets"] for p in flow]
    assert Counter((d.src, d.dst) for d in stored_raw) == Counter((bytes(s), bytes(t)) for _o, (s, t), _l in seen)


@needs_shared
def test_prepare_reports_and_records_the_tunnel_mode(tmp_path):
    files = [str(ZEEK / "gre-sample.pcap"), str(ZEEK / "vxlan-encapsulated-http.pcap"), str(ZEEK / "6in4.pcap")]
    r = prepare(files, None, labels="file", split="none", progress=False, save=False)
    assert r["tunnels_decapsulated"] == {"gre": 40, "vxlan": 12, "ipv6_in_ip": 1}
    assert r["options"]["tunnels"] == "decap" and r["flows"] == 5 + 1 + 1
    assert "tunnel headers removed (--tunnels decap): gre 40, vxlan 12, ipv6_in_ip 1" in format_report(r)
    o = prepare(files, None, labels="file", split="none", progress=False, save=False, tunnels="outer")
    assert o["tunnels_decapsulated"] == {} and o["options"]["tunnels"] == "outer"
    assert o["ip_protocols_skipped"] == {"gre": 40, "ipv6": 1} and o["flows"] == 1  # the outer VXLAN flow
    assert "tunnel headers removed" not in format_report(o)
    # one capture split over two processes by (inner) flow: the same flows and counts
    one = prepare([str(SV / "vxlan-decoder-03" / "vxlan.pcap")], None, labels="file", split="none", progress=False, save=False)
    two = prepare([str(SV / "vxlan-decoder-03" / "vxlan.pcap")], None, labels="file", split="none", progress=False,
                  save=False, num_proc=2)
    assert two["files_split"] and one["tunnels_decapsulated"] == two["tunnels_decapsulated"] == {"vxlan": 100}
    rows = lambda rep: sorted(rep["_dataset"]["test"]["five_tuple"])  # noqa: E731
    assert rows(one) == rows(two) and len(rows(one)) == 13
    # the option on the command line, recorded for the model: absent in older datasets, which read tunnels as outer
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert parser.parse_args(["prepare", "x.pcap", "--out", str(tmp_path / "d")]).tunnels == "decap"
    assert parser.parse_args(["prepare", "x.pcap", "--out", str(tmp_path / "d"), "--tunnels", "outer"]).tunnels == "outer"
    assert tunnels_record(r["options"]) == {} and tunnels_record(o["options"]) == {"tunnels": "outer"}
    assert tunnels_record({"ttl": "mask"}) == {"tunnels": "outer"}
    with pytest.raises(ValueError, match="tunnels must be one of decap, outer"):
        prepare(files, None, labels="file", split="none", progress=False, save=False, tunnels="inner")


@needs_shared
@pytest.mark.parametrize("tunnels", ["decap", "outer"])
def test_predict_reads_captures_as_the_training_data(tunnels):
    """The tunnel mode travels report.json -> finetune's traffic_flow_options -> predict's FlowTable, whose
    reader decodes with it: predict's flows are prepare's flows in either mode."""
    from traffic_moe_hf.recipes.predict import Classifier, _read_flows

    classifier = Classifier.__new__(Classifier)  # the checkpoint record only (no weights needed for reading)
    record = {"normalize_tcp": True, "coalesce_tcp": False, "ttl": "mask", "level": "flow", "anonymize": True,
              **tunnels_record({"tunnels": tunnels})}
    classifier.model = SimpleNamespace(config=SimpleNamespace(traffic_flow_options=record))
    path = SV / "vxlan-decoder-03" / "vxlan.pcap"
    table = FlowTable(max_packets=8, max_bytes=128, **classifier.flow_options)
    assert table.tunnels == tunnels
    flows, summary = [], {"packets_total": 0, "packets_used": 0, "packets_skipped": Counter(), "flows_evicted": 0,
                          "max_open_flows": 0}
    _read_flows(open_capture(path), table, 8, summary, lambda f, s: None, lambda f, s: flows.append(f.five_tuple()))
    flows += [f.five_tuple() for f in table.finish()]
    assert sorted(flows) == sorted(_process(path, tunnels)["columns"]["five_tuple"])
    assert len(flows) == (13 if tunnels == "decap" else len(_reference(path, decapsulate=False)[1]))


# ---- crafted tunnel packets: the corner cases, and damage that must never crash ----

INNER = tcp_packet(src=b"\x0a\x01\x01\x01", dst=b"\x0a\x01\x01\x02", sport=40000, dport=443)


def _ipv4(proto: int, payload: bytes) -> bytes:
    return bytes(dpkt.ip.IP(src=b"\xc0\x00\x02\x01", dst=b"\xc0\x00\x02\x02", p=proto, data=payload, len=20 + len(payload)))


def _gre(inner: bytes, flags=0, proto=0x0800, extra=b"") -> bytes:
    return _ipv4(47, struct.pack(">HH", flags, proto) + extra + inner)


def _udp(dport: int, payload: bytes, sport=50000) -> bytes:
    return udp_packet(src=b"\xc0\x00\x02\x01", dst=b"\xc0\x00\x02\x02", sport=sport, dport=dport, payload=payload)


def _gtp(inner: bytes, msg=0xFF, flags=0x30, opt=b"") -> bytes:
    return _udp(2152, struct.pack(">BBHI", flags, msg, len(opt) + len(inner), 7) + opt + inner, sport=2152)


def _vxlan(inner_ip: bytes) -> bytes:
    return _udp(4789, b"\x08\x00\x00\x00\x00\x00\x7b\x00" + ether(inner_ip))


def test_crafted_tunnels():
    def inner_of(packet):
        counts = Counter()
        d = decode(101, packet, counts=counts)
        return d, dict(counts)

    d, counts = inner_of(_gre(INNER, flags=0x3000, extra=b"KEY!" + b"\x00\x00\x00\x05"))  # key + sequence number
    assert isinstance(d, Decoded) and (d.sport, d.dport) == (40000, 443) and d.ip == INNER and counts == {"gre": 1}
    assert inner_of(_gre(INNER, flags=0x0002))[0] == "tunnel_malformed"  # GRE version 2
    assert inner_of(_gre(b"", flags=0x2000)) == ("tunnel_malformed", {"gre": 1})  # key flag, no key
    assert inner_of(_gre(INNER, proto=0x8200)) == ("tunnel_unsupported", {"gre": 1})  # Aruba's 802.11 in GRE
    assert inner_of(_gre(INNER, proto=0x86DD))[0] == "tunnel_malformed"  # IPv4 labelled IPv6
    assert inner_of(_gtp(INNER, flags=0x32, opt=b"\x00\x01\x00\x00"))[0].ip == INNER  # sequence number present
    ext = b"\x00\x01\x00\x85" + b"\x01\x00\x01\x00"  # next type 0x85 (PDU session container), 4 bytes, then none
    assert inner_of(_gtp(INNER, flags=0x34, opt=ext))[0].ip == INNER
    assert inner_of(_gtp(INNER, flags=0x34, opt=b"\x00\x01\x00\x85\x00\x00\x00\x00"))[0] == "tunnel_malformed"  # length 0
    echo = inner_of(_gtp(b"", msg=1))  # a GTP-U echo request carries no user packet: plain UDP of the endpoints
    assert isinstance(echo[0], Decoded) and echo[0].dport == 2152 and echo[1] == {}
    dns = inner_of(_udp(53, b"\x12\x34" + b"\x00" * 10, sport=2152))  # a DNS client that drew port 2152
    assert isinstance(dns[0], Decoded) and dns[0].dport == 53 and dns[1] == {}
    assert inner_of(_udp(4789, b"\x00" * 8 + ether(INNER)))[1] == {}  # VXLAN without the I flag: not VXLAN
    nested = INNER
    for _ in range(MAX_TUNNEL_DEPTH):
        nested = _vxlan(nested)
    assert inner_of(nested) == (parse_ip(INNER), {"vxlan": MAX_TUNNEL_DEPTH})
    assert inner_of(_vxlan(nested)) == ("tunnel_too_deep", {"vxlan": MAX_TUNNEL_DEPTH})
    assert decode(101, _vxlan(INNER), "outer").dport == 4789


SEEDS = [_gre(INNER, flags=0x3000, extra=b"KEY!\x00\x00\x00\x05"), _gre(ether(INNER), proto=0x6558),
         _gre(b"\x10\x00\x00\x01" + b"\x00" * 4 + ether(INNER), flags=0x1000, proto=0x88BE, extra=b"\x00\x00\x00\x01"),
         _gre(b"\xff\x03\x00\x21" + INNER, flags=0x3001, proto=0x880B, extra=b"\x00\x10\x00\x01\x00\x00\x00\x02"),
         _ipv4(4, INNER), _ipv4(41, bytes(dpkt.ip6.IP6(src=b"\x20" * 16, dst=b"\x21" * 16, nxt=17, hlim=64,
                                                          data=_udp(53, b"x")[20:], plen=9))),
         _vxlan(INNER), _udp(6081, b"\x01\x00\x65\x58\x00\x00\x01\x00" + b"\x00" * 4 + ether(INNER)),
         _gtp(INNER, flags=0x34, opt=b"\x00\x01\x00\x85\x01\x00\x01\x00")]


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(SEEDS),
       muts=st.lists(st.tuples(st.integers(20, 120), st.integers(0, 255), st.sampled_from(["set", "del", "ins"])),
                     min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(20, 140)))
def test_fuzz_damaged_tunnels(tmp_path, seed, muts, cut):
    """Tunnel packets damaged after the outer IP header: a decoded packet or a documented reason, never an
    exception; through process_file the accounting still adds up."""
    b = bytearray(seed)
    for pos, val, op in muts:
        pos = min(pos, len(b) - 1)
        if op == "set":
            b[pos] = val
        elif op == "del" and len(b) > 21:
            del b[pos]
        else:
            b.insert(pos, val)
    frame = bytes(b[:cut] if cut else b)
    for tunnels in ("decap", "outer"):
        d = decode(101, frame, tunnels, Counter())
        assert isinstance(d, Decoded) or d in SKIP_REASONS or (isinstance(d, tuple) and d[0] == "not_tcp_udp")
    path = write_pcap(tmp_path / "t.pcap", [(1.0, ether(frame)), (2.0, ether(seed))])
    _process(path)

"""Reader and header decoding: formats, link types, IPv6 extension headers, damage, cross-check with dpkt."""

import struct

import dpkt
import pytest

from _data_util import DEMO, SHARED, ether, tcp_packet, write_pcap, write_pcapng
from traffic_moe_hf.data.decode import Decoded, decode, parse_ip
from traffic_moe_hf.data.reader import CaptureError, iter_records, open_capture

IP = tcp_packet(payload=b"hello")


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_classic_pcap_variants(tmp_path, order, nano, gz):
    p = write_pcap(tmp_path / "x.pcap", [(1.5, ether(IP)), (2.25, ether(IP))], byteorder=order, nano=nano, gz=gz)
    recs = list(iter_records(p))
    assert [r[0] for r in recs] == [1.5, 2.25]
    assert all(r[1] == 1 and r[2] == ether(IP) for r in recs)
    d = decode(1, recs[0][2])
    assert isinstance(d, Decoded) and (d.sport, d.dport, d.proto) == (40000, 80, 6)


def test_pcapng_interfaces_with_different_link_types(tmp_path):
    sll = struct.pack(">HHH8sH", 0, 1, 6, b"\x00" * 8, 0x0800) + IP
    p = write_pcapng(tmp_path / "m.pcapng", [(1, None), (113, 9), (101, None)],
                     [(0, 1_000_000, ether(IP)), (1, 2_000_000_000, sll), (2, 3_000_000, IP)])
    recs = list(iter_records(p))
    assert [(r[0], r[1]) for r in recs] == [(1.0, 1), (2.0, 113), (3.0, 101)]
    for ts, lt, fr in recs:
        d = decode(lt, fr)
        assert isinstance(d, Decoded) and d.ip == IP


def test_real_multi_interface_pcapng_timestamps():
    """Zeek's multi-interface file: dpkt's pcapng reader applies interface 0's resolution to all."""
    p = SHARED / "public" / "zeek-traces" / "pcapng-multi-interface.pcapng"
    if not p.exists():
        pytest.skip(f"{p} absent (../shared/data not next to the checkout)")
    ts = [r[0] for r in iter_records(p)]
    assert len(ts) == 6 and all(1.7e9 < t < 1.8e9 for t in ts)


V6 = bytes(dpkt.ip6.IP6(src=b"\x20\x01" + b"\x00" * 13 + b"\x01", dst=b"\x20\x01" + b"\x00" * 13 + b"\x02", nxt=6, hlim=64,
                        data=dpkt.tcp.TCP(sport=1234, dport=443, flags=dpkt.tcp.TH_SYN, seq=7)))


@pytest.mark.parametrize("lt,frame", [
    (1, ether(IP, vlans=[(0x8100, 10)])),
    (1, ether(IP, vlans=[(0x88A8, 100), (0x8100, 10)])),
    (113, struct.pack(">HHH8sH", 0, 1, 6, b"\x00" * 8, 0x0800) + IP),
    (276, struct.pack(">HHIHBB8s", 0x0800, 0, 1, 1, 0, 6, b"\x00" * 8) + IP),
    (101, IP), (12, IP), (14, IP), (228, IP),
    (0, struct.pack("<I", 2) + IP), (0, struct.pack(">I", 2) + IP), (108, struct.pack(">I", 2) + IP),
    (9, b"\xff\x03\x00\x21" + IP), (104, b"\x0f\x00\x08\x00" + IP),
])
def test_link_types_ipv4(lt, frame):
    d = decode(lt, frame)
    assert isinstance(d, Decoded), d
    assert d.ip == IP and d.sport == 40000


@pytest.mark.parametrize("lt,frame", [(1, ether(V6, 0x86DD)), (229, V6), (101, V6), (0, struct.pack("<I", 30) + V6)])
def test_link_types_ipv6(lt, frame):
    d = decode(lt, frame)
    assert isinstance(d, Decoded) and d.version == 6 and (d.sport, d.dport) == (1234, 443)


def test_ipv6_extension_headers_and_fragments():
    tcp = bytes(dpkt.tcp.TCP(sport=1, dport=2, flags=dpkt.tcp.TH_SYN))
    hop = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"  # hop-by-hop -> dest opts
    dst = bytes([44, 0]) + b"\x01\x04\x00\x00\x00\x00"  # dest opts -> fragment
    frag0 = bytes([6, 0, 0, 0]) + b"\x12\x34\x56\x78"  # atomic fragment (offset 0, M=0)
    payload = hop + dst + frag0 + tcp
    base = struct.pack(">IHBB16s16s", 0x60000000, len(payload), 0, 64, b"\x01" * 16, b"\x02" * 16)
    d = parse_ip(base + payload)
    assert isinstance(d, Decoded) and (d.sport, d.dport) == (1, 2) and len(d.ext) == 3
    frag1 = bytes([6, 0, 0, 0x09]) + b"\x12\x34\x56\x78"  # offset 1, M=1
    assert parse_ip(base + hop + dst + frag1 + tcp) == "ip_fragment"


@pytest.mark.parametrize("lt,frame,reason", [
    (1, ether(b"\x00" * 28, 0x0806), "non_ip"),
    (1, b"\x00" * 10, "truncated"),
    (1, ether(IP[:30]), "truncated"),
    (101, b"\x45" + IP[1:9] + b"\x01" + IP[10:], ("not_tcp_udp", 1)),
    (101, b"\x41" + IP[1:], "malformed"),
    (105, b"\x00" * 40, "unsupported_link_type"),
])
def test_skip_reasons(lt, frame, reason):
    assert decode(lt, frame) == reason


def test_bad_files(tmp_path):
    (tmp_path / "empty.pcap").write_bytes(b"")
    (tmp_path / "text.pcap").write_bytes(b"hello world, not a capture at all")
    for name in ("empty.pcap", "text.pcap"):
        with pytest.raises(CaptureError):
            open_capture(tmp_path / name)
    with pytest.raises(CaptureError):
        open_capture(tmp_path / "missing.pcap")
    p = write_pcap(tmp_path / "t.pcap", [(1.0, ether(IP)), (2.0, ether(IP))])
    data = p.read_bytes()
    p.write_bytes(data[:-10])  # cut inside the last record
    with open_capture(p) as rs:
        assert len(list(rs)) == 1
    assert "truncated" in rs.warning


def test_decode_agrees_with_dpkt_on_real_capture():
    """Our struct-level fields equal dpkt's full decode on every packet of the demo captures."""
    n = 0
    for path in sorted(DEMO.glob("*.pcap")):
        for ts, lt, frame in iter_records(path):
            eth = dpkt.ethernet.Ethernet(frame)
            ip, l4 = eth.data, eth.data.data
            d = decode(lt, frame)
            assert isinstance(d, Decoded)
            assert (d.src, d.dst, d.sport, d.dport, d.proto) == (ip.src, ip.dst, l4.sport, l4.dport, ip.p)
            if d.proto == 6:
                assert (d.flags, d.seq) == (l4.flags, l4.seq)
            assert d.ip_len == ip.len and d.ip == bytes(ip)[: ip.len]
            n += 1
    assert n > 4000

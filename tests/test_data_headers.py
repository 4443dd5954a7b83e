"""data/headers.py, the one place that reads TCP/IP header lengths, against dpkt's decode of the same packets."""

import struct

import dpkt
import pytest

from _data_util import tcp_packet, udp_packet
from traffic_moe_hf.data.headers import (
    IPV4_HEADER_LENGTH,
    TCP_HEADER_LENGTH,
    ipv4_header_length,
    ipv6_extension_length,
    payload_start,
    tcp_header_length,
)


def test_tables_are_the_nibble_arithmetic():
    assert IPV4_HEADER_LENGTH == tuple((b & 0x0F) * 4 for b in range(256))
    assert TCP_HEADER_LENGTH == tuple((b >> 4) * 4 for b in range(256))


@pytest.mark.parametrize("options", [b"", b"\x02\x04\x05\xb4", b"\x01\x01\x08\x0a" + bytes(8), b"\x01" * 40])
def test_tcp_lengths_match_dpkt(options):
    ip = tcp_packet(opts=options, payload=b"GET / HTTP/1.1\r\n")
    parsed = dpkt.ip.IP(ip)
    assert ipv4_header_length(ip) == parsed.hl * 4 == 20
    assert tcp_header_length(ip, 20) == parsed.data.off * 4 == 20 + len(options)
    assert ip[payload_start(ip, 20, 6):] == parsed.data.data == b"GET / HTTP/1.1\r\n"


def test_ipv4_options_and_udp():
    ip = udp_packet(payload=b"query")
    assert payload_start(ip, ipv4_header_length(ip), 17) == 28 and ip[28:] == b"query"
    with_options = bytes([0x46]) + ip[1:20] + b"\x01\x01\x01\x00" + ip[20:]  # IHL 6: one word of options
    assert ipv4_header_length(with_options) == 24 == dpkt.ip.IP(with_options).hl * 4


def test_ipv6_extension_lengths():
    hop_by_hop = struct.pack("BB", 6, 1) + bytes(14)  # 2 units of 8 bytes
    assert ipv6_extension_length(hop_by_hop, 0, 0) == 16
    ah = struct.pack("BB", 6, 4) + bytes(22)  # (4 + 2) units of 4 bytes
    assert ipv6_extension_length(ah, 0, 51) == 24
    assert ipv6_extension_length(b"", 0, 44) == 8  # a fragment header: always 8 bytes

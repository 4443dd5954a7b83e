"""TCP/IP header lengths, in one place: where an IP packet's transport header and its payload start.

Three lengths are read from a header field rather than fixed:

* the **IPv4 header length** — the low nibble of the first byte (IHL, RFC 791) counts 32-bit words, so
  ``(ip[0] & 0x0F) * 4`` bytes (20 without options, at most 60);
* the **TCP header length** — the high nibble of byte 12 of the TCP header (the data offset, RFC 9293)
  counts 32-bit words, so ``(tcp[12] >> 4) * 4`` bytes (20 without options, at most 60);
* an **IPv6 extension header's length** — its second byte, in 8-byte units not counting the first 8
  (RFC 8200), except the fragment header (always 8 bytes) and AH (RFC 4302: in 4-byte units, minus 2).

A UDP header is always 8 bytes. Nothing here checks a value (an IHL or data offset below 5 is
``malformed`` to :func:`traffic_moe_hf.data.decode.parse_ip`); a header cut short raises ``IndexError``, as
indexing the packet would. The two byte-indexed tables are for the per-packet hot paths (``decode.parse_ip``,
the sharded reader in ``samples``): a lookup costs what the arithmetic costs, a function call about twice that.

The tokenizer (``tokenization_traffic_moe.compact_ranges``) reads the same two nibbles itself: it is remote
code, shipped alone beside a checkpoint, and imports no project module.
"""

from __future__ import annotations

__all__ = ["IPV4_HEADER_LENGTH", "TCP_HEADER_LENGTH", "UDP_HEADER_LENGTH", "ipv4_header_length",
           "tcp_header_length", "payload_start", "ipv6_extension_length"]

#: first byte of an IPv4 header (version, IHL) -> the header's length in bytes
IPV4_HEADER_LENGTH = tuple((b & 0x0F) * 4 for b in range(256))
#: byte 12 of a TCP header (data offset, reserved bits) -> the header's length in bytes
TCP_HEADER_LENGTH = tuple((b >> 4) * 4 for b in range(256))
UDP_HEADER_LENGTH = 8


def ipv4_header_length(ip) -> int:
    """Bytes of the IPv4 header (options included) at the start of ``ip``."""
    return IPV4_HEADER_LENGTH[ip[0]]


def tcp_header_length(packet, l4: int) -> int:
    """Bytes of the TCP header (options included) that starts at offset ``l4`` of ``packet``."""
    return TCP_HEADER_LENGTH[packet[l4 + 12]]


def payload_start(packet, l4: int, proto: int) -> int:
    """Offset in ``packet`` of the transport payload, whose TCP (``proto`` 6) or UDP header starts at ``l4``."""
    return l4 + (TCP_HEADER_LENGTH[packet[l4 + 12]] if proto == 6 else UDP_HEADER_LENGTH)


def ipv6_extension_length(packet, at: int, next_header: int) -> int:
    """Bytes of the IPv6 extension header of type ``next_header`` that starts at offset ``at`` of ``packet``:
    8 for a fragment header (44), ``(length + 2) * 4`` for AH (51), ``(length + 1) * 8`` for the others."""
    if next_header == 44:
        return 8
    if next_header == 51:
        return (packet[at + 1] + 2) * 4
    return (packet[at + 1] + 1) * 8

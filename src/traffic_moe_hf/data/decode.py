"""Header decoding for the hot path: link layer -> IP -> TCP/UDP, only as deep as the flow key needs.

Why not ``dpkt.ethernet.Ethernet(frame)``: dpkt builds a Python object per layer and decodes every
field (and for IP the whole payload chain) — that *is* the cost of the "bare dpkt loop" baseline
(see ``benchmarks/bench_prepare.py``).  A flow table needs ~10 fields at fixed offsets, so we read
them with byte indexing / ``struct`` on the frame itself.  dpkt remains the reference for the
formats; the tests cross-check our fields against dpkt's decode on real captures.

``decode(linktype, frame)`` returns either a :class:`Decoded` tuple or a *skip reason* string:

* ``unsupported_link_type`` – no decoder for the capture's link type (802.11, USB, ...).
* ``non_ip`` – link layer fine but no IP inside (ARP, STP, LLC, LLDP, ...).
* ``truncated`` – the capture holds too few bytes for the headers needed (snaplen, damage).
* ``malformed`` – header values that cannot be right (IP version mismatch, IHL < 5, TCP offset < 5).
* ``ip_fragment`` – a non-first or more-fragments IP fragment (no reassembly: ports are unknown
  for non-first fragments).
* ``not_tcp_udp`` – IP packets of another protocol (ICMP, ICMPv6, GRE, ESP, OSPF, ...).  They are
  counted, per protocol, in the report (``ip_protocols_skipped``) but do not form flows.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["Decoded", "decode", "ip_offset", "parse_ip", "SKIP_REASONS", "IPPROTO_NAMES"]

SKIP_REASONS = ("unsupported_link_type", "non_ip", "truncated", "malformed", "ip_fragment", "not_tcp_udp")

IPPROTO_NAMES = {
    0: "hopopt", 1: "icmp", 2: "igmp", 4: "ipip", 6: "tcp", 17: "udp", 41: "ipv6", 43: "ipv6_route",
    44: "ipv6_frag", 47: "gre", 50: "esp", 51: "ah", 58: "icmpv6", 59: "ipv6_nonxt", 60: "ipv6_opts",
    89: "ospf", 103: "pim", 112: "vrrp", 115: "l2tp", 132: "sctp",
}

_ETH_IP = {0x0800: 4, 0x86DD: 6}
_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
_PPP_IP = {0x0021: 4, 0x0057: 6}
_V6_EXT = (0, 43, 60, 135, 139, 140)  # hop-by-hop, routing, dest opts, mobility, HIP, shim6


class Decoded(NamedTuple):
    """Header fields of one TCP/UDP packet. ``ip`` is the frame slice starting at the IP header and
    ending at the IP total length (padding/FCS removed; shorter if the capture was cut)."""

    ip: bytes
    version: int
    proto: int  # 6 or 17
    src: bytes
    dst: bytes
    sport: int
    dport: int
    l4: int  # offset of the TCP/UDP header in ``ip``
    ip_len: int  # IP total length as on the wire (header + payload)
    flags: int  # TCP flags (0 for UDP)
    seq: int  # TCP sequence number (0 for UDP)
    ext: tuple  # IPv6 extension headers as (offset, end, type); () for IPv4


def ip_offset(linktype: int, f: bytes):
    """Offset of the IP header in frame ``f`` as ``(offset, version_hint)`` or a skip reason."""
    n = len(f)
    if linktype == 1:  # Ethernet (+ 802.1Q / QinQ, PPPoE session, MPLS)
        if n < 14:
            return "truncated"
        et = (f[12] << 8) | f[13]
        off = 14
        while et in _VLAN:
            if n < off + 4:
                return "truncated"
            et = (f[off + 2] << 8) | f[off + 3]
            off += 4
        v = _ETH_IP.get(et)
        if v:
            return off, v
        if et == 0x8864:  # PPPoE session: 6-byte header, then the 2-byte PPP protocol
            if n < off + 8:
                return "truncated"
            v = _PPP_IP.get((f[off + 6] << 8) | f[off + 7])
            return (off + 8, v) if v else "non_ip"
        if et == 0x8847 or et == 0x8848:  # MPLS label stack, IP guessed from the version nibble
            while True:
                if n < off + 4:
                    return "truncated"
                bos = f[off + 2] & 1
                off += 4
                if bos:
                    break
            if n <= off:
                return "truncated"
            v = f[off] >> 4
            return (off, v) if v in (4, 6) else "non_ip"
        return "non_ip"
    if linktype in (101, 12, 14):  # raw IP (LINKTYPE_RAW and the two historic DLT_RAW values)
        if n < 1:
            return "truncated"
        v = f[0] >> 4
        return (0, v) if v in (4, 6) else "malformed"
    if linktype == 228:
        return 0, 4
    if linktype == 229:
        return 0, 6
    if linktype == 113:  # Linux cooked v1: 16-byte header, protocol at 14
        if n < 16:
            return "truncated"
        v = _ETH_IP.get((f[14] << 8) | f[15])
        return (16, v) if v else "non_ip"
    if linktype == 276:  # Linux cooked v2: 20-byte header, protocol at 0
        if n < 20:
            return "truncated"
        v = _ETH_IP.get((f[0] << 8) | f[1])
        return (20, v) if v else "non_ip"
    if linktype == 0 or linktype == 108:  # BSD NULL (host byte order) / LOOP (network order)
        if n < 4:
            return "truncated"
        fam = f[3] if (linktype == 108 or (f[0] == 0 and f[1] == 0)) else f[0]
        if fam == 2:
            return 4, 4
        if fam in (24, 28, 30, 10):
            return 4, 6
        return "non_ip"
    if linktype == 9 or linktype == 50:  # PPP, PPP in HDLC framing
        off = 2 if (n >= 2 and f[0] == 0xFF and f[1] == 0x03) else 0
        if n < off + 2:
            return "truncated"
        v = _PPP_IP.get((f[off] << 8) | f[off + 1])
        return (off + 2, v) if v else "non_ip"
    if linktype == 104:  # Cisco HDLC: address, control, 2-byte ethertype
        if n < 4:
            return "truncated"
        v = _ETH_IP.get((f[2] << 8) | f[3])
        return (4, v) if v else "non_ip"
    if linktype == 51:  # PPPoE without Ethernet
        if n < 8:
            return "truncated"
        v = _PPP_IP.get((f[6] << 8) | f[7])
        return (8, v) if v else "non_ip"
    return "unsupported_link_type"


def decode(linktype: int, frame: bytes):
    """Decode one frame to :class:`Decoded`, or return a skip reason (see module docstring).
    For ``not_tcp_udp`` the reason is returned as ``("not_tcp_udp", proto)``."""
    r = ip_offset(linktype, frame)
    if type(r) is str:
        return r
    off, _hint = r
    return parse_ip(frame[off:] if off else frame)


def parse_ip(ip: bytes):
    """Decode a packet that starts at the IP header (what the dataset's ``packets`` column stores)."""
    n = len(ip)
    if n < 1:
        return "truncated"
    v = ip[0] >> 4
    if v == 4:
        if n < 20:
            return "truncated"
        ihl = (ip[0] & 15) * 4
        if ihl < 20:
            return "malformed"
        tot = (ip[2] << 8) | ip[3]
        if tot == 0:  # TSO / segmentation offload: length left to the NIC
            tot = n
        elif tot < ihl:
            return "malformed"
        if ((ip[6] & 0x3F) << 8) | ip[7] or ip[6] & 0x20:
            return "ip_fragment"
        proto = ip[9]
        if tot < n:
            ip = ip[:tot]
            n = tot
        l4 = ihl
        src, dst = ip[12:16], ip[16:20]
        ext = ()
    elif v == 6:
        if n < 40:
            return "truncated"
        tot = 40 + ((ip[4] << 8) | ip[5])
        if tot == 40 and n > 40:  # jumbogram / offload: payload length 0
            tot = n
        if tot < n:
            ip = ip[:tot]
            n = tot
        proto = ip[6]
        l4 = 40
        ext = []
        hops = 0
        while proto in _V6_EXT or proto == 44 or proto == 51:
            hops += 1
            if n < l4 + 8 or hops > 16:
                return "truncated" if n < l4 + 8 else "malformed"
            if proto == 44:  # fragment header
                if ((ip[l4 + 2] << 8) | ip[l4 + 3]) & 0xFFF9:  # offset != 0 or more-fragments
                    return "ip_fragment"
                end = l4 + 8
            elif proto == 51:  # AH: length in 4-byte units minus 2
                end = l4 + (ip[l4 + 1] + 2) * 4
            else:
                end = l4 + (ip[l4 + 1] + 1) * 8
            ext.append((l4, end, proto))
            proto = ip[l4]
            l4 = end
        ext = tuple(ext)
        src, dst = ip[8:24], ip[24:40]
    else:
        return "malformed"
    if proto == 6:
        if n < l4 + 20:
            return "truncated"
        if (ip[l4 + 12] >> 4) < 5:
            return "malformed"
        sport, dport, seq = struct.unpack_from(">HHI", ip, l4)
        return Decoded(ip, v, 6, src, dst, sport, dport, l4, tot, ip[l4 + 13], seq, ext)
    if proto == 17:
        if n < l4 + 8:
            return "truncated"
        sport, dport = struct.unpack_from(">HH", ip, l4)
        return Decoded(ip, v, 17, src, dst, sport, dport, l4, tot, 0, 0, ext)
    return ("not_tcp_udp", proto)

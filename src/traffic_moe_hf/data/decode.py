"""Header decoding for the hot path: link layer -> IP -> TCP/UDP, only as deep as the flow key needs.

Why not ``dpkt.ethernet.Ethernet(frame)``: dpkt builds a Python object per layer and decodes every
field (and for IP the whole payload chain) — that *is* the cost of the "bare dpkt loop" baseline
(see ``benchmarks/ingestion/bench_prepare.py``).  A flow table needs ~10 fields at fixed offsets, so we read
them with byte indexing / ``struct`` on the frame itself.  dpkt remains the reference for the
formats; the tests cross-check our fields against dpkt's decode on real captures.

``decode(linktype, frame)`` returns either a :class:`Decoded` tuple or a *skip reason* string:

* ``unsupported_link_type`` – no decoder for the capture's link type (802.11, USB, ...).
* ``non_ip`` – link layer fine but no IP inside (ARP, STP, LLC, LLDP, ...).
* ``truncated`` – the capture holds too few bytes for the headers needed (snaplen, damage).
* ``malformed`` – header values that cannot be right (IP version mismatch, IHL < 5, TCP offset < 5).
* ``ip_fragment`` – a non-first or more-fragments IP fragment (no reassembly: ports are unknown
  for non-first fragments).
* ``not_tcp_udp`` – IP packets of another protocol (ICMP, ICMPv6, ESP, OSPF, ...).  They are
  counted, per protocol, in the report (``ip_protocols_skipped``) but do not form flows.
* ``tunnel_malformed`` – a tunnel header whose values cannot be right (GRE version > 1, an ERSPAN or
  IP-in-IP payload of the wrong version, a GTP-U extension header of length 0, ...).
* ``tunnel_unsupported`` – a well-formed tunnel whose payload type is not decoded (GRE carrying
  Aruba 802.11 frames, MPLS, WCCP; a Geneve protocol other than Ethernet/IPv4/IPv6).
* ``tunnel_too_deep`` – more than ``MAX_TUNNEL_DEPTH`` tunnels nested in one packet.

**Tunnels** (``tunnels="decap"``, the default of ``decode`` and of ``traffic-moe prepare --tunnels``):
the flow is what the tunnel carries, so the outer headers are removed and the packet decoded is the
inner one — its addresses and ports form the flow key, and from its IP header on it is stored and
anonymised; the outer headers (tunnel endpoints, keys, VNIs, TEIDs) are dropped, never stored.
Decapsulated, nested up to ``MAX_TUNNEL_DEPTH`` levels:

* ``gre`` – GRE (IP protocol 47, RFC 2784/2890: checksum, key, sequence number; version 1 = PPTP's
  enhanced GRE) carrying IPv4, IPv6, Ethernet (transparent Ethernet bridging, 0x6558) or PPP
  (0x880B, PPTP) with IPv4/IPv6 inside;
* ``erspan`` – GRE carrying ERSPAN type I / II (0x88BE) or III (0x22EB) mirrored Ethernet frames;
* ``ipv4_in_ip`` / ``ipv6_in_ip`` – IP protocol 4 (IPv4 inside) / 41 (IPv6 inside), in IPv4 or IPv6;
* ``vxlan`` – UDP port 4789, inner Ethernet (the I flag must be set; otherwise plain UDP);
* ``geneve`` – UDP port 6081, inner Ethernet/IPv4/IPv6 after the variable-length options;
* ``gtpu`` – GTPv1-U on UDP port 2152, G-PDU messages (type 0xFF, optional sequence number / N-PDU /
  extension headers) carrying IPv4/IPv6. Other GTP-U messages (echo, error indication, end marker)
  carry no user packet: they stay what they are on the wire, UDP packets of the tunnel endpoints.

A UDP packet on a tunnel port whose header is not that tunnel's (a DNS client that drew source port
2152) stays a plain UDP packet. The inner packet's skip reasons are the ones above (an ARP frame in a
VXLAN tunnel is ``non_ip``, an ICMP echo in GRE is ``not_tcp_udp`` icmp). ``decode(..., counts=C)``
adds one to ``C[kind]`` for every tunnel header removed. ``tunnels="outer"`` reads the outer packet
only, as before tunnels were decapsulated: GRE / IP-in-IP are ``not_tcp_udp``, VXLAN / Geneve / GTP-U
the UDP flow between the tunnel endpoints.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .headers import IPV4_HEADER_LENGTH, TCP_HEADER_LENGTH, ipv4_header_length, ipv6_extension_length

__all__ = ["Decoded", "decode", "ip_offset", "parse_ip", "decapsulate", "is_tunnel", "SKIP_REASONS", "IPPROTO_NAMES",
           "TUNNEL_MODES", "TUNNEL_KINDS", "MAX_TUNNEL_DEPTH", "UDP_TUNNEL_PORTS"]

SKIP_REASONS = ("unsupported_link_type", "non_ip", "truncated", "malformed", "ip_fragment", "not_tcp_udp",
                "tunnel_malformed", "tunnel_unsupported", "tunnel_too_deep")

TUNNEL_MODES = ("decap", "outer")
TUNNEL_KINDS = ("gre", "erspan", "ipv4_in_ip", "ipv6_in_ip", "vxlan", "geneve", "gtpu")
MAX_TUNNEL_DEPTH = 4
#: IP protocols that are tunnels (IPv4 inside, IPv6 inside, GRE) and UDP ports that are
IP_TUNNEL_PROTOS = frozenset((4, 41, 47))
UDP_TUNNEL_PORTS = {4789: "vxlan", 6081: "geneve", 2152: "gtpu"}

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


def decode(linktype: int, frame: bytes, tunnels: str = "decap", counts=None):
    """Decode one frame to :class:`Decoded`, or return a skip reason (see module docstring).
    For ``not_tcp_udp`` the reason is returned as ``("not_tcp_udp", proto)``. ``tunnels``: ``"decap"``
    (default) decodes the innermost packet of a tunnel, ``"outer"`` the outer one; ``counts`` (a
    ``Counter``) counts the tunnel headers removed, by kind."""
    r = ip_offset(linktype, frame)
    if type(r) is str:
        return r
    off = r[0]
    ip = frame[off:] if off else frame
    d = parse_ip(ip)
    if tunnels == "decap" and is_tunnel(d):
        return decapsulate(ip, d, counts)
    return d


def is_tunnel(d) -> bool:
    """Whether :func:`parse_ip`'s result ``d`` may be a tunnel: IP protocol 4 / 41 / 47, or UDP from or to a
    tunnel port (:func:`decapsulate` checks the tunnel header). Cheap: called for every packet."""
    if type(d) is Decoded:
        return d.proto == 17 and (d.dport in UDP_TUNNEL_PORTS or d.sport in UDP_TUNNEL_PORTS)
    return type(d) is tuple and d[1] in IP_TUNNEL_PROTOS


def decapsulate(ip: bytes, d, counts=None):
    """The innermost packet of tunnel packet ``ip`` (``d = parse_ip(ip)``, for which :func:`is_tunnel` is
    true), decoded as :func:`parse_ip` does, or a skip reason. A UDP packet on a tunnel port that does not
    hold that tunnel's header is returned as ``d`` (plain UDP). Never raises for bad bytes."""
    for _ in range(MAX_TUNNEL_DEPTH):
        kind, inner = _unwrap(ip, d)
        if kind is None:  # not a tunnel after all
            return d
        if counts is not None:
            counts[kind] += 1
        if type(inner) is str:
            return inner
        ip = inner
        d = parse_ip(ip)
        if not is_tunnel(d):
            return d
    kind, _inner = _unwrap(ip, d)
    return d if kind is None else "tunnel_too_deep"


def _ip_payload(ip: bytes):
    """``(protocol, payload, cut)`` of an IP packet that :func:`parse_ip` returned as ``not_tcp_udp`` (so its
    header is known to be sound), the payload cut at the IP length; ``cut``: the capture holds less than
    the IP length (snap length). The cold path of tunnels only."""
    if ip[0] >> 4 == 4:
        tot = ((ip[2] << 8) | ip[3]) or len(ip)
        return ip[9], ip[ipv4_header_length(ip) : tot], tot > len(ip)
    tot = 40 + ((ip[4] << 8) | ip[5])
    if tot == 40:
        tot = len(ip)
    proto, off = ip[6], 40
    while proto in _V6_EXT or proto == 44 or proto == 51:  # as parse_ip walked them (and found them sound)
        # (a fragment header here is an atomic one: parse_ip returned "ip_fragment" for real fragments)
        proto, off = ip[off], off + ipv6_extension_length(ip, off, proto)
    return proto, ip[off:tot], tot > len(ip)


def _inner_ip(payload: bytes, version: int | None, cut: bool = True):
    """The payload as an IP packet of ``version`` (4, 6, or None: either), or a skip reason."""
    if not payload:
        return "truncated" if cut else "tunnel_malformed"
    v = payload[0] >> 4
    if version is None:
        return payload if v in (4, 6) else "non_ip"
    return payload if v == version else "tunnel_malformed"


def _inner_ethernet(frame: bytes):
    """The IP packet in an Ethernet frame carried by a tunnel (VLAN tags, MPLS, PPPoE as on the wire), or a
    skip reason."""
    r = ip_offset(1, frame)
    return r if type(r) is str else frame[r[0]:]


def _unwrap(ip: bytes, d):
    """One tunnel layer: ``(kind, inner IP packet or skip reason)``, or ``(None, None)`` when ``ip`` is not
    a tunnel packet after all."""
    if type(d) is tuple:  # IP protocol 4 / 41 / 47
        proto, payload, cut = _ip_payload(ip)
        if proto == 4:
            return "ipv4_in_ip", _inner_ip(payload, 4, cut)
        if proto == 41:
            return "ipv6_in_ip", _inner_ip(payload, 6, cut)
        return _gre(payload, cut)
    payload = d.ip[d.l4 + 8 :]
    cut = d.ip_len > len(d.ip)  # the capture holds less than the packet had (snap length)
    if d.dport == 4789 or d.sport == 4789:
        # VXLAN (RFC 7348): flags (I = 0x08), 3 reserved, 24-bit VNI, 1 reserved. Hand-written: dpkt 1.9 has no VXLAN
        if len(payload) < 8:
            return ("vxlan", "truncated") if cut else (None, None)
        if not payload[0] & 0x08:
            return None, None
        return "vxlan", _inner_ethernet(payload[8:])
    if d.dport == 6081 or d.sport == 6081:
        # Geneve (RFC 8926): version (2 bits) + options length in 4-byte words, flags, protocol type, VNI,
        # reserved, then the options. Hand-written: dpkt 1.9 has no Geneve
        if len(payload) < 8:
            return ("geneve", "truncated") if cut else (None, None)
        if payload[0] >> 6:
            return None, None
        start = 8 + (payload[0] & 0x3F) * 4
        if len(payload) < start:
            return "geneve", "truncated" if cut else "tunnel_malformed"
        ptype = (payload[2] << 8) | payload[3]
        if ptype == 0x6558:
            return "geneve", _inner_ethernet(payload[start:])
        if ptype in (0x0800, 0x86DD):
            return "geneve", _inner_ip(payload[start:], 4 if ptype == 0x0800 else 6, cut)
        return "geneve", "non_ip" if ptype == 0x0806 else "tunnel_unsupported"
    return _gtpu(payload, cut)


def _gtpu(payload: bytes, cut: bool):
    """GTPv1-U (3GPP TS 29.281). Hand-written: dpkt 1.9 has no GTP. Only G-PDUs (message type 0xFF)
    carry a user packet; other messages, and UDP port 2152 traffic that is not GTPv1-U, stay plain UDP."""
    if len(payload) < 8:
        return ("gtpu", "truncated") if cut else (None, None)
    flags = payload[0]
    if flags >> 5 != 1 or not flags & 0x10 or payload[1] != 0xFF:  # version 1, protocol type GTP, G-PDU
        return None, None
    length = (payload[2] << 8) | payload[3]  # bytes after the 8-byte mandatory header
    if 8 + length > len(payload) and not cut:
        return "gtpu", "tunnel_malformed"
    off = 8
    if flags & 0x07:  # E, S or PN: sequence number (2), N-PDU number (1), next extension header type (1)
        if len(payload) < 12:
            return "gtpu", "truncated" if cut else "tunnel_malformed"
        nxt = payload[11] if flags & 0x04 else 0
        off = 12
        while nxt:  # extension headers: length in 4-byte words, contents, the next type in the last byte
            if len(payload) <= off:
                return "gtpu", "truncated" if cut else "tunnel_malformed"
            size = payload[off] * 4
            if not size:
                return "gtpu", "tunnel_malformed"
            if len(payload) < off + size:
                return "gtpu", "truncated" if cut else "tunnel_malformed"
            nxt, off = payload[off + size - 1], off + size
    if off > 8 + length:  # the optional fields or extension headers run past the message's length
        return "gtpu", "tunnel_malformed"
    inner = payload[off : 8 + length]
    if not inner:  # a G-PDU carries a packet: none here
        return "gtpu", "truncated" if cut else "tunnel_malformed"
    return "gtpu", _inner_ip(inner, None, cut)


def _gre(payload: bytes, cut: bool):
    """GRE through ``dpkt.gre.GRE`` (flags, checksum / key / sequence fields, version 1's PPTP fields,
    source routes); what follows its header decoded here: dpkt has no ERSPAN, and its own decode of the
    payload is an object per layer while the flow table wants the raw inner packet."""
    import dpkt
    import dpkt.gre

    try:
        # at most 20 header bytes without source routes (flags + checksum/offset + key + sequence + ack): dpkt
        # also decodes the payload, which is wasted work here (and its errors are not the header's)
        g = dpkt.gre.GRE(payload if payload[:1] and payload[0] & 0x40 else payload[:20])
        if g.v > 1:
            return "gre", "tunnel_malformed"
        start = 4 + struct.calcsize("!" + "".join(g.opt_fields_fmts()[1])) + sum(len(s) for s in g.sre)
    except (dpkt.NeedData, struct.error):
        return "gre", "truncated" if cut else "tunnel_malformed"
    except Exception:  # dpkt raises assorted errors on damaged headers (and decodes the payload too)
        return "gre", "tunnel_malformed"
    inner, p = payload[start:], g.p
    if p == 0x0800 or p == 0x86DD:
        return "gre", _inner_ip(inner, 4 if p == 0x0800 else 6, cut)
    if p == 0x6558:  # transparent Ethernet bridging
        return "gre", _inner_ethernet(inner)
    if p == 0x880B:  # PPP (PPTP): optional address/control FF 03, protocol in 1 (compressed) or 2 bytes
        if inner[:2] == b"\xff\x03":
            inner = inner[2:]
        if not inner:
            return "gre", "non_ip"  # an acknowledgement without payload
        if inner[0] & 1:  # protocol field compression: one byte
            pp, n = inner[0], 1
        elif len(inner) > 1:
            pp, n = (inner[0] << 8) | inner[1], 2
        else:
            return "gre", "truncated"
        if pp in (0x21, 0x57):
            return "gre", _inner_ip(inner[n:], 4 if pp == 0x21 else 6, cut)
        return "gre", "non_ip"  # PPP control (LCP, IPCP, ...) or compressed/encrypted (CCP/MPPE) data
    if p == 0x88BE:  # ERSPAN type II (sequence number present: an 8-byte header, version 1) or type I (none)
        if g.flags & dpkt.gre.GRE_SP:
            if len(inner) < 8:
                return "erspan", "truncated" if cut else "tunnel_malformed"
            if inner[0] >> 4 != 1:
                return "erspan", "tunnel_malformed"
            inner = inner[8:]
        return "erspan", _inner_ethernet(inner)
    if p == 0x22EB:  # ERSPAN type III: 12-byte header (version 2), + 8 bytes when the O flag (last bit) is set
        if len(inner) < 12:
            return "erspan", "truncated" if cut else "tunnel_malformed"
        if inner[0] >> 4 != 2:
            return "erspan", "tunnel_malformed"
        start = 20 if inner[11] & 1 else 12
        return "erspan", _inner_ethernet(inner[start:])
    if p == 0x0806:
        return "gre", "non_ip"
    return "gre", "tunnel_unsupported"


def parse_ip(ip: bytes):
    """Decode a packet that starts at the IP header (what the dataset's ``packets`` column stores)."""
    n = len(ip)
    if n < 1:
        return "truncated"
    v = ip[0] >> 4
    if v == 4:
        if n < 20:
            return "truncated"
        ihl = IPV4_HEADER_LENGTH[ip[0]]
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
            if proto == 44 and ((ip[l4 + 2] << 8) | ip[l4 + 3]) & 0xFFF9:  # fragment: offset != 0 or more-fragments
                return "ip_fragment"
            end = l4 + ipv6_extension_length(ip, l4, proto)
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
        if TCP_HEADER_LENGTH[ip[l4 + 12]] < 20:  # a data offset below 5 words
            return "malformed"
        sport, dport, seq = struct.unpack_from(">HHI", ip, l4)
        return Decoded(ip, v, 6, src, dst, sport, dport, l4, tot, ip[l4 + 13], seq, ext)
    if proto == 17:
        if n < l4 + 8:
            return "truncated"
        sport, dport = struct.unpack_from(">HH", ip, l4)
        return Decoded(ip, v, 17, src, dst, sport, dport, l4, tot, 0, 0, ext)
    return ("not_tcp_udp", proto)

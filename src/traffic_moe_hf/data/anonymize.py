"""Anonymisation of one IP packet (on by default in ``traffic-moe prepare``), field by field.

The dataset stores packets from the IP header on, so link-layer addresses (MAC) never reach it. For a
tunnelled packet (decapsulated by default, see :mod:`.decode`) that is the *inner* IP header: the fields
below are masked there, and the outer headers (tunnel endpoints, GRE key, VNI, TEID) are never stored.
Inside the kept bytes every field that identifies a host, a connection or a capture session — and
that would let a classifier learn a shortcut instead of traffic behaviour — is set to zero:

IPv4 header
    identification, header checksum, source and destination address → 0.
    Options (record route / timestamp / source route carry addresses) → zero bytes (length kept).
    TTL → ``ttl`` mode: ``"mask"`` (default, 0), ``"keep"``, or ``"initial"`` (rounded up to the
    usual initial value 32/64/128/255: keeps the OS hint, drops the hop count).
IPv6 header
    flow label, source and destination address → 0; hop limit as TTL above.
    Extension headers: contents after the next-header/length bytes → 0 (routing headers and the
    home-address option carry addresses; the fragment header's identification).
TCP header
    source and destination port, sequence and acknowledgement number, checksum → 0.
    Options: timestamp values (TSval/TSecr), SACK blocks (absolute sequence numbers), MD5 / TCP-AO
    signatures and MPTCP (keys, tokens) → 0; MSS, window scale, SACK-permitted, NOP/EOL are kept
    (they describe the stack, not the host). Flags, window, urgent pointer, data offset are kept.
UDP header
    source and destination port, checksum → 0 (length kept).
Payload
    untouched (application data may still contain addresses, e.g. FTP ``PORT``, SIP, DNS answers;
    the ``--max-bytes`` cut limits how much of it the model sees).

The IP total length, header lengths and protocol numbers are kept.  Direction (client/server) is
computed from the flow before anonymisation and stored separately, so nothing is lost that the
model needs.  ``tests/test_data_anonymize.py`` proves that two copies of a flow differing only in
the masked fields produce identical model input.
"""

from __future__ import annotations

from .headers import payload_start

__all__ = ["anonymize", "TTL_MODES"]

TTL_MODES = ("mask", "keep", "initial")
_Z2, _Z4, _Z8, _Z16 = bytes(2), bytes(4), bytes(8), bytes(16)
_TCP_OPT_ZERO_FROM = {8: 2, 5: 2, 19: 2, 29: 2, 30: 2}  # kind -> first byte zeroed (after kind, len)


def _initial_ttl(t: int) -> int:
    for v in (32, 64, 128, 255):
        if t <= v:
            return v
    return 255


def anonymize(d, max_bytes: int, ttl: str = "mask") -> bytes:
    """Anonymised copy of the first ``max_bytes`` bytes of ``d.ip`` (``d`` is a ``Decoded``).

    Header fields are masked over the *whole* header even when ``max_bytes`` cuts it, then the
    result is cut to ``max_bytes``."""
    ip = d.ip
    l4 = d.l4
    hdr_end = payload_start(ip, l4, d.proto)
    b = bytearray(ip[: max(max_bytes, hdr_end)])
    n = len(b)
    if d.version == 4:
        b[4:6] = _Z2
        b[10:12] = _Z2
        b[12:20] = _Z8
        if l4 > 20:
            b[20:l4] = bytes(l4 - 20)
        if ttl == "mask":
            b[8] = 0
        elif ttl == "initial":
            b[8] = _initial_ttl(b[8])
    else:
        b[1] &= 0xF0
        b[2:4] = _Z2
        b[8:40] = _Z16 + _Z16
        for s, e, _t in d.ext:
            e = min(e, n)
            if e > s + 2:
                b[s + 2 : e] = bytes(e - s - 2)
        if ttl == "mask":
            b[7] = 0
        elif ttl == "initial":
            b[7] = _initial_ttl(b[7])
    if d.proto == 6:
        b[l4 : l4 + 12] = bytes(12)  # ports, seq, ack
        b[l4 + 16 : l4 + 18] = _Z2  # checksum
        i = l4 + 20
        end = min(hdr_end, n)
        while i < end:
            kind = b[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end:
                break
            ln = b[i + 1]
            if ln < 2 or i + ln > end:  # malformed option list: zero the rest of it
                b[i:end] = bytes(end - i)
                break
            z = _TCP_OPT_ZERO_FROM.get(kind)
            if z is not None:
                b[i + z : i + ln] = bytes(ln - z)
            i += ln
    else:
        b[l4 : l4 + 4] = _Z4
        b[l4 + 6 : l4 + 8] = _Z2
    del b[max_bytes:]
    return bytes(b)

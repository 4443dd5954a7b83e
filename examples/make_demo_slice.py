#!/usr/bin/env python3
"""Cut the small real-traffic slice shipped in ``data/demo/`` from ``../shared/data``.

Keeps the first F flows of every capture (a flow = bidirectional 5-tuple, a new TCP SYN
starts a new flow, as in ``../shared/tools/cut-flows.py``) and the first K packets of each.
Packets that belong to no TCP/UDP flow are dropped. Timestamps and link type are kept.

usage: python examples/make_demo_slice.py SRC_DIR DST_DIR [FLOWS_PER_FILE] [PACKETS_PER_FLOW]
"""

import collections
import os
import sys

import dpkt


def flow_key(buf):
    try:
        ip = dpkt.ethernet.Ethernet(buf).data
    except (dpkt.UnpackError, dpkt.NeedData):
        return None, False
    if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        return None, False
    l4 = ip.data
    a, b = (bytes(ip.src), l4.sport), (bytes(ip.dst), l4.dport)
    key = (type(l4).__name__,) + (a + b if a <= b else b + a)
    syn = isinstance(l4, dpkt.tcp.TCP) and bool(l4.flags & dpkt.tcp.TH_SYN) and not (l4.flags & dpkt.tcp.TH_ACK)
    return key, syn


def cut(src, dst, max_flows, max_packets):
    generation = collections.Counter()
    seen = collections.Counter()
    kept_flows = set()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        reader = dpkt.pcap.Reader(fi)
        writer = dpkt.pcap.Writer(fo, linktype=reader.datalink(), snaplen=65535)
        for ts, buf in reader:
            key, syn = flow_key(buf)
            if key is None:
                continue
            if syn and seen[(key, generation[key])]:
                generation[key] += 1
            flow = (key, generation[key])
            if flow not in kept_flows:
                if len(kept_flows) >= max_flows:
                    continue
                kept_flows.add(flow)
            seen[flow] += 1
            if seen[flow] <= max_packets:
                writer.writepkt(buf, ts)
    return len(kept_flows)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    flows = int(sys.argv[3]) if len(sys.argv) > 3 else 40  # what data/demo/ holds: 40 flows x 16 packets
    packets = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name.endswith(".pcap"):
            n = cut(os.path.join(src, name), os.path.join(dst, name), flows, packets)
            print(f"{name}: {n} flows")


if __name__ == "__main__":
    main()

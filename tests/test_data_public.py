"""Robustness sweep: every file of tcpdump's and Zeek's test captures (~1,600 files, ~50 link types,
malformed and truncated captures) goes through prepare without crash or hang; the accounting adds up
and every unreadable file is named with its reason."""

import pytest

from _data_util import SHARED
from traffic_moe_hf.data.prepare import collect_inputs, prepare


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["tcpdump-tests", "zeek-traces"])
def test_public_sweep(name):
    d = SHARED / "public" / name
    if not d.exists():
        pytest.skip(f"{d} absent (../shared/data not next to the checkout)")
    files, _, _ = collect_inputs([str(d)])
    r = prepare([d], None, labels="dir", split="none", num_proc=2, progress=False, save=False)
    assert r["files_total"] == len(files) > 800
    assert r["files_read"] + len(r["files_failed"]) == r["files_total"]
    assert all(isinstance(v, str) and v for v in r["files_failed"].values())
    licence = {"tcpdump-tests": "LICENSE.tcpdump", "zeek-traces": "COPYING.zeek"}[name]
    assert "not a pcap/pcapng file" in r["files_failed"][f"{name}/{licence}"]
    assert r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values())
    assert r["packets_total"] > 10000 and r["packets_used"] > 1000
    assert r["flows"] == r["flows_used"] + sum(r["flows_skipped"].values())
    assert r["samples_built"] == r["samples_total"] + sum(r["samples_removed"].values())
    assert sum(r["ip_protocols_skipped"].values()) == r["packets_skipped"]["not_tcp_udp"]
    assert max(v["seconds"] for v in r["per_file"].values()) < 20  # no file hangs
    for reason in ("non_ip", "unsupported_link_type", "not_tcp_udp"):
        assert r["packets_skipped"].get(reason, 0) > 0

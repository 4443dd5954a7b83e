"""Fuzz: mutated captures through the reader and the whole per-file pipeline.

Only the documented exception (``CaptureError``, from ``open_capture``) may escape the reader;
``process_file`` never raises, its accounting adds up, and each example finishes in bounded time."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _data_util import DEMO, ether, tcp_packet, write_pcapng
from traffic_moe_hf.data.reader import CaptureError, open_capture
from traffic_moe_hf.data.samples import PrepareConfig, process_file

SEED_PCAP = (DEMO / "dns.pcap").read_bytes()[:3000]


def _seed_pcapng(tmp):
    return write_pcapng(tmp, [(1, None), (101, 9)], [(0, 10, ether(tcp_packet())), (1, 20, tcp_packet(payload=b"x" * 30))]).read_bytes()


mutation = st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255), st.sampled_from(["set", "del", "ins"])),
                    min_size=1, max_size=12)


def _mutate(data: bytes, muts, cut):
    b = bytearray(data)
    for pos, val, op in muts:
        if not b:
            break
        pos %= len(b)
        if op == "set":
            b[pos] = val
        elif op == "del":
            del b[pos]
        else:
            b.insert(pos, val)
    return bytes(b[: max(cut, 0)] if cut is not None else b)


def _check(path):
    try:
        with open_capture(path) as rs:
            for _rec in rs:
                pass
    except CaptureError:
        pass
    cfg = PrepareConfig(tokenize=False, label_mode="file", root_label={str(path): "x"})
    r = process_file(str(path), cfg)
    assert r["error"] or r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values())


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(muts=mutation, cut=st.one_of(st.none(), st.integers(0, 3000)), which=st.sampled_from(["pcap", "pcapng"]))
def test_fuzz_mutated_captures(tmp_path, muts, cut, which):
    seed = SEED_PCAP if which == "pcap" else _seed_pcapng(tmp_path / "seed.pcapng")
    p = tmp_path / "fuzz.pcap"
    p.write_bytes(_mutate(seed, muts, cut))
    _check(p)


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), lt=st.sampled_from([0, 1, 9, 12, 101, 104, 108, 113, 228, 229, 276]))
def test_fuzz_random_frames(tmp_path, data, lt):
    """Random frame bytes under every supported link type: decode returns a result or a reason."""
    from traffic_moe_hf.data.anonymize import anonymize
    from traffic_moe_hf.data.decode import SKIP_REASONS, Decoded, decode

    d = decode(lt, b"\x45" + data if lt in (12, 101, 228) else data)
    if isinstance(d, Decoded):
        assert len(anonymize(d, 64)) <= 64
    elif isinstance(d, tuple):
        assert d[0] == "not_tcp_udp"
    else:
        assert d in SKIP_REASONS

"""`traffic-moe prepare` end to end on the demo slice: report, dataset layout, splits, labels, round trip."""

import csv
import json
import os

import datasets
import pytest

from _data_util import DEMO
from traffic_moe_hf.errors import TrafficMoeError
from traffic_moe_hf.data.decode import Decoded, parse_ip
from traffic_moe_hf.data.prepare import add_parser, prepare
from traffic_moe_hf.data.samples import encode_packets, write_pcap


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = _cli([str(DEMO), "--out", str(out), "--labels", "file", "--num-proc", "2", "--no-progress"])
    assert rc == 0
    return out


def test_report_accounting(demo_out):
    r = json.loads((demo_out / "report.json").read_text())
    assert r["files_read"] == 9 and r["files_failed"] == {}
    assert r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values())
    assert r["flows"] == 9 * 40 == r["flows_used"]
    assert set(r["samples"]) == {"train", "validation", "test"}
    assert r["samples_built"] == r["samples_total"] + sum(r["samples_removed"].values())
    assert sum(r["samples"]["train"].values()) > 250
    assert (demo_out / "split_report.json").exists()


def test_dataset_rows_and_no_flow_in_two_splits(demo_out):
    dd = datasets.load_from_disk(str(demo_out))
    assert dd["train"].features["label"].names == sorted(p.stem for p in DEMO.glob("*.pcap"))
    owner = {}
    for split, ds in dd.items():
        for fid in ds["flow_id"]:
            assert owner.setdefault(fid, split) == split, f"flow {fid} in {owner[fid]} and {split}"
    row = dd["train"][0]
    enc = encode_packets(row["packets"], row["directions"])
    assert enc["input_ids"][0] == row["input_ids"] and enc["direction_ids"][0] == row["direction_ids"]
    assert len(row["packets"]) == len(row["directions"]) == len(row["ip_lengths"]) == len(row["timestamps"])
    assert row["timestamps"][0] == 0.0 and row["start_time"] <= row["end_time"]
    assert all(len(p) <= 128 for p in row["packets"]) and max(row["packet_ids"]) <= 8
    # identical model input never appears in two splits (dedup=remove)
    seen = {}
    for split, ds in dd.items():
        for pk, dr in zip(ds["packets"], ds["directions"]):
            assert seen.setdefault((tuple(pk), tuple(dr)), split) == split
    seen = {}
    for split, ds in dd.items():
        for ids, dr in zip(ds["input_ids"], ds["direction_ids"]):
            assert seen.setdefault((tuple(ids), tuple(dr)), split) == split


def test_split_by_file_time_none_and_packet_level(tmp_path):
    r = prepare([DEMO], None, labels="dir", split="none", level="packet", progress=False, save=False)
    dd = r["_dataset"]
    assert list(dd) == ["test"] and dd["test"].num_rows == r["packets_used"]
    assert set(dd["test"]["packet_index"]) == set(range(8))
    r = prepare([DEMO], None, labels="file", split="time", progress=False, save=False, dedup="report")
    dd = r["_dataset"]
    for lab in range(9):
        tr = [t for t, l in zip(dd["train"]["start_time"], dd["train"]["label"]) if l == lab]
        te = [t for t, l in zip(dd["test"]["start_time"], dd["test"]["label"]) if l == lab]
        assert max(tr) <= min(te)
    r = prepare([DEMO], None, labels="file", split="file", progress=False, save=False)
    files = {s: set(ds["source_file"]) for s, ds in r["_dataset"].items()}
    assert sum(len(v) for v in files.values()) == 9  # each file in exactly one split
    assert r["split_report"]["labels_missing"]  # one file per label: reported, not hidden


def test_labels_missing_counts_what_dedup_removed(tmp_path):
    """A label whose every validation/test flow copies a train flow is missing from those splits once the copies are
    removed: the report says so (it once listed only the labels the split assignment left out, before dedup)."""
    import shutil

    (tmp_path / "dns").mkdir()
    for k in range(10):  # ten byte-identical copies: split by file, each split is given some, only train keeps any
        shutil.copy(DEMO / "dns.pcap", tmp_path / "dns" / f"copy{k}.pcap")
    (tmp_path / "other").mkdir()
    for pcap in sorted(DEMO.glob("*.pcap")):
        if pcap.name != "dns.pcap":
            shutil.copy(pcap, tmp_path / "other" / pcap.name)
    r = prepare([tmp_path], None, labels="dir", split="file", ratios=(0.4, 0.3, 0.3), progress=False, save=False)
    files = r["split_report"]["files"]
    assert all(any("/dns/" in f for f in files[s]) for s in ("train", "validation", "test"))  # assigned everywhere
    assert "dns" not in r["samples"]["validation"] and "dns" not in r["samples"]["test"]  # then removed as copies
    assert r["split_report"]["labels_missing"] == {"validation": ["dns"], "test": ["dns"]}


def test_csv_labels(tmp_path):
    base = prepare([DEMO / "dns.pcap", DEMO / "ssh.pcap"], None, labels="file", split="none", progress=False, save=False)
    ds = base["_dataset"]["test"]
    rows = [(ft, ds["start_time"][i], ds["end_time"][i]) for i, ft in enumerate(ds["five_tuple"])][::3]
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["proto", "src_ip", "src_port", "dst_ip", "dst_port", "start", "end", "label"])
        for ft, s, e in rows:
            proto, eps = ft.split(" ")
            a, b = eps.split("-")
            # reversed orientation on purpose: matching is direction-free
            w.writerow([proto, *b.split(":"), *a.split(":"), s - 0.001, e + 0.001, "x-" + proto])
        w.writerow(["tcp", "127.0.0.1", "1", "127.0.0.1", "2", "", "", "never"])
    r = prepare([DEMO / "dns.pcap", DEMO / "ssh.pcap"], None, labels=f"csv:{path}", split="none", progress=False, save=False)
    assert r["flows_used"] == len(rows)
    assert r["flows_skipped"]["unlabeled"] == 80 - len(rows)
    assert r["packets_total"] == r["packets_used"] + sum(r["packets_skipped"].values())
    assert set(r["samples"]["test"]) == {"x-udp", "x-tcp"}


def test_unusable_label_csv_is_a_clear_error(tmp_path, capsys):
    """A missing label CSV, or one without the required columns: exit status 2 and one line naming the
    file and what is wrong (no traceback); nothing is written."""
    bad = tmp_path / "bad.csv"
    bad.write_text("src,dst\n10.0.0.1,10.0.0.2\n")
    for path, why in ((tmp_path / "missing.csv", "cannot read the label CSV (No such file or directory)"),
                      (bad, "label CSV lacks column(s) src_port, dst_port, label")):
        assert _cli([str(DEMO / "dns.pcap"), "--out", str(tmp_path / "out"), "--labels", f"csv:{path}", "--no-progress"]) == 2
        assert capsys.readouterr().err.strip() == f"traffic-moe prepare: {path}: {why}" + (
            " (header: ['src', 'dst'])" if path == bad else "")
    assert not (tmp_path / "out").exists()


def test_write_pcap_round_trip(tmp_path):
    r = prepare([DEMO / "ssh.pcap"], None, labels="file", split="none", max_bytes=1500, progress=False, save=False)
    row = r["_dataset"]["test"][3]
    p = tmp_path / "ssh" / "flow.pcap"
    p.parent.mkdir()
    write_pcap(p, row["packets"], row["timestamps"], row["start_time"], seqs=row["tcp_seq"], directions=row["directions"])
    for pk in row["packets"]:
        assert isinstance(parse_ip(pk), Decoded)
    back = prepare([p], None, labels="dir", split="none", max_bytes=1500, progress=False, save=False)["_dataset"]["test"][0]
    assert back["packets"] == row["packets"] and back["input_ids"] == row["input_ids"]
    assert back["ip_lengths"] == row["ip_lengths"] and back["tcp_seq"] == row["tcp_seq"]
    assert back["directions"] == row["directions"] and back["direction_ids"] == row["direction_ids"]


def test_failures_named_and_exit_status(tmp_path):
    (tmp_path / "junk.pcap").write_bytes(b"not a capture")
    out = tmp_path / "o"
    assert _cli([str(tmp_path / "junk.pcap"), str(tmp_path / "nope.pcap"), "--out", str(out), "--no-progress"]) == 1
    r = json.loads((out / "report.json").read_text())
    assert "not a pcap/pcapng" in r["files_failed"]["junk.pcap"]
    assert r["files_failed"][str(tmp_path / "nope.pcap")] == "no such file or directory"


def _rows(dd):
    return {s: sorted(zip(ds["flow_id"], ds["input_ids"], ds["label"])) for s, ds in dd.items()}


def test_num_proc_2_equals_one_process_and_survives_a_dead_worker(monkeypatch):
    """Parallel prepare gives exactly the one-process dataset and report; a worker that dies in the
    middle of a file (here: exits on purpose) loses nothing — its file is re-run by the main process."""
    import os

    from traffic_moe_hf.data import prepare as prep_mod

    one = prepare([str(DEMO)], None, labels="file", num_proc=1, progress=False, save=False)
    two = prepare([str(DEMO)], None, labels="file", num_proc=2, progress=False, save=False)
    assert _rows(one["_dataset"]) == _rows(two["_dataset"])
    for key in ("packets_total", "packets_used", "packets_skipped", "flows", "samples", "files_failed"):
        assert one[key] == two[key], key

    main_pid = os.getpid()
    real_work = prep_mod._work

    def dying_work(item, *args):
        if os.getpid() != main_pid:
            os._exit(3)  # every file a child claims is lost with it
        return real_work(item, *args)

    monkeypatch.setattr(prep_mod, "_work", dying_work)
    rescued = prepare([str(DEMO)], None, labels="file", num_proc=2, progress=False, save=False)
    assert rescued["files_read"] == 9 and rescued["files_failed"] == {}
    assert _rows(rescued["_dataset"]) == _rows(one["_dataset"])


def test_one_capture_is_split_over_processes_by_flow(tmp_path):
    """--num-proc on one large capture: every process reads it and assembles its share of the flows;
    rows, their order, flow ids and the accounting equal one process's. Ethernet/IPv4 (share chosen
    from raw bytes, before decoding), packet level, and raw IP with junk records (share chosen after
    decoding; records that decode to no flow belong to the first process)."""
    import dpkt

    raw, junk = tmp_path / "raw-ip.pcap", 0
    with open(DEMO / "http.pcap", "rb") as f, open(raw, "wb") as g:
        w = dpkt.pcap.Writer(g, linktype=101)
        for i, (ts, frame) in enumerate(dpkt.pcap.Reader(f)):
            w.writepkt(frame[14:], ts=ts)
            if i % 50 == 0:
                w.writepkt(b"\x00junk", ts=ts)  # IP version 0
                junk += 1
    for path, level in ((DEMO / "ftp.pcap", "flow"), (DEMO / "ftp.pcap", "packet"), (raw, "flow")):
        one = prepare([str(path)], None, labels="file", level=level, num_proc=1, progress=False, save=False)
        two = prepare([str(path)], None, labels="file", level=level, num_proc=2, progress=False, save=False)
        [split] = two["files_split"].values()
        assert split["processes"] == 2 and min(split["flows"]) > 0 and sum(split["flows"]) == one["flows"]
        assert one["files_split"] == {}
        for key in ("packets_total", "packets_used", "packets_skipped", "link_types", "flows", "flows_skipped",
                    "samples", "files_failed", "files_read"):
            assert one[key] == two[key], (path.name, level, key)
        assert two["packets_total"] == two["packets_used"] + sum(two["packets_skipped"].values())
        for name, ds in one["_dataset"].items():
            assert ds.to_dict() == two["_dataset"][name].to_dict(), (path.name, level, name)
    assert one["packets_skipped"]["malformed"] == junk > 0  # counted once, by the first process


def test_duplicate_groups_are_transitive_and_order_free():
    from traffic_moe_hf.data.splits import duplicate_groups

    # flow a shares an input with b, b with c (packet-level samples); d stands alone
    flows = ["a", "a", "b", "b", "c", "d"]
    keys = ["k1", "k2", "k2", "k3", "k3", "k4"]
    g = duplicate_groups(flows, keys)
    assert g == {"a": "a", "b": "a", "c": "a", "d": "d"}
    assert duplicate_groups(flows[::-1], keys[::-1]) == g


def test_grouped_split_keeps_every_sample_and_no_input_in_two_splits():
    """Default --dedup group on the demo slice: identical inputs (postgres and smtp logins are
    byte-identical in their first packets) share one split, nothing is removed, and a removal split
    of the same data loses samples that grouping keeps."""
    grouped = prepare([str(DEMO)], None, labels="file", progress=False, save=False)
    removed = prepare([str(DEMO)], None, labels="file", progress=False, save=False, dedup="remove")
    assert grouped["samples_removed"] == {} and grouped["split_report"]["duplicates"]["policy"] == "group"
    assert grouped["samples_total"] == grouped["samples_built"] == 9 * 40
    assert sum(removed["samples_removed"].values()) > 0
    assert grouped["split_report"]["groups"]["flows_in_groups_of_2_or_more"] > 0
    owner = {}
    for split, ds in grouped["_dataset"].items():
        for pk, dr in zip(ds["packets"], ds["directions"]):
            assert owner.setdefault((tuple(pk), tuple(dr)), split) == split
    # file and time splits have fixed units: grouping falls back to removal there
    by_time = prepare([str(DEMO)], None, labels="file", split="time", progress=False, save=False)
    assert by_time["split_report"]["duplicates"]["policy"] == "remove"


def test_large_groups_go_to_train_so_no_evaluation_split_is_one_repeated_input():
    """On the demo slice at 60/20/20 one ftp input is repeated by 20 of ftp's 40 flows. Split like any
    group (``large_groups="any"``) it can land in test and be 20 of ftp's 25 test flows; by default a
    group larger than the smaller evaluation share of its label (20 % of 40 = 8 flows) trains."""
    from collections import Counter

    def groups_per_split(report):
        """split -> [(label, flows)] per distinct input (identical inputs carry one label here)."""
        sizes = {}
        for split, ds in report["_dataset"].items():
            names = ds.features["label"].names
            c = Counter((tuple(i), tuple(d), names[lab]) for i, d, lab in zip(ds["input_ids"], ds["direction_ids"], ds["label"]))
            sizes[split] = [(label, n) for (_i, _d, label), n in c.items()]
        return sizes

    kw = dict(labels="file", ratios=(0.6, 0.2, 0.2), progress=False, save=False)
    new = prepare([str(DEMO)], None, **kw)
    old = prepare([str(DEMO)], None, large_groups="any", **kw)
    per_label = Counter()
    for ds in new["_dataset"].values():
        names = ds.features["label"].names
        per_label.update(names[x] for x in ds["label"])
    for split in ("validation", "test"):
        for label, n in groups_per_split(new)[split]:
            assert n <= 0.2 * per_label[label], (split, label, n)
    moved = new["split_report"]["groups"]["large_groups_to_train"]
    assert moved["ftp"] == {"groups": 1, "flows": 20}
    from traffic_moe_hf.data.prepare import format_report

    assert "ftp 20 flows in 1 group" in format_report(new) and "kept in train" not in format_report(old)
    assert old["samples"]["test"]["ftp"] == 25 and new["samples"]["test"]["ftp"] == 4  # the case above
    # nothing lost either way, and still no input in two splits
    assert new["samples_total"] == old["samples_total"] == 9 * 40
    owner = {}
    for split, ds in new["_dataset"].items():
        for i, d in zip(ds["input_ids"], ds["direction_ids"]):
            assert owner.setdefault((tuple(i), tuple(d)), split) == split
    with pytest.raises(ValueError, match="large_groups"):
        prepare([str(DEMO)], None, large_groups="some", **kw)


def test_progress_moves_while_a_large_capture_is_read(tmp_path, monkeypatch):
    """process_file reports how far into the file it has read (every 8192 records; for gzip, in the
    compressed file), so prepare's progress bar moves during one large capture, in any process."""
    import gzip

    import dpkt

    from traffic_moe_hf.data.samples import PrepareConfig, process_file

    with open(DEMO / "http.pcap", "rb") as f:
        frames = [(ts, frame) for ts, frame in dpkt.pcap.Reader(f)]
    big = tmp_path / "big.pcap"
    with open(big, "wb") as g:
        w = dpkt.pcap.Writer(g, linktype=1)
        for i in range(20000):
            ts, frame = frames[i % len(frames)]
            w.writepkt(frame, ts=ts + i // len(frames))
    (tmp_path / "big.pcap.gz").write_bytes(gzip.compress(big.read_bytes()))
    for path in (big, tmp_path / "big.pcap.gz"):
        seen = []
        cfg = PrepareConfig(label_mode="dir")
        cfg.root_label = {str(path): "x"}
        r = process_file(str(path), cfg, on_progress=seen.append)
        assert r["packets_total"] == 20000 and len(seen) == 20000 // 8192
        assert seen == sorted(seen) and 0 < seen[0] < seen[-1] <= path.stat().st_size
    # the bar, with the capture split over two processes, ends at the input's size
    from tqdm import tqdm

    bars = []
    real_init = tqdm.__init__

    def keep(self, *a, **k):
        real_init(self, *a, **k)
        bars.append(self)

    monkeypatch.setattr(tqdm, "__init__", keep)
    report = prepare([str(big)], None, labels="file", num_proc=2, progress=True, save=False)
    assert report["files_split"] and round(bars[0].n) == bars[0].total == big.stat().st_size


def test_rows_built_in_chunks_equal_rows_built_at_once(monkeypatch):
    """prepare builds a capture's rows a few flows at a time (Arrow chunks, bounded memory on large
    captures): the rows, their dedup keys and the saved dataset equal those built in one go, at flow
    and packet level, with and without tokens; and the per-split datasets share one table."""
    import pyarrow as pa

    from traffic_moe_hf.data import prepare as prep_mod
    from traffic_moe_hf.data.samples import PrepareConfig, columns_to_arrow, process_file

    path = str(DEMO / "smtp.pcap")
    for level, tokenize in (("flow", True), ("packet", True), ("flow", False)):
        cfg = PrepareConfig(level=level, tokenize=tokenize, root_label={path: "smtp"})
        whole = process_file(path, cfg)["columns"]
        columns_to_arrow(whole)
        chunked = process_file(path, cfg, arrow_chunk=7)["columns"]
        assert chunked.keys() == whole.keys()
        assert isinstance(chunked["packets"], pa.ChunkedArray) and chunked["packets"].num_chunks >= 3
        for k, v in whole.items():
            got = chunked[k]
            assert (got.to_pylist() if isinstance(got, pa.ChunkedArray) else got) == (
                v.to_pylist() if isinstance(v, pa.Array) else v), (level, tokenize, k)
    at_once = prepare([str(DEMO)], None, labels="file", progress=False, save=False)
    monkeypatch.setattr(prep_mod, "ARROW_CHUNK", 5)
    in_chunks = prepare([str(DEMO)], None, labels="file", progress=False, save=False)
    assert _rows(at_once["_dataset"]) == _rows(in_chunks["_dataset"])
    total = sum(len(ds) for ds in in_chunks["_dataset"].values())
    for ds in in_chunks["_dataset"].values():  # one table of all rows, an indices mapping per split
        assert ds._indices is not None and len(ds.data) == total


def test_packet_level_flow_split_keeps_evaluation_splits_usable():
    """Packet level with the default --dedup: grouping flows by any shared packet joined nearly every
    TCP flow into one component (a bare ACK is the same in every anonymised flow), which went to train
    whole and left validation/test with DNS only (tls9: no evaluation samples at all). Packet level now
    removes a later split's copies of earlier inputs instead: most classes are evaluated, no flow and no
    input is in two splits, and every removed packet is counted."""
    r = prepare([str(DEMO)], None, labels="file", level="packet", progress=False, save=False)
    dd = r["_dataset"]
    assert r["split_report"]["duplicates"]["policy"] == "remove"
    assert len(set(dd["test"]["label"])) >= 5 and len(set(dd["validation"]["label"])) >= 5
    assert r["samples_total"] + sum(r["samples_removed"].values()) == r["samples_built"] == r["packets_used"]
    flow_split, input_split = {}, {}
    for split, ds in dd.items():
        for fid, ids, dr in zip(ds["flow_id"], ds["input_ids"], ds["direction_ids"]):
            assert flow_split.setdefault(fid, split) == split
            assert input_split.setdefault((tuple(ids), tuple(dr)), split) == split


def test_csv_rows_that_contradict_each_other_are_counted(tmp_path):
    """Ground truth from IDS/DPI output can give one flow two labels; the flow keeps the best match's
    label (as before) but the contradiction is counted and printed, and unusable rows are reported."""
    from traffic_moe_hf.data.prepare import format_report

    base = prepare([DEMO / "dns.pcap"], None, labels="file", split="none", progress=False, save=False)
    tuples = base["_dataset"]["test"]["five_tuple"]
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["proto", "src_ip", "src_port", "dst_ip", "dst_port", "label"])
        for n, ft in enumerate(tuples):
            proto, eps = ft.split(" ")
            a, b = eps.split("-")
            w.writerow([proto, *a.split(":"), *b.split(":"), "dns"])
            if n < 3:  # a second opinion for three flows
                w.writerow([proto, *b.split(":"), *a.split(":"), "tunnel"])
        w.writerow(["udp", "not-an-ip", "1", "127.0.0.1", "2", "dns"])
        w.writerow(["udp", "127.0.0.1", "70000", "127.0.0.1", "53", "dns"])  # no such port: was accepted
        w.writerow(["udp", "192.0.2.9", "5353", "192.0.2.10", "53", "dns"])  # endpoints of no flow here
    with open(path, "a", newline="") as f:  # a time range that ends before it starts labels nothing: bad
        csv.writer(f).writerow(["udp", "127.0.0.1", "1", "127.0.0.1", "2", "dns"])
    timed = tmp_path / "timed.csv"
    timed.write_text("proto,src_ip,src_port,dst_ip,dst_port,start,end,label\nudp,127.0.0.1,1,127.0.0.1,2,100,50,dns\n")
    r = prepare([DEMO / "dns.pcap"], None, labels=f"csv:{path}", split="none", progress=False, save=False)
    assert r["label_csv"]["flows_ambiguous"] == 3 and r["label_csv"]["bad_rows"] == 2
    # usable rows that labelled no flow of these captures are counted (the second-opinion rows match flows)
    assert r["label_csv"]["rows_matching_no_flow"] == 2
    assert r["flows_used"] == len(tuples) and set(r["_dataset"]["test"]["label"]) == {0}  # first row's label kept
    text = format_report(r)
    assert "WARNING 3 flows matched label-CSV rows with different labels" in text
    assert "2 of " in text and "rows unusable" in text and "2 of " in text and "rows matched no flow" in text
    from traffic_moe_hf.data.labels import CsvLabels

    assert CsvLabels(str(timed)).bad_rows == 1


def test_same_file_name_in_two_folders_stays_two_captures(tmp_path):
    """a/x.pcap and b/x.pcap used to share the display name 'x.pcap', which is the file's identity in
    flow ids and the per-file accounting: the two captures' flows got the same ids (split as one flow)
    and one file's line vanished from report.json. A file reached twice is read once, and said so."""
    import shutil

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(DEMO / "dns.pcap", tmp_path / "a" / "x.pcap")
    shutil.copy(DEMO / "ssh.pcap", tmp_path / "b" / "x.pcap")
    inputs = [str(tmp_path / "a" / "x.pcap"), str(tmp_path / "b" / "x.pcap"), str(tmp_path / "a")]
    r = prepare(inputs, None, labels="dir", save=False, progress=False)
    assert sorted(r["per_file"]) == ["a/x.pcap", "b/x.pcap"]
    assert r["files_total"] == 2 and r["files_repeated"] == [str(tmp_path / "a" / "x.pcap")]  # the path, not a name
    assert r["packets_total"] == sum(v["packets"] for v in r["per_file"].values())
    ds = r["_dataset"]
    ids = [f for s in ds for f in ds[s]["flow_id"]]
    assert len(ids) == len(set(ids)) == r["flows_used"]
    assert {f for s in ds for f in ds[s]["source_file"]} == {"a/x.pcap", "b/x.pcap"}


def _zeek_conn_rows(pcaps):
    """conn.log-like records of real flows: what Zeek writes for them (orig = the flow's client)."""
    base = prepare(pcaps, None, labels="file", split="none", progress=False, save=False)
    ds = base["_dataset"]["test"]
    names = ds.features["label"].names
    rows = []
    for ft, start, end, label in zip(ds["five_tuple"], ds["start_time"], ds["end_time"], ds["label"]):
        proto, eps = ft.split(" ")
        (oh, op), (rh, rp) = (e.rsplit(":", 1) for e in eps.split("-"))
        rows.append({"ts": f"{start:.6f}", "uid": f"C{len(rows)}", "id.orig_h": oh, "id.orig_p": op, "id.resp_h": rh,
                     "id.resp_p": rp, "proto": proto, "service": names[label], "duration": f"{end - start:.6f}"})
    return base, rows


def test_zeek_conn_log_labels(tmp_path):
    """Ground truth as an IDS writes it: a Zeek conn.log (TSV with IoT-23's space-separated label fields,
    and JSON lines). Every real flow is matched by its log line; rows that label nothing prepare
    classifies (ICMP, no service) are counted by reason, not lost and not called malformed."""
    pcaps = [DEMO / "dns.pcap", DEMO / "ssh.pcap"]
    base, rows = _zeek_conn_rows(pcaps)
    fields = ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service", "duration"]
    extra = [{**rows[0], "proto": "icmp", "id.orig_p": "8", "id.resp_p": "0"}, {**rows[1], "service": "-"}]
    tsv = tmp_path / "conn.log.labeled"
    with open(tsv, "w") as f:
        f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n")
        f.write("#fields\t" + "\t".join(fields) + "   label   detailed-label\n")
        for n, row in enumerate(rows + extra):
            verdict = "Malicious   C&C" if row["service"] == "ssh" else "Benign   -"
            f.write("\t".join(row[k] for k in fields) + "   " + verdict + "\n")
        f.write("#close\t2026-11-29-13-00-00\n")
    r = prepare(pcaps, None, labels=f"csv:{tsv}", split="none", progress=False, save=False)
    assert r["label_csv"]["format"] == "zeek" and r["label_csv"]["label_column"] == "label"
    assert r["flows_used"] == len(rows) == base["flows_used"] and "unlabeled" not in r["flows_skipped"]
    assert r["samples"]["test"] == {"Benign": 40, "Malicious": 40}
    assert r["label_csv"]["rows"] == len(rows) + 2 and r["label_csv"]["bad_rows"] == 0
    r = prepare(pcaps, None, labels=f"csv:{tsv}", label_column="service", split="none", progress=False, save=False)
    assert r["samples"]["test"] == {"dns": 40, "ssh": 40}
    assert r["label_csv"]["rows_skipped"] == {"no label (service unset)": 1, "protocol icmp (not TCP/UDP)": 1}
    jsonl = tmp_path / "conn.json"
    jsonl.write_text("".join(json.dumps({**row, "ts": float(row["ts"]), "id.orig_p": int(row["id.orig_p"])}) + "\n"
                             for row in rows))
    r = prepare(pcaps, None, labels=f"csv:{jsonl}", label_column="service", split="none", progress=False, save=False)
    assert r["label_csv"]["format"] == "zeek-json" and r["samples"]["test"] == {"dns": 40, "ssh": 40}
    # a log without the label column: one line naming the file, the columns and the option
    with pytest.raises(Exception, match=r"lacks column\(s\) label .*--label-column"):
        prepare(pcaps, None, labels=f"csv:{jsonl}", split="none", progress=False, save=False)


def test_prepare_again_into_the_same_folder_replaces_the_dataset(tmp_path):
    """`--split none` after a flow split into the same --out used to leave the old train/validation folders
    beside the new test split; they are removed (and said), anything else in the folder is left alone,
    and a run that reads nothing leaves the earlier dataset as it was."""
    out = tmp_path / "ds"
    assert _cli([str(DEMO), "--out", str(out), "--labels", "file", "--no-progress"]) == 0
    (out / "notes.txt").write_text("mine")
    assert {p.name for p in out.iterdir()} >= {"train", "validation", "test"}
    assert _cli([str(DEMO / "dns.pcap"), "--out", str(out), "--labels", "file", "--split", "none", "--no-progress"]) == 0
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"test"} and (out / "notes.txt").exists()
    assert json.loads((out / "report.json").read_text())["splits_replaced"] == ["train", "validation"]
    assert list(datasets.load_from_disk(str(out))) == ["test"]
    assert _cli([str(tmp_path / "typo.pcap"), "--out", str(out), "--no-progress"]) == 1
    assert list(datasets.load_from_disk(str(out))) == ["test"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_and_dangling_link_in_a_folder_are_named_not_waited_on(tmp_path):
    """A named pipe inside an input folder (e.g. one a live tcpdump writes to) used to block prepare
    forever; it is skipped with its reason, as is a dangling symbolic link, and the captures beside them
    are read. A pipe named explicitly is still read (`prepare <(zcat x.pcap.gz)`)."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "caps"
    folder.mkdir()
    shutil.copy(DEMO / "dns.pcap", folder / "dns.pcap")
    os.mkfifo(folder / "live.pcap")
    os.symlink(tmp_path / "gone.pcap", folder / "gone.pcap")
    r = prepare([folder], None, labels="file", split="none", progress=False, save=False)  # returns: no hang
    assert r["files_read"] == 1 and r["files_total"] == 3
    assert r["files_failed"] == {"caps/live.pcap": "not a regular file (named pipe, socket or device): skipped",
                                 "caps/gone.pcap": "broken symbolic link"}
    code = ("import sys; from traffic_moe_hf.data.prepare import prepare; "
            "r = prepare([sys.argv[1]], None, labels='file', split='none', progress=False, save=False); "
            "print(r['packets_total'])")
    writer = subprocess.Popen(["sh", "-c", f"cat '{DEMO / 'dns.pcap'}' > '{folder / 'live.pcap'}'"])
    out = subprocess.run([sys.executable, "-c", code, str(folder / "live.pcap")], capture_output=True, text=True,
                         timeout=120)
    writer.wait(timeout=60)
    assert out.stdout.strip() == "80", out.stderr[-2000:]


def test_prepare_says_what_it_did_not_write_and_skips_its_own_output(tmp_path, capsys):
    """A run that keeps no sample says it wrote no dataset (it said "written" and finetune then called the
    folder "not a dataset"); an --out inside an input folder is not read back as captures on the next run;
    --split-ratios must sum to 1 (0.7,0.2,0.2 was renormalised silently) and a bad value is a usage error."""
    import shutil

    from traffic_moe_hf.cli import main
    from traffic_moe_hf.recipes.common import load_prepared

    shutil.copy(DEMO / "dns.pcap", tmp_path / "dns.pcap")
    out = tmp_path / "ds"
    # exit 1: no dataset written (issue 28), so `prepare ... && finetune ...` stops here
    assert main(["prepare", str(tmp_path), "--out", str(out), "--min-packets", "1000", "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "no samples, so no dataset" in text and not (out / "dataset_dict.json").exists()
    with pytest.raises(TrafficMoeError, match="wrote no samples here .*40 too_short"):
        load_prepared(out)
    assert main(["prepare", str(tmp_path), "--out", str(out), "--labels", "file", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "files: 1 total, 1 read, 0 failed" in text and "lies inside an input folder" in text
    for bad in ("0.7,0.2,0.2", "0.8,0.2", "a,b,c"):
        with pytest.raises(SystemExit) as exit_info:
            main(["prepare", str(tmp_path), "--out", str(out), "--split-ratios", bad])
        assert exit_info.value.code == 2
        assert "--split-ratios" in capsys.readouterr().err


def test_a_skipped_flows_packets_are_all_counted_under_its_reason(tmp_path):
    """Every packet of an unlabeled (or too short) flow is counted under that reason — the ones past the
    sample too, which were counted as beyond_max_packets (ssh's flows: 8 of 16 packets as unlabeled)."""
    dns = prepare([DEMO / "dns.pcap"], None, labels="file", split="none", progress=False, save=False)
    path = tmp_path / "only-dns.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["proto", "src_ip", "src_port", "dst_ip", "dst_port", "label"])
        for ft in dns["_dataset"]["test"]["five_tuple"]:
            proto, eps = ft.split(" ")
            a, b = eps.split("-")
            w.writerow([proto, *a.split(":"), *b.split(":"), "dns"])
    ssh = prepare([DEMO / "ssh.pcap"], None, labels="file", split="none", progress=False, save=False)
    assert ssh["packets_skipped"].get("beyond_max_packets", 0) > 0  # long flows: packets past the sample
    r = prepare([DEMO / "dns.pcap", DEMO / "ssh.pcap"], None, labels=f"csv:{path}", split="none", progress=False,
                save=False)
    normalised = sum(v for k, v in ssh["packets_skipped"].items() if k.startswith("tcp_"))
    assert r["packets_skipped"]["flow_unlabeled"] == ssh["packets_total"] - normalised
    assert "beyond_max_packets" not in r["packets_skipped"] or r["packets_skipped"]["beyond_max_packets"] == dns["packets_skipped"].get("beyond_max_packets", 0)
    assert r["packets_used"] + sum(r["packets_skipped"].values()) == r["packets_total"]
    short = prepare([DEMO / "ssh.pcap"], None, labels="file", split="none", min_packets=1000, progress=False, save=False)
    assert short["packets_skipped"]["flow_too_short"] == ssh["packets_total"] - normalised

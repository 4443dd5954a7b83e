"""The accounting table ``traffic-moe prepare`` prints: files read / failed with reasons, packets used and
skipped by reason, flows, samples per label and split (from the report that ``prepare`` writes as
``report.json``)."""

from __future__ import annotations

__all__ = ["format_report"]


def format_report(r: dict) -> str:
    """The accounting table printed at the end of ``traffic-moe prepare``."""
    lines = []
    w = lines.append
    w(f"files: {r['files_total']} total, {r['files_read']} read, {len(r['files_failed'])} failed"
      + (f", {len(r['files_warnings'])} read partially" if r.get("files_warnings") else ""))
    if r["files_total"] == 0:
        w(f"  no files found in {', '.join(r['inputs'])} (empty folders; hidden files are not read)")
    for f, why in list(r["files_failed"].items())[:50]:
        w(f"  FAILED  {f}: {why}")
    if len(r["files_failed"]) > 50:
        w(f"  ... {len(r['files_failed']) - 50} more in report.json")
    for f, why in list(r.get("files_warnings", {}).items())[:20]:
        w(f"  PARTIAL {f}: {why}")
    if len(r.get("files_warnings", {})) > 20:
        w(f"  ... {len(r['files_warnings']) - 20} more in report.json")
    if r.get("files_repeated"):
        rep = r["files_repeated"]
        w(f"  note: reached more than once, read once: {', '.join(rep[:10])}{' ...' if len(rep) > 10 else ''}")
    if r.get("out_inside_input"):
        w(f"  note: {r['out_inside_input']}")
    tot = r.get("packets_total", 0)
    w(f"packets: {tot:>10} total")
    w(f"  used   {r.get('packets_used', 0):>10}")
    for k, v in r.get("packets_skipped", {}).items():
        w(f"  skipped {k:<24} {v:>10}")
    chk = r.get("packets_used", 0) + sum(r.get("packets_skipped", {}).values())
    w(f"  (used + skipped = {chk}{' OK' if chk == tot else ' MISMATCH'})")
    if r.get("ip_protocols_skipped"):
        w("  not TCP/UDP by protocol: " + ", ".join(f"{k} {v}" for k, v in r["ip_protocols_skipped"].items()))
    if r.get("tunnels_decapsulated"):
        w("  tunnel headers removed (--tunnels decap): " + ", ".join(f"{k} {v}" for k, v in r["tunnels_decapsulated"].items()))
    w(f"flows: {r.get('flows', 0)} total, {r.get('flows_used', 0)} used"
      + "".join(f", {v} skipped ({k})" for k, v in r.get("flows_skipped", {}).items()))
    ambiguous = r.get("label_csv", {}).get("flows_ambiguous", 0)
    if ambiguous:
        w(f"  WARNING {ambiguous} flows matched label-CSV rows with different labels (the row whose time range "
          "holds the flow's start, else the first matching row, was used; label_csv in report.json)")
    if r.get("label_csv", {}).get("bad_rows"):
        w(f"  label CSV: {r['label_csv']['bad_rows']} of {r['label_csv']['rows']} rows unusable (bad address, port "
          "or time) and ignored")
    for why, n in r.get("label_csv", {}).get("rows_skipped", {}).items():
        w(f"  label CSV: {n} of {r['label_csv']['rows']} rows skipped: {why}")
    if r.get("label_csv", {}).get("rows_matching_no_flow"):
        w(f"  label CSV: {r['label_csv']['rows_matching_no_flow']} of {r['label_csv']['rows']} rows matched no flow "
          "of these captures (other captures, time ranges or endpoints; or only flows shorter than --min-packets)")
    samples = r.get("samples", {})
    labels = r.get("labels", [])
    if samples and not labels:
        w("samples per split (unlabelled): " + ", ".join(f"{s} {sum(v.values())}" for s, v in samples.items()))
    elif samples:
        splits = list(samples)
        w("samples per label and split:")
        w("  " + f"{'label':<24}" + "".join(f"{s:>12}" for s in splits))
        for lab in labels:
            w("  " + f"{lab:<24}" + "".join(f"{samples[s].get(lab, 0):>12}" for s in splits))
        w("  " + f"{'total':<24}" + "".join(f"{sum(samples[s].values()):>12}" for s in splits))
    for k, v in r.get("samples_removed", {}).items():
        w(f"  removed {k}: {v}")
    sr = r.get("split_report", {})
    conflicts = sr.get("duplicates", {}).get("label_conflicts", 0)
    if conflicts:
        w(f"  WARNING {conflicts} model inputs occur with different labels (identical flows labelled otherwise: "
          "no model can tell them apart; duplicates in split_report.json)")
    big = sr.get("groups", {}).get("large_groups_to_train")
    if big:
        w("  kept in train (groups of identical inputs larger than a validation/test share; --large-groups): "
          + ", ".join(f"{lab} {v['flows']} flows in {v['groups']} group{'s' if v['groups'] > 1 else ''}" for lab, v in big.items()))
    if sr.get("labels_missing"):
        w(f"  WARNING labels missing from a split: {sr['labels_missing']}")
    for note in sr.get("notes", []):
        w(f"  note: {note}")
    if len(labels) == 1 and r.get("options", {}).get("labels") in ("dir", "file"):
        how = ("folder" if r["options"]["labels"] == "dir" else "file") + " name"
        w(f"  note: one label ({labels[0]!r}, the {how}): fine for pretraining; a classifier needs two or more "
          "(--labels file: one label per capture file name; --labels dir: ROOT/<label>/*.pcap)")
    if r.get("files_excluded"):
        ex = r["files_excluded"]
        w(f"  excluded by --exclude: {len(ex)} files ({', '.join(ex[:5])}{' ...' if len(ex) > 5 else ''}; all in report.json)")
    if len(r.get("sources", {})) > 1 or r.get("options", {}).get("labels") == "none":
        w("per input:")
        w(f"  {'input':<40}{'files':>7}{'packets':>10}{'used':>10}{'flows':>8}{'samples':>9}")
        for src, v in r["sources"].items():
            w(f"  {src[-40:]:<40}{v['files_read']:>7}{v['packets']:>10}{v['packets_used']:>10}{v['flows']:>8}{v['samples']:>9}")
    t = r.get("timing", {})
    if t:
        w(f"time: {t['total_s']} s ({t['packets_per_s']} packets/s)")
    if r.get("splits_replaced"):
        w(f"  note: splits of an earlier run in {r['out']} not written this time were removed: {', '.join(r['splits_replaced'])}")
    if r.get("not_written"):
        w(f"nothing written: {r['not_written']} (no samples, so no dataset; see flows skipped and packets skipped "
          "above)")
    elif r.get("out") and not r.get("samples_total"):
        w(f"written: {r['out']} (report.json, split_report.json only: no samples, so no dataset; "
          "see flows skipped and packets skipped above)")
    elif r.get("out"):
        w(f"written: {r['out']} (report.json, split_report.json)")
    return "\n".join(lines)

"""Labels for flows: from directory names, file names, or a CSV of 5-tuples (IDS / DPI output).

``--labels dir``        label = name of the directory holding the capture (``root/<label>/x.pcap``).
``--labels file``       label = file name without capture suffixes (``dns.pcap.gz`` → ``dns``).
``--labels none``       no labels: an unlabelled pretraining corpus (the dataset has no ``label`` column).
``--labels csv:PATH``   label per flow from a CSV with a header row. Columns (aliases in brackets):
    ``src_ip`` [``src``, ``saddr``, ``source_ip``], ``src_port`` [``sport``, ``source_port``],
    ``dst_ip`` [``dst``, ``daddr``, ``destination_ip``], ``dst_port`` [``dport``, ``destination_port``],
    ``label`` [``class``, ``category``], optional ``proto`` [``protocol``] (``tcp``/``udp``/6/17),
    optional ``start`` / ``end`` (epoch seconds) restricting the rule to flows that overlap that
    time range (ports are reused, so the same 5-tuple can carry several labels over a day).
    The match is direction-free (either endpoint may be the client). Flows matching no row are
    skipped and counted as ``unlabeled`` in the report; flows matched by rows with different labels
    keep the best match's label and are counted as ``flows_label_ambiguous``.
    The same option reads **Zeek logs**, recognised by their content: ``conn.log`` in Zeek's TSV format
    (``#separator``/``#fields`` header; also labelled logs such as IoT-23's ``conn.log.labeled``, whose
    last fields are separated by runs of spaces) or as JSON lines. Zeek's names are understood
    (``id.orig_h``, ``id.orig_p``, ``id.resp_h``, ``id.resp_p``, ``proto``, ``ts`` + ``duration`` as
    the time range, with 1 ms of slack for the printed precision); ``-`` and ``(empty)`` are unset.
    ``--label-column NAME`` picks the label column in any of the formats (e.g. ``service``, Zeek's DPI
    verdict, or IoT-23's ``detailed-label``). Rows without a label or for a protocol other than TCP/UDP
    are not errors: they are counted by reason (``rows_skipped``); malformed rows count as ``bad_rows``.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import os
import re
from collections import Counter
from datetime import datetime

__all__ = ["label_from_path", "CsvLabels", "LabelCsvError", "parse_labels_option"]

_SUFFIXES = (".gz", ".pcapng", ".pcap", ".cap", ".dmp")

_ALIASES = {
    "src_ip": ("src_ip", "src", "saddr", "source_ip", "srcip", "src ip", "source ip", "id.orig_h"),
    "src_port": ("src_port", "sport", "source_port", "srcport", "src port", "source port", "id.orig_p"),
    "dst_ip": ("dst_ip", "dst", "daddr", "destination_ip", "dstip", "dst ip", "destination ip", "id.resp_h"),
    "dst_port": ("dst_port", "dport", "destination_port", "dstport", "dst port", "destination port", "id.resp_p"),
    "label": ("label", "class", "category"),
    "proto": ("proto", "protocol"),
    "start": ("start", "start_time", "ts_start", "first_seen", "ts"),
    "end": ("end", "end_time", "ts_end", "last_seen"),
    "duration": ("duration",),
}
_UNSET = {"", "-", "(empty)"}  # Zeek's unset and empty field markers (and an empty CSV cell)
_ZEEK_SLACK = 1e-3  # Zeek prints times to the microsecond; a flow's start may differ in the last digit
_PROTO = {"tcp": 6, "6": 6, "udp": 17, "17": 17}


def parse_labels_option(value: str | None):
    """``"dir"`` / ``"file"`` / ``"csv:PATH"`` → ``(mode, path_or_None)``."""
    if value is None or value == "dir":
        return "dir", None
    if value == "file":
        return "file", None
    if value == "none":
        return "none", None
    if value.startswith("csv:") and len(value) > 4:
        return "csv", value[4:]
    raise ValueError(f"--labels must be dir, file, csv:PATH or none (got {value!r})")


def label_from_path(path: str, mode: str) -> str:
    if mode == "none":  # an unlabelled corpus: one internal group for the split, no label column saved
        return ""
    if mode == "dir":
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or "unknown"
    name = os.path.basename(path)
    changed = True
    while changed:
        changed = False
        for s in _SUFFIXES:
            if name.lower().endswith(s) and len(name) > len(s):
                name = name[: -len(s)]
                changed = True
    return name


class LabelCsvError(ValueError):
    """A label CSV that cannot be used at all (missing, unreadable, no header, required columns missing);
    single bad rows are counted instead (``bad_rows``)."""


class CsvLabels:
    """Lookup table built from a label CSV or Zeek log (see module docstring). Picklable (sent to workers)."""

    def __init__(self, path: str, label_column: str | None = None):
        self.path = path
        self.rules: dict = {}
        self.rule_count = 0  # rows that became rules (each has its number: which rows labelled a flow)
        self.rows = 0
        self.bad_rows = 0
        self.rows_skipped: Counter = Counter()  # reason -> rows that label nothing prepare classifies
        try:
            f = open(path, newline="", encoding="utf-8-sig")
        except OSError as e:
            raise LabelCsvError(f"{path}: cannot read the label CSV ({e.strerror})") from None
        with f:
            try:
                first = f.readline()
            except UnicodeDecodeError:
                raise LabelCsvError(f"{path}: not a text file (a label CSV or Zeek log was expected)") from None
            f.seek(0)
            if first.startswith("#separator"):
                self.format, (fields, records) = "zeek", _zeek_tsv(f, path)
            elif first.lstrip().startswith("{"):
                self.format, (fields, records) = "zeek-json", _json_lines(f, path)
            else:
                reader = csv.DictReader(f)
                self.format, fields, records = "csv", reader.fieldnames, reader
            if not fields:
                raise LabelCsvError(f"{path}: empty label CSV")
            col = _columns(fields, label_column, path, self.format)
            self.label_column = col["label"]
            slack = _ZEEK_SLACK if self.format != "csv" else 0.0
            try:
                for row in records:
                    self.rows += 1
                    self._add(row, col, slack)
            except UnicodeDecodeError as e:
                raise LabelCsvError(f"{path}: not UTF-8 text near row {self.rows + 1} ({e.reason})") from None

    def _add(self, row: dict, col: dict, slack: float) -> None:
        def get(key):
            v = row.get(col[key]) if key in col else None
            v = "" if v is None else str(v).strip()
            return None if v in _UNSET else v

        try:
            a = (ipaddress.ip_address(get("src_ip")).packed, _port(get("src_port")))
            b = (ipaddress.ip_address(get("dst_ip")).packed, _port(get("dst_port")))
            start, end, duration = _time(get("start")), _time(get("end")), get("duration")
            if duration is not None and start is not None and end is None:
                end = start + float(duration)
            if start is not None and end is not None and end < start:
                raise ValueError("time range ends before it starts")
        except (ValueError, TypeError):
            self.bad_rows += 1
            return
        label = get("label")
        if label is None:
            self.rows_skipped[f"no label ({col['label']} unset)"] += 1
            return
        proto = None
        if "proto" in col:
            name = (get("proto") or "").lower()
            proto = _PROTO.get(name)
            if proto is None:
                self.rows_skipped[f"protocol {name or 'unset'} (not TCP/UDP)"] += 1
                return
        if slack and start is not None:
            start, end = start - slack, (end if end is not None else start) + slack
        key = (a, b) if a <= b else (b, a)
        self.rules.setdefault(key, []).append((proto, start, end, label, self.rule_count))
        self.rule_count += 1

    def summary(self) -> dict:
        """What the report says about the label file."""
        return {"path": self.path, "format": self.format, "label_column": self.label_column, "rows": self.rows,
                "bad_rows": self.bad_rows, "rows_skipped": dict(self.rows_skipped)}

    def lookup_all(self, proto: int, client, server, start: float, end: float):
        """``(label, labels, rules)``: the flow's label, the labels of every rule as good as the chosen one,
        and the numbers of every rule that matches the flow at all (the report counts rows matching none).
        Rules whose time range holds the flow's start come first; then rules without a range or whose
        range merely overlaps the flow, in file order. More than one label among the rules of the
        winning kind means the CSV contradicts itself for this flow, which prepare counts
        (``flows_label_ambiguous``) instead of choosing silently."""
        key = (client, server) if client <= server else (server, client)
        inside, other, matched = [], [], []
        for p, s, e, label, number in self.rules.get(key, ()):
            if p is not None and p != proto:
                continue
            if s is None and e is None:
                other.append(label)
                matched.append(number)
                continue
            lo = s if s is not None else float("-inf")
            hi = e if e is not None else float("inf")
            if lo <= start <= hi:
                inside.append(label)  # the flow starts inside the rule's range: the best match
                matched.append(number)
            elif start <= hi and end >= lo:
                other.append(label)
                matched.append(number)
        best = inside or other
        return (best[0] if best else None), set(best), matched


def _port(value) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return port


def _columns(fields, label_column, path, fmt) -> dict:
    """Our column name -> the file's, by the aliases (case and surrounding spaces ignored)."""
    lower = {str(h).strip().lower(): h for h in fields}
    col = {}
    for k, names in _ALIASES.items():
        if k == "label" and label_column:
            continue
        for n in names:
            if n in lower:
                col[k] = lower[n]
                break
    if label_column:
        if label_column.strip().lower() not in lower:
            raise LabelCsvError(f"{path}: --label-column {label_column!r} is not a column (columns: {list(fields)})")
        col["label"] = lower[label_column.strip().lower()]
    missing = [k for k in ("src_ip", "src_port", "dst_ip", "dst_port", "label") if k not in col]
    if missing:
        hint = " (choose one with --label-column, e.g. service)" if missing == ["label"] and fmt != "csv" else ""
        raise LabelCsvError(f"{path}: label CSV lacks column(s) {', '.join(missing)} (header: {list(fields)}){hint}")
    return col


def _time(value):
    """Epoch seconds from a number or an ISO 8601 time (Zeek JSON may write either); ``None`` if unset."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _zeek_tsv(f, path):
    """A Zeek TSV log: ``(fields, rows)``; rows are dicts by field name. IoT-23's labelled logs separate
    their last fields by runs of spaces instead of tabs: a line (or the #fields line) with too few
    tab-separated fields is split on those too."""
    separator, fields = "\t", None
    for line in f:
        if line.startswith("#separator"):
            separator = line.split(None, 1)[1].strip().encode().decode("unicode_escape") if " " in line else "\t"
        elif line.startswith("#fields"):
            fields = _split(line.rstrip("\r\n"), separator, None)[1:]
            break
        elif not line.startswith("#"):
            break
    if not fields:
        raise LabelCsvError(f"{path}: a Zeek log without a #fields line")

    def rows():
        for line in f:
            if line.startswith("#") or not line.strip():
                continue  # #close and other comment lines
            parts = _split(line.rstrip("\r\n"), separator, len(fields))
            yield dict(zip(fields, parts)) if len(parts) == len(fields) else {}

    return fields, rows()


def _split(line: str, separator: str, expected):
    parts = line.split(separator)
    if expected is None or len(parts) < expected:
        parts = [x for p in parts for x in re.split(r" {2,}", p)]
    return parts


def _json_lines(f, path):
    """Zeek's JSON logs (one object per line): ``(fields, rows)``; the fields are the first row's keys."""
    first = None

    def parse(line):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return {}
        return obj if isinstance(obj, dict) else {}

    for line in f:
        if line.strip():
            first = parse(line)
            break
    if not first:
        raise LabelCsvError(f"{path}: the first line is not a JSON object")

    def rows():
        yield first
        for line in f:
            if line.strip():
                yield parse(line)

    return list(first), rows()

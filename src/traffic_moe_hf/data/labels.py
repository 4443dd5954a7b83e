"""Labels for flows: from directory names, file names, or a CSV of 5-tuples (IDS / DPI output).

``--labels dir``        label = name of the directory holding the capture (``root/<label>/x.pcap``).
``--labels file``       label = file name without capture suffixes (``dns.pcap.gz`` → ``dns``).
``--labels csv:PATH``   label per flow from a CSV with a header row. Columns (aliases in brackets):
    ``src_ip`` [``src``, ``saddr``, ``source_ip``], ``src_port`` [``sport``, ``source_port``],
    ``dst_ip`` [``dst``, ``daddr``, ``destination_ip``], ``dst_port`` [``dport``, ``destination_port``],
    ``label`` [``class``, ``category``], optional ``proto`` [``protocol``] (``tcp``/``udp``/6/17),
    optional ``start`` / ``end`` (epoch seconds) restricting the rule to flows that overlap that
    time range (ports are reused, so the same 5-tuple can carry several labels over a day).
    The match is direction-free (either endpoint may be the client). Flows matching no row are
    skipped and counted as ``unlabeled`` in the report; flows matched by rows with different labels
    keep the best match's label and are counted as ``flows_label_ambiguous``.
"""

from __future__ import annotations

import csv
import ipaddress
import os

__all__ = ["label_from_path", "CsvLabels", "LabelCsvError", "parse_labels_option"]

_SUFFIXES = (".gz", ".pcapng", ".pcap", ".cap", ".dmp")

_ALIASES = {
    "src_ip": ("src_ip", "src", "saddr", "source_ip", "srcip", "src ip", "source ip"),
    "src_port": ("src_port", "sport", "source_port", "srcport", "src port", "source port"),
    "dst_ip": ("dst_ip", "dst", "daddr", "destination_ip", "dstip", "dst ip", "destination ip"),
    "dst_port": ("dst_port", "dport", "destination_port", "dstport", "dst port", "destination port"),
    "label": ("label", "class", "category"),
    "proto": ("proto", "protocol"),
    "start": ("start", "start_time", "ts_start", "first_seen"),
    "end": ("end", "end_time", "ts_end", "last_seen"),
}
_PROTO = {"tcp": 6, "6": 6, "udp": 17, "17": 17}


def parse_labels_option(value: str | None):
    """``"dir"`` / ``"file"`` / ``"csv:PATH"`` → ``(mode, path_or_None)``."""
    if value is None or value == "dir":
        return "dir", None
    if value == "file":
        return "file", None
    if value.startswith("csv:") and len(value) > 4:
        return "csv", value[4:]
    raise ValueError(f"--labels must be dir, file or csv:PATH (got {value!r})")


def label_from_path(path: str, mode: str) -> str:
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
    """Lookup table built from a label CSV (see module docstring). Picklable (sent to workers)."""

    def __init__(self, path: str):
        self.path = path
        self.rules: dict = {}
        self.rows = 0
        self.bad_rows = 0
        try:
            f = open(path, newline="", encoding="utf-8-sig")
        except OSError as e:
            raise LabelCsvError(f"{path}: cannot read the label CSV ({e.strerror})") from None
        with f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise LabelCsvError(f"{path}: empty label CSV")
            lower = {h.strip().lower(): h for h in reader.fieldnames}
            col = {}
            for k, names in _ALIASES.items():
                for n in names:
                    if n in lower:
                        col[k] = lower[n]
                        break
            missing = [k for k in ("src_ip", "src_port", "dst_ip", "dst_port", "label") if k not in col]
            if missing:
                raise LabelCsvError(f"{path}: label CSV lacks column(s) {', '.join(missing)} (header: {reader.fieldnames})")
            for row in reader:
                self.rows += 1
                try:
                    a = (ipaddress.ip_address(row[col["src_ip"]].strip()).packed, int(row[col["src_port"]]))
                    b = (ipaddress.ip_address(row[col["dst_ip"]].strip()).packed, int(row[col["dst_port"]]))
                    proto = _PROTO.get(row[col["proto"]].strip().lower()) if "proto" in col else None
                    if "proto" in col and proto is None:
                        raise ValueError("protocol")
                    start = float(row[col["start"]]) if "start" in col and row[col["start"]].strip() else None
                    end = float(row[col["end"]]) if "end" in col and row[col["end"]].strip() else None
                    label = row[col["label"]].strip()
                    if not label:
                        raise ValueError("empty label")
                except (ValueError, TypeError, AttributeError):
                    self.bad_rows += 1
                    continue
                key = (a, b) if a <= b else (b, a)
                self.rules.setdefault(key, []).append((proto, start, end, label))

    def lookup(self, proto: int, client, server, start: float, end: float):
        """Label of a flow, or ``None``."""
        return self.lookup_all(proto, client, server, start, end)[0]

    def lookup_all(self, proto: int, client, server, start: float, end: float):
        """``(label, labels)``: the flow's label and the labels of every rule as good as the chosen one.
        Rules whose time range holds the flow's start come first; then rules without a range or whose
        range merely overlaps the flow, in file order. More than one label among the rules of the
        winning kind means the CSV contradicts itself for this flow, which prepare counts
        (``flows_label_ambiguous``) instead of choosing silently."""
        key = (client, server) if client <= server else (server, client)
        inside, other = [], []
        for p, s, e, label in self.rules.get(key, ()):
            if p is not None and p != proto:
                continue
            if s is None and e is None:
                other.append(label)
                continue
            lo = s if s is not None else float("-inf")
            hi = e if e is not None else float("inf")
            if lo <= start <= hi:
                inside.append(label)  # the flow starts inside the rule's range: the best match
            elif start <= hi and end >= lo:
                other.append(label)
        best = inside or other
        return (best[0] if best else None), set(best)

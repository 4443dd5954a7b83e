"""Leakage-safe splits and cross-split duplicate handling.

The unit of splitting is always a *flow* (packet-level samples inherit their flow's split), so one
flow's packets can never sit in two splits.  Modes:

``flow``  stratified random split of flows by label (scikit-learn ``train_test_split`` with
          ``stratify``); labels with too few flows to stratify go to ``train`` (reported).
``file``  all flows of a capture file go to the same split; files are split stratified by their
          majority label where possible.  Labels whose flows all come from one file end up in one
          split only — reported as ``labels_missing`` per split (that is the honest outcome).
``time``  per label, flows ordered by start time: the earliest ``train`` fraction → train, the
          next → validation, the latest → test (no flow of a later period trains the model).
``none``  everything in one ``test`` split (evaluate a trained model on captures from elsewhere).

Duplicates: two samples are identical when their model input is (same anonymised packets, same
directions).  Real captures hold many: a port scan or a flood repeats one exchange thousands of
times, and short deterministic protocols (a psql login, an SMTP session) give identical first
packets in every flow.  Three policies:

``group``  (default for ``--split flow``) flows that share an input are one unit of splitting
           (connected components, :func:`duplicate_groups`), and the units are split stratified by
           label: identical inputs never sit in two splits, nothing is removed, and every class gets
           test samples in proportion to its *distinct* inputs. A group larger than the
           validation/test share of its label (one exchange repeated by a flood, a scan or a
           scripted client) goes to train (``large_groups="train"``, the default): in an
           evaluation split it would be one decision counted many times.
``remove`` (default for ``file``/``time``, whose units are fixed) a sample whose input already
           appears in an earlier split (order train, validation, test) is removed from the later
           split.  With heavy duplication this leaves a class few or no test samples — and only its
           unusual flows — which is why ``flow`` splits group instead.
``report`` keep everything, only report.

Identical inputs carrying different labels are reported as conflicts.
"""

from __future__ import annotations

from collections import Counter, defaultdict

__all__ = ["assign_splits", "check_large_groups", "dedup_across_splits", "duplicate_groups", "LARGE_GROUPS",
           "SPLIT_MODES", "SPLIT_ORDER"]

SPLIT_MODES = ("flow", "file", "time", "none")
LARGE_GROUPS = ("train", "any")
SPLIT_ORDER = ("train", "validation", "test")


def _names(ratios):
    return [n for n, r in zip(SPLIT_ORDER, ratios) if r > 0]


def _stratified(units, labels, ratios, seed, report, unit=None):
    """Return unit -> split name for ``units`` (list) with ``labels`` (parallel list); ``unit``: what a unit
    is, in the report's notes."""
    from sklearn.model_selection import train_test_split

    tr, va, te = ratios
    out = {}
    counts = Counter(labels)
    small = {lab for lab, c in counts.items() if c < 3}
    if small:
        unit = unit or {"file": "capture files", "flow": "flows"}.get(report.get("mode"), "units")
        report.setdefault("notes", []).append(
            f"labels with fewer than 3 {unit} (one per split) put in train only: {sorted(small)}"
            + ("; --split file needs several captures per label, --split flow splits the flows of one capture"
               if report.get("mode") == "file" else ""))
    idx = [i for i, lab in enumerate(labels) if lab not in small]
    for i, lab in enumerate(labels):
        if lab in small:
            out[units[i]] = "train"
    if not idx:
        return out
    ys = [labels[i] for i in idx]

    def split(items, y, frac, seed_):
        if frac <= 0:
            return items, []
        if frac >= 1:
            return [], items
        strat = y if min(Counter(y).values()) >= 2 and len(set(y)) <= len(y) * min(frac, 1 - frac) else None
        try:
            a, b = train_test_split(items, test_size=frac, random_state=seed_, stratify=strat)
        except ValueError:
            a, b = train_test_split(items, test_size=frac, random_state=seed_, stratify=None)
            report.setdefault("notes", []).append("too few units to stratify a split; used a plain random split")
        return a, b

    rest, test = split(idx, ys, te, seed)
    ys_rest = [labels[i] for i in rest]
    train, val = split(rest, ys_rest, va / (tr + va) if tr + va > 0 else 0, seed + 1)
    for i in train:
        out[units[i]] = "train"
    for i in val:
        out[units[i]] = "validation"
    for i in test:
        out[units[i]] = "test"
    return out


def duplicate_groups(flow_of_sample, key_of_sample):
    """Connected components of flows linked by identical sample inputs (union-find).
    Returns ``{flow_id: group_id}`` where ``group_id`` is the smallest flow id of the component,
    so groups do not depend on the order of the samples."""
    parent = {}

    def find(x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    owner = {}
    for flow, key in zip(flow_of_sample, key_of_sample):
        parent.setdefault(flow, flow)
        other = owner.setdefault(key, flow)
        if other != flow:
            a, b = find(flow), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {flow: find(flow) for flow in parent}


def check_large_groups(large_groups):
    if large_groups not in LARGE_GROUPS:
        raise ValueError(f"large_groups must be one of {LARGE_GROUPS}, not {large_groups!r}")


def assign_splits(flow_ids, labels, files, start_times, mode="flow", ratios=(0.8, 0.1, 0.1), seed=0, groups=None,
                  large_groups="train"):
    """Split name for every flow (lists are parallel). Returns ``(splits, report)``.
    ``groups`` (``flow`` mode only): a group id per flow; flows of one group share a split, and the
    groups are split stratified by their most common label. ``large_groups="train"``: a group holding
    more flows than the smaller of the validation/test shares of its label (e.g. more than 10 % of the
    label's flows at 80/10/10) goes to train, so that no evaluation split is dominated by one input
    repeated many times; ``"any"`` treats it like every other group (the behaviour before
    2026-11-29)."""
    check_large_groups(large_groups)
    report = {"mode": mode, "ratios": dict(zip(SPLIT_ORDER, ratios)), "seed": seed}
    n = len(flow_ids)
    if mode == "none":
        return ["test"] * n, report
    if n == 0:
        return [], report
    if mode == "flow" and groups is not None:
        members = defaultdict(Counter)
        for g, lab in zip(groups, labels):
            members[g][lab] += 1
        units = sorted(members)
        major = {g: members[g].most_common(1)[0][0] for g in units}
        forced = {}
        shares = [r for r in ratios[1:] if r > 0]
        if large_groups == "train" and shares:
            per_label = Counter(labels)
            for g in units:
                size = sum(members[g].values())
                if size > 1 and size > min(shares) * per_label[major[g]]:
                    forced[g] = "train"
        rest = [g for g in units if g not in forced]
        m = _stratified(rest, [major[g] for g in rest], ratios, seed, report,
                        unit="distinct inputs (groups of flows with identical model input, large ones aside)")
        m.update(forced)
        splits = [m[g] for g in groups]
        sizes = Counter(sum(members[g].values()) for g in units)
        report["groups"] = {"units": len(units), "flows": n, "largest": max(sizes) if sizes else 0,
                            "flows_in_groups_of_2_or_more": sum(k * v for k, v in sizes.items() if k > 1),
                            "large_groups": large_groups}
        if forced:
            big = defaultdict(lambda: {"groups": 0, "flows": 0})
            for g in forced:
                big[major[g]]["groups"] += 1
                big[major[g]]["flows"] += sum(members[g].values())
            report["groups"]["large_groups_to_train"] = dict(sorted(big.items()))
    elif mode == "flow":
        m = _stratified(list(range(n)), list(labels), ratios, seed, report)
        splits = [m[i] for i in range(n)]
    elif mode == "file":
        by_file = defaultdict(Counter)
        for f, lab in zip(files, labels):
            by_file[f][lab] += 1
        fl = sorted(by_file)
        flabels = [by_file[f].most_common(1)[0][0] for f in fl]
        m = _stratified(fl, flabels, ratios, seed, report)
        splits = [m[f] for f in files]
        report["files"] = {s: sorted(f for f in fl if m[f] == s) for s in _names(ratios)}
    elif mode == "time":
        splits = [None] * n
        by_label = defaultdict(list)
        for i, lab in enumerate(labels):
            by_label[lab].append(i)
        cuts = {}
        tr, va, _te = ratios
        for lab, idx in by_label.items():
            idx.sort(key=lambda i: (start_times[i], flow_ids[i]))
            k = len(idx)
            a = round(k * tr)
            b = round(k * (tr + va))
            for j, i in enumerate(idx):
                splits[i] = "train" if j < a else ("validation" if j < b else "test")
            cuts[lab] = {
                "train_until": start_times[idx[a - 1]] if a > 0 else None,
                "test_from": start_times[idx[b]] if b < k else None,
            }
        report["time_cuts"] = cuts
    else:
        raise ValueError(f"unknown split mode {mode!r}")
    missing = labels_missing(splits, labels, ratios)
    if missing:
        report["labels_missing"] = missing
    return splits, report


def labels_missing(splits, labels, ratios, keep=None) -> dict:
    """{split: [labels with no sample in it]} over the splits ``ratios`` gives a share, counting only the samples
    ``keep`` marks (all by default): after :func:`dedup_across_splits` a split can lose every sample of a label."""
    present = defaultdict(set)
    for i, (s, lab) in enumerate(zip(splits, labels)):
        if keep is None or keep[i]:
            present[s].add(lab)
    all_labels = set(labels)
    return {s: sorted(all_labels - present[s]) for s in _names(ratios) if all_labels - present[s]}


def dedup_across_splits(keys, splits, labels, policy="remove"):
    """``keys``: hashable model-input key per sample. Returns ``(keep_mask, report)``."""
    first_split = {}
    first_label = {}
    keep = [True] * len(keys)
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    within = Counter()
    cross = defaultdict(Counter)
    conflicts = 0
    seen_in = defaultdict(set)
    # process in split order so the earliest split keeps the sample
    idx = sorted(range(len(keys)), key=lambda i: order.get(splits[i], 9))
    for i in idx:
        k, s = keys[i], splits[i]
        if k in first_split:
            if first_label[k] != labels[i]:
                conflicts += 1
            if s in seen_in[k]:
                within[s] += 1
            if first_split[k] != s:
                cross[s][labels[i]] += 1
                if policy == "remove":
                    keep[i] = False
                    continue
        else:
            first_split[k] = s
            first_label[k] = labels[i]
        seen_in[k].add(s)
    rep = {
        "policy": policy,
        "cross_split_duplicates": {s: dict(c) for s, c in cross.items()},
        "cross_split_duplicates_total": sum(sum(c.values()) for c in cross.values()),
        "removed": sum(1 for k in keep if not k),
        "within_split_duplicates": dict(within),
        "label_conflicts": conflicts,
    }
    return keep, rep

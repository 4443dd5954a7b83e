"""Why attack10 stays below 0.93 macro-F1 with all data on the default split, for every learner.

Two checks on a prepared attack10 dataset (`prepare --large-groups train`, the default):
1. the classic forest (8 packets x direction, IP length, TCP flags, 32 payload bytes) with and without timing
   features (log inter-arrival time of each of the 8 packets, flow duration, packet count): does timing, which
   the model input lacks, lift the ceiling?
2. the largest group of identical HTTP-flood test inputs: its packets, whether the same input occurs in the
   train or validation split, and what the port-scan class's training flows look like.

    python benchmarks/accuracy/attack10_ceiling.py runs/sess-64/data/attack10-full
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from traffic_moe_hf.recipes.baselines import PACKETS, dataset_features  # noqa: E402
from traffic_moe_hf.recipes.common import classification_metrics, label_names, load_prepared  # noqa: E402


def timing_features(split, packets: int = PACKETS) -> np.ndarray:
    rows = []
    for times, count, start, end in zip(split["timestamps"], split["packet_count"], split["start_time"], split["end_time"]):
        row = np.zeros(packets + 2, dtype=np.float32)
        gaps = np.diff(np.asarray(times[:packets], dtype=np.float64), prepend=0.0)
        row[: len(gaps)] = np.log10(gaps * 1e6 + 1)
        row[packets] = np.log10((end - start) * 1e6 + 1)
        row[packets + 1] = np.log10(count)
        rows.append(row)
    return np.stack(rows)


def main(path: str) -> None:
    from sklearn.ensemble import RandomForestClassifier

    data = load_prepared(path)
    train, test = data["train"], data["test"]
    names = label_names(train)
    plain_train, plain_test = dataset_features(train), dataset_features(test)
    for title, x_train, x_test in (
        ("forest, sizes/flags/payload", plain_train, plain_test),
        ("forest, + timing", np.hstack([plain_train, timing_features(train)]), np.hstack([plain_test, timing_features(test)])),
    ):
        forest = RandomForestClassifier(n_estimators=200, random_state=0, n_jobs=2).fit(x_train, train["label"])
        m = classification_metrics(np.asarray(test["label"]), forest.predict(x_test), names)
        below = {k: round(v["f1"], 2) for k, v in m["per_class"].items() if v["f1"] < 0.995}
        print(f"{title}: macro-F1 {m['macro_f1']:.3f}; classes below 0.995 F1: {below}")

    flood, scan = names.index("dos-httpflood"), names.index("portscan")
    groups = collections.Counter(tuple(r["input_ids"]) for r in test if r["label"] == flood)
    key, size = groups.most_common(1)[0]
    row = next(r for r in test if tuple(r["input_ids"]) == key)
    print(f"largest group of identical dos-httpflood test inputs: {size} flows; directions {row['directions']}, "
          f"IP lengths {row['ip_lengths']}")
    for split in ("train", "validation"):
        same = collections.Counter(names[r["label"]] for r in data[split] if tuple(r["input_ids"]) == key)
        print(f"  the same input in {split}: {dict(same) or 'none'}")
    print(f"portscan test flows: {sum(1 for label in test['label'] if label == scan)}")
    shapes = collections.Counter((tuple(r["directions"]), tuple(r["ip_lengths"])) for r in train if r["label"] == scan)
    print("portscan training flows, most common (directions, IP lengths):", shapes.most_common(3))


if __name__ == "__main__":
    main(sys.argv[1])

"""The classic baseline every table shows beside the models: a random forest (scikit-learn) on the
first packets' direction, IP length, TCP flags and first payload bytes — the recipe that already
scores near 1.0 on these tasks with all training data, so full-data accuracy is table stakes."""

from __future__ import annotations

import numpy as np

PACKETS = 8
PAYLOAD_BYTES = 32


def flow_features(packets, directions, ip_lengths, num_packets: int = PACKETS, payload_bytes: int = PAYLOAD_BYTES):
    """Per packet (first `num_packets`, zero-filled): direction (+1/-1), IP length, TCP flags, and the
    first `payload_bytes` payload bytes available in the stored (anonymised, cut) packet."""
    from ..data.decode import Decoded, parse_ip
    from ..data.headers import payload_start

    width = 3 + payload_bytes
    row = np.zeros(num_packets * width, dtype=np.float32)
    for i, packet in enumerate(packets[:num_packets]):
        base = i * width
        row[base] = 1.0 if directions[i] == 0 else -1.0
        row[base + 1] = ip_lengths[i]
        decoded = parse_ip(bytes(packet))
        if type(decoded) is Decoded:
            row[base + 2] = decoded.flags
            header = payload_start(packet, decoded.l4, decoded.proto)
            payload = np.frombuffer(bytes(packet[header : header + payload_bytes]), dtype=np.uint8)
            row[base + 3 : base + 3 + len(payload)] = payload
    return row


def dataset_features(dataset, payload_bytes: int = PAYLOAD_BYTES, num_packets: int = PACKETS) -> np.ndarray:
    """Feature rows of a prepared split, or of any mapping with ``packets``/``directions``/``ip_lengths`` lists."""
    rows = [flow_features(p, d, l, num_packets=num_packets, payload_bytes=payload_bytes)
            for p, d, l in zip(dataset["packets"], dataset["directions"], dataset["ip_lengths"])]
    return np.stack(rows) if rows else np.zeros((0, num_packets * (3 + payload_bytes)), dtype=np.float32)


def random_forest(train, evaluated, names: list[str], labels_train=None, labels_eval=None, seed: int = 0,
                  payload_bytes: int = PAYLOAD_BYTES) -> dict:
    """Fit on `train`, score on `evaluated` (datasets from `prepare`). Label arrays may be passed
    when they need mapping (e.g. a dataset prepared separately)."""
    from sklearn.ensemble import RandomForestClassifier

    from .common import classification_metrics

    y_train = np.asarray(train["label"]) if labels_train is None else labels_train
    y_eval = np.asarray(evaluated["label"]) if labels_eval is None else labels_eval
    forest = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    forest.fit(dataset_features(train, payload_bytes), y_train)
    return classification_metrics(y_eval, forest.predict(dataset_features(evaluated, payload_bytes)), names)

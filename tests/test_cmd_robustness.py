"""`traffic-moe robustness`: the evaluated subset (`--max-samples`). The attacks and the command end to end
are tested in test_robustness.py.

The shared fixtures (``prepared``: the demo slice prepared once; ``pretrained`` and ``finetuned``: a tiny
model pretrained and fine-tuned on it once per session) are in conftest.py.
"""

from __future__ import annotations


def test_balanced_subset_covers_every_class(prepared):
    """`robustness --max-samples N` evaluates on N flows covering the classes evenly (was the split's first N
    rows: a split is sorted by label, so 3 meant 3 flows of one class scored 1.000)."""
    from datasets import load_from_disk

    from traffic_moe_hf.recipes.common import balanced_subset

    test = load_from_disk(str(prepared))["test"]
    classes = len(set(test["label"]))
    assert len(set(test.select(range(9))["label"])) < classes  # the old way: the first rows
    subset = balanced_subset(test, 9, seed=0)
    assert len(subset) == 9 and len(set(subset["label"])) == min(9, classes)
    assert balanced_subset(test, 9, seed=0)["flow_id"] == subset["flow_id"] != balanced_subset(test, 9, seed=1)["flow_id"]
    assert len(balanced_subset(test, 10**6, seed=0)) == len(test)

"""Traffic shaping: seeded transforms of prepared flows (padding, splitting, chaff, size normalisation, header
changes), re-anonymised and re-tokenized as ``traffic-moe prepare`` would (:mod:`.attacks`), and shaped copies
drawn for training (:mod:`.augment`: adversarial fine-tuning's augmentation, contrastive pretraining's views).

A layer below training: it reads prepared datasets (:mod:`traffic_moe_hf.data`) and needs neither torch nor the
model. What does need a model (white-box HotFlip, embedding PGD, the adversarial Trainer, the
``traffic-moe robustness`` command) is in :mod:`traffic_moe_hf.recipes`. Kept light: import the sub-modules.
"""

__all__ = ["attacks", "augment"]

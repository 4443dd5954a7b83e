"""Old import paths, kept so scripts written against them still run; new code imports the new homes.

* ``robustness.attacks``     → :mod:`traffic_moe_hf.shaping.attacks` (+ ``dataset_options`` / ``dataset_level``
  from :mod:`traffic_moe_hf.data.prepared`)
* ``robustness.adversarial`` → :mod:`traffic_moe_hf.shaping.augment` (shaped copies) and
  :mod:`traffic_moe_hf.recipes.adversarial` (embedding PGD, the adversarial Trainer)
* ``robustness.whitebox``    → :mod:`traffic_moe_hf.recipes.whitebox`
* ``robustness.cli``         → :mod:`traffic_moe_hf.recipes.robustness` (the ``traffic-moe robustness`` command)

Nothing in the package imports these aliases (``tests/test_architecture.py`` checks it); see docs/architecture.md.
"""

__all__ = ["attacks", "whitebox", "adversarial", "cli"]

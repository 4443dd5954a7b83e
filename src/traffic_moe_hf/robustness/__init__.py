"""Robustness to adversarial traffic shaping (issue 6): shaping attacks on flows
(:mod:`.attacks`), white-box attacks (:mod:`.whitebox`), adversarial training (:mod:`.adversarial`)
and the ``traffic-moe robustness`` report (:mod:`.cli`). Kept light: import the sub-modules."""

__all__ = ["attacks", "whitebox", "adversarial", "cli"]

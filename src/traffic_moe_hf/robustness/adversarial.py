"""Alias of :mod:`traffic_moe_hf.shaping.augment` and :mod:`traffic_moe_hf.recipes.adversarial`."""

from ..recipes.adversarial import *  # noqa: F401,F403
from ..shaping.augment import *  # noqa: F401,F403

"""Alias of :mod:`traffic_moe_hf.recipes.whitebox`."""

from ..recipes.whitebox import *  # noqa: F401,F403
from ..recipes.whitebox import BYTE_OFFSET, confidence  # noqa: F401

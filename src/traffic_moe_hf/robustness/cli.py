"""Alias of :mod:`traffic_moe_hf.recipes.robustness` (the ``traffic-moe robustness`` command)."""

from ..recipes.robustness import *  # noqa: F401,F403
from ..recipes.robustness import (  # noqa: F401
    WHITEBOX_BUDGETS, add_parser, check_plan, evaluate_model, markdown_table, plot, robustness, run,
)

"""Fine-tuning strategies: which stages train, at what learning rate, and the BN policy.

The grid (docs/design.md): little + similar data -> ``linear``; large + similar ->
``partial``; large + different -> ``full``; ``lp-ft`` and ``surgical`` start with a linear
probe. ``auto`` is resolved into one of these by the recommender before planning.

A strategy is one file that registers a ``StrategySpec`` (registry.py); importing it here
is what makes ``finetune run --strategy``, the recommender and the tests see it.
"""

from __future__ import annotations

from ..config import RunConfig
from ..models import Backbone

# Each module registers its spec; this order is the order `finetune run --help` lists them.
from . import linear, partial, full, lp_ft, surgical  # noqa: F401  # isort: skip
from .phase import Phase
from .registry import (
    AUTO,
    Default,
    EpochCost,
    Planning,
    StrategySpec,
    check_strategy,
    get_strategy,
    register,
    strategy_names,
)


def plan(cfg: RunConfig, model: Backbone) -> list[Phase]:
    """The phases of ``cfg.strategy`` for ``model``, with defaults filled in."""
    return get_strategy(cfg.strategy).build(cfg, model)


__all__ = ["AUTO", "Default", "EpochCost", "Phase", "Planning", "StrategySpec", "check_strategy",
           "get_strategy", "plan", "register", "strategy_names"]

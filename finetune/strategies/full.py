"""``full``: every stage and the head train (large data, far from the pretraining)."""

from __future__ import annotations

from ..config import RunConfig
from ..models import Backbone
from .phase import Phase
from .registry import Default, EpochCost, Planning, StrategySpec, register


def _phases(cfg: RunConfig, model: Backbone) -> list[Phase]:
    return [FULL.phase(cfg, "full", unfreeze="all", epochs=cfg.epochs)]


FULL = register(StrategySpec(
    name="full",
    summary="everything",
    build=_phases,
    defaults={
        "epochs": Default(15, "everything moves: more epochs than partial"),
        "lr": Default(1e-3, "a new head at 1e-3; backbone stages 10x less, each earlier one less again"),
        "warmup_epochs": Default(1.0, "one epoch of warm-up while the new head stops being random"),
        "augment": Default("medium", "everything moves: stronger augmentation against over-fitting"),
    },
    trains="all",
    planning=Planning(
        target_steps=300,  # about what AdamW with a cosine schedule takes to settle a backbone
        epoch_limits=(5, 30),  # no hundreds of epochs on tiny sets, no single pass on large ones
        lr=1e-3,
        lr_reason="new head at 1e-3; pretrained stages move 10x slower, each earlier one 0.7x again",
    ),
    cost=EpochCost(fixed=3.0, per_share=0.0),  # forward, and a backward twice as expensive
))

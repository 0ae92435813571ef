"""``partial``: the last stages and the head train (large data, similar to the pretraining)."""

from __future__ import annotations

from ..config import RunConfig
from ..models import Backbone
from .phase import Phase
from .registry import Default, EpochCost, Planning, StrategySpec, register


def _phases(cfg: RunConfig, model: Backbone) -> list[Phase]:
    # Without --unfreeze, the backbone's own choice (Backbone.default_unfreeze).
    k = cfg.unfreeze if cfg.unfreeze is not None else model.default_unfreeze
    return [PARTIAL.phase(cfg, "partial", unfreeze=k, epochs=cfg.epochs)]


PARTIAL = register(StrategySpec(
    name="partial",
    summary="last stages",
    build=_phases,
    defaults={
        "epochs": Default(10, "a few stages adapt from pretrained weights: fewer epochs than full"),
        "lr": Default(1e-3, "a few stages adapt: a moderate rate, the stages 10x less again"),
        "warmup_epochs": Default(1.0, "one epoch of warm-up while the new head stops being random"),
        "augment": Default("light", "only the last stages move: crops and flips are enough"),
    },
    trains="last",
    planning=Planning(
        target_steps=300,  # about what AdamW with a cosine schedule takes to settle a backbone
        epoch_limits=(5, 30),  # no hundreds of epochs on tiny sets, no single pass on large ones
        lr=1e-3,
        lr_reason="new head at 1e-3; pretrained stages move 10x slower, each earlier one 0.7x again",
    ),
    # The forward pass, and a backward pass twice as expensive through the stages that train.
    cost=EpochCost(fixed=1.0, per_share=2.0),
))

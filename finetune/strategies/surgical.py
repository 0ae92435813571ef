"""``surgical``: a linear probe, then the *first* stages and the head train, for input-level
shift (blur, noise, colour) that is best undone where it enters (Lee et al., 2022)."""

from __future__ import annotations

from ..config import RunConfig
from ..models import Backbone
from .linear import leading_probe
from .phase import Phase
from .registry import Default, EpochCost, Planning, StrategySpec, register


def _phases(cfg: RunConfig, model: Backbone) -> list[Phase]:
    # The head trains on frozen features first, so that the first stages adapt to the data
    # rather than to a random head.
    k = cfg.unfreeze if cfg.unfreeze is not None else SURGICAL.defaults["unfreeze"].value
    return [leading_probe(cfg),
            SURGICAL.phase(cfg, "surgical", unfreeze=k, epochs=cfg.epochs, from_input=True,
                           bn_eval=True)]


def _bn_policy(unfreeze: int | None, signals: dict, batch_size: int) -> str:
    return (f"the first {unfreeze} stage(s) train with BatchNorm in eval mode, as every other "
            f"stage: the checkpoint's statistics (early AdaBN would remove "
            f"{signals['shift_pixel']:.2f} of the later stages' shift; the weights adapt instead)")


SURGICAL = register(StrategySpec(
    name="surgical",
    summary="linear probe, then the first stages",
    build=_phases,
    defaults={
        "epochs": Default(10, "as partial: a few stages adapt, here from a trained head"),
        "lr": Default(1e-3, "a moderate rate for the head; the first stages 10x less"),
        "warmup_epochs": Default(1.0, "one epoch of warm-up, as partial"),
        "augment": Default("medium", "the first stages move: varied pixels keep them from fitting the few seen"),
        "unfreeze": Default(2, "the stem and the first stage, where pixel statistics live"),
    },
    trains="first",
    planning=Planning(
        target_steps=300,  # about what AdamW with a cosine schedule takes to settle a backbone
        epoch_limits=(5, 30),  # no hundreds of epochs on tiny sets, no single pass on large ones
        lr=1e-3,
        lr_reason="the head is trained first (probe phase); the first stages then adapt at 10x less",
        bn_policy=_bn_policy,
    ),
    # The gradient crosses every stage back to the first ones; weights update where they train.
    cost=EpochCost(fixed=2.0, per_share=1.0),
    probe_first=True,
))

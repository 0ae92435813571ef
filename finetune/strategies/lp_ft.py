"""``lp-ft``: a linear probe on frozen features, then everything fine-tunes from its head,
which keeps early steps from distorting good pretrained features with a random head
(Kumar et al., 2022)."""

from __future__ import annotations

from ..config import RunConfig
from ..models import Backbone
from .linear import leading_probe
from .phase import Phase
from .registry import Default, EpochCost, Planning, StrategySpec, register


def _phases(cfg: RunConfig, model: Backbone) -> list[Phase]:
    # bn_eval: the fine-tuning keeps the statistics the probe's head was fitted under.
    return [leading_probe(cfg),
            LP_FT.phase(cfg, "full", unfreeze="all", epochs=cfg.epochs, bn_eval=True)]


def _bn_policy(unfreeze: int | None, signals: dict, batch_size: int) -> str:
    return ("every stage trains with BatchNorm in eval mode: the checkpoint's statistics, "
            "under which the probe's head was fitted, and no dropout")


LP_FT = register(StrategySpec(
    name="lp-ft",
    summary="linear probe, then full",
    build=_phases,
    # The fine-tuning phase's; the probe keeps `linear`'s.
    defaults={
        "epochs": Default(15, "the fine-tuning phase runs as `full` does"),
        "lr": Default(1e-3, "as `full`; `finetune recommend` plans a lower 3e-4 (planning below)"),
        "warmup_epochs": Default(1.0, "one epoch of warm-up, as `full`"),
        "augment": Default("medium", "everything moves: stronger augmentation against over-fitting"),
    },
    trains="all",
    planning=Planning(
        target_steps=200,  # fewer than full's 300: the head starts trained
        epoch_limits=(3, 20),  # below full's (5, 30): the fine-tuning starts from a trained head
        lr=3e-4,
        lr_reason="the head starts trained, so fine-tuning takes small steps that keep the features "
                  "(Kumar et al. 2022 fine-tune after the probe at a lower rate)",
        bn_policy=_bn_policy,
    ),
    cost=EpochCost(fixed=3.0, per_share=0.0),  # as full; the probe costs one feature extraction
    probe_first=True,
))

"""``linear``: a new head on the frozen network's features (little data, similar to the
pretraining). Its phase is also the probe that two-phase strategies run first."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..config import RunConfig
from ..models import Backbone
from .phase import Phase
from .registry import Default, Planning, StrategySpec, get_strategy, register

log = logging.getLogger("finetune")


def probe_phase(cfg: RunConfig, *, epochs: int | None) -> Phase:
    """A linear head on the frozen network, on cached features unless --no-feature-cache."""
    cached = cfg.feature_cache
    augment = cfg.augment
    if augment == "auto":
        # Uncached, the backbone runs every epoch anyway: use it for light augmentation.
        augment = LINEAR.defaults["augment"].value if cached else "light"
    if cached and augment != "none":
        log.warning("Cached features see no augmentation; augment=%s is ignored "
                    "(use --no-feature-cache to augment a linear probe).", augment)
        augment = "none"
    return LINEAR.phase(cfg, "linear", unfreeze=0, epochs=epochs, augment=augment,
                        feature_cache=cached)


def leading_probe(cfg: RunConfig) -> Phase:
    """The probe a two-phase strategy starts with: ``--lp-epochs`` epochs at this strategy's
    own lr (``--lr`` sets the phase after it), so that phase starts from a trained head."""
    return replace(probe_phase(cfg, epochs=cfg.lp_epochs), lr=LINEAR.defaults["lr"].value)


def head_fit_for(cfg: RunConfig) -> str:
    """How a cached-feature phase of ``cfg`` fits its head: ``--head-fit``, else the
    strategy's own default, else ``sgd`` (the probe that lp-ft and surgical fine-tune from
    is the AdamW head their recipes were tuned with)."""
    if cfg.head_fit is not None:
        return cfg.head_fit
    default = get_strategy(cfg.strategy).defaults.get("head_fit")
    return default.value if default is not None else "sgd"


def _phases(cfg: RunConfig, model: Backbone) -> list[Phase]:
    return [probe_phase(cfg, epochs=cfg.epochs)]


LINEAR = register(StrategySpec(
    name="linear",
    summary="head on frozen features",
    build=_phases,
    defaults={
        "epochs": Default(30, "a linear head on cached features is cheap per epoch: train it long"),
        "lr": Default(1e-2, "a linear head over frozen features tolerates a high rate"),
        "warmup_epochs": Default(0.0, "a convex problem on fixed features needs no warm-up"),
        "augment": Default("none", "cached features are computed once, without augmentation"),
        "head_fit": Default("lbfgs", "logistic regression, C by 5-fold cross-validation over "
                                     "train + val, refit on train + val: on 11 built-in tasks never "
                                     "below scikit-learn's LogisticRegressionCV, once one test image "
                                     "below its LogisticRegression(), seconds to fit "
                                     "(benchmarks/linear_vs_logreg.py)"),
    },
    trains="none",
    planning=Planning(
        target_steps=300,  # about what AdamW with a cosine schedule takes to settle a head
        epoch_limits=(30, 100),  # epochs on cached features cost seconds
        lr=1e-2,
        lr_reason="AdamW on a linear head over frozen features tolerates a high rate",
    ),
    cost=None,
))

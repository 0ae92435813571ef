"""The recommendation's second half: the hyperparameters of a strategy with their
reasons, and its wall time here (``timing``: measured inference and training speed at
the image size, times the planned images and epochs, plus feature extraction)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import RunConfig
from ..models import Backbone
from ..strategies import StrategySpec, get_strategy
from .decide import Decision
from .timing import Speed, estimate_seconds

# A head on cached features: the probe phase that strategies with probe_first start with.
_HEAD_ONLY = "linear"


@dataclass
class Plan:
    strategy: str
    hyperparameters: dict[str, dict[str, Any]]  # name -> {"value", "reason"}
    estimated_minutes: float | None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _hp(value: Any, reason: str) -> dict[str, Any]:
    return {"value": value, "reason": reason}


def _epochs(spec: StrategySpec, n_train: int, batch_size: int) -> int:
    """About the spec's target optimizer steps, within its epoch limits."""
    steps = max(1, n_train // batch_size if n_train > batch_size else 1)
    low, high = spec.planning.epoch_limits
    return int(min(high, max(low, math.ceil(spec.planning.target_steps / steps))))


def _stage_lrs(spec: StrategySpec, unfreeze: int | None, lr: float, names: list[str]) -> str:
    cfg = RunConfig()
    if spec.trains == "none":
        return f"head {lr:g}; backbone frozen"
    trained = {"last": names[len(names) - (unfreeze or 1):], "first": names[: unfreeze or 1],
               "all": names}[spec.trains]
    parts = [f"head {lr:g}"]
    for depth, name in enumerate(reversed(trained)):
        parts.append(f"{name} {lr * cfg.backbone_lr_scale * cfg.layer_decay**depth:.2g}")
    return ", ".join(parts)


def plan_hyperparameters(decision: Decision, signals: dict, amount: dict, *, model: Backbone,
                         image_size: int, batch_size: int, speed: Speed,
                         epochs: int | None = None, size_reason: str | None = None) -> Plan:
    """The hyperparameters of ``decision``'s strategy with their reasons, and its wall time
    here; ``epochs`` replaces the planned number (a budget's cut)."""
    names = [s["name"] for s in signals["stages"]]
    n_train = amount["train_images"]
    strategy, unfreeze = decision.strategy, decision.unfreeze
    plan = Plan(strategy=strategy, hyperparameters={}, estimated_minutes=None)
    planned = _epochs(get_strategy(strategy), n_train, batch_size)
    epochs = planned if epochs is None else epochs
    seconds = estimate_seconds(strategy, unfreeze, epochs, amount=amount, num_stages=len(names),
                               speed=speed)
    plan.estimated_minutes = round(seconds / 60, 2)

    spec, hp = get_strategy(strategy), plan.hyperparameters
    steps = max(1, n_train // batch_size if n_train > batch_size else 1)
    if unfreeze is not None and spec.trains in ("last", "first"):
        shown = names[-unfreeze:] if spec.trains == "last" else names[:unfreeze]
        hp["unfreeze"] = _hp(unfreeze, f"the {spec.trains} {unfreeze} of {len(names)} stages train "
                             f"({', '.join(shown)}); "
                             + decision.reasons[-1])
    if spec.probe_first:
        lp = _epochs(get_strategy(_HEAD_ONLY), n_train, batch_size)
        hp["lp_epochs"] = _hp(lp, f"the linear-probe phase runs on cached features, so {lp} epochs "
                              f"(about {lp * steps} steps) cost seconds; its head starts the next phase")
    head_fit = spec.defaults.get("head_fit")
    if head_fit is not None and head_fit.value == "lbfgs":
        # A logistic regression fit to convergence: no epochs or learning rate to plan.
        hp["head_fit"] = _hp("lbfgs", head_fit.reason)
    else:
        low, high = spec.planning.epoch_limits
        hp["epochs"] = _hp(epochs, f"about {spec.planning.target_steps} optimizer steps at {steps} "
                           f"step(s) per epoch ({n_train} training images, batch {batch_size}), within "
                           f"{low}-{high} epochs"
                           + (f"; cut from {planned} to fit the budget" if epochs < planned else ""))
        lr = spec.planning.lr
        hp["lr"] = _hp(lr, f"{spec.planning.lr_reason}. Per group: {_stage_lrs(spec, unfreeze, lr, names)}")
    hp["augment"] = _hp(*_augment(spec, decision, unfreeze))
    hp["image_size"] = _hp(image_size, size_reason or _image_size_reason(model, image_size, amount))
    hp["bn_policy"] = _hp(_bn_policy(spec, unfreeze, signals, batch_size),
                          "docs/design.md's BatchNorm policy")
    return plan


def _augment(spec: StrategySpec, decision: Decision, unfreeze: int | None) -> tuple[str, str]:
    if spec.trains == "none":
        return "none", "cached features are computed once, without augmentation"
    if decision.amount == "little":
        return "strong", ("little data: strong crops, colour, blur/noise and dropout "
                          "stretch the few images (docs/design.md's little-data cells)")
    if spec.trains == "last":
        return "light", f"large data, and only the last {unfreeze} stage(s) train: crops and flips are enough"
    # Large data, and more of the network moves than the last stages: the first ones, or all.
    what = ("far from the pretraining" if decision.similarity == "different"
            else "and the first stages train" if spec.trains == "first" else "and the whole network trains")
    return "medium", f"large data {what}: crops, flips, colour jitter, small affine"


def _image_size_reason(model: Backbone, image_size: int, amount: dict) -> str:
    side = min(amount.get("median_width") or image_size, amount.get("median_height") or image_size)
    reason = f"the backbone's pretrained input size ({model.pretrained_cfg.image_size} px)"
    if image_size != model.pretrained_cfg.image_size:
        reason = f"as asked (the pretrained size is {model.pretrained_cfg.image_size} px)"
    if side and side < image_size / 2:
        reason += (f"; your images are about {side:.0f} px, upscaled x{image_size / side:.1f}: "
                   f"a smaller --image-size trains faster, the pretrained size usually scores higher")
    return reason


def _bn_policy(spec: StrategySpec, unfreeze: int | None, signals: dict, batch_size: int) -> str:
    if not signals["has_batchnorm"]:
        return "no BatchNorm layers with stored statistics in this backbone"
    if spec.planning.bn_policy is not None:
        return spec.planning.bn_policy(unfreeze, signals, batch_size)
    if spec.trains == "none":
        return "frozen: eval mode, the checkpoint's statistics (the probe above used them too)"
    if spec.trains in ("last", "first"):
        return (f"the {spec.trains} {unfreeze} stage(s) re-estimate their statistics while training; "
                f"frozen stages keep the checkpoint's, in eval mode")
    small = " (batch under 16: noisy batch statistics, raise --batch-size if memory allows)" if batch_size < 16 else ""
    return f"every stage trains, BatchNorm with batch statistics of batch {batch_size}{small}"

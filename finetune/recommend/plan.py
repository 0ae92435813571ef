"""The recommendation's second half: hyperparameters with their reasons, a training-time
estimate and the ``--budget``.

The time estimate comes from the forward speed measured while computing the signals, on
this machine, at the chosen image size: one training image costs about three forward
passes when everything trains (forward, and a backward twice as expensive), fewer when
gradients stop at a frozen stage; evaluation and feature extraction cost one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import RunConfig
from ..models import Backbone
from ..strategies import StrategySpec, get_strategy
from .decide import Decision

# A head on cached features: the cheapest strategy, the budget's last resort, and the
# probe phase that strategies with probe_first start with.
_HEAD_ONLY = "linear"
_MIN_EPOCHS = 3  # below this a budget cut would stop before the cosine schedule does anything
_OVERHEAD = 1.3  # decoding, augmentation and the optimizer step, over the bare passes


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


def estimate_minutes(strategy: str, unfreeze: int | None, epochs: int, *, amount: dict,
                     num_stages: int, forward_ms: float) -> float:
    """Rough wall-clock minutes of ``finetune run`` with this plan on this machine."""
    spec = get_strategy(strategy)
    n_train, n_val = amount["train_images"], amount["val_images"]
    n_all = n_train + n_val + amount["test_images"]
    share = (unfreeze or num_stages) / max(1, num_stages)
    total = 0.0
    if spec.cost is None or spec.probe_first:
        total += n_all  # features extracted once for the (first) linear phase
    if spec.cost is not None:
        total += epochs * (n_train * spec.cost.passes(share) + n_val) + amount["test_images"]
    return total * forward_ms * _OVERHEAD / 60_000


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


def _fit_budget(plan: Plan, budget: float, cost: Callable[[str, int | None, int], float],
                epochs_of: Callable[[StrategySpec], int], unfreeze: int | None, epochs: int,
                default_unfreeze: int) -> tuple[str, int | None, int]:
    """Fewer epochs first, then cheaper strategies: the spec's fallbacks, then a linear head."""
    strategy = plan.strategy
    chain = [(strategy, unfreeze)]
    for name in get_strategy(strategy).planning.fallbacks:
        k = min(unfreeze or default_unfreeze, default_unfreeze)
        chain.append((name, None if get_strategy(name).trains in ("none", "all") else k))
    chain.append((_HEAD_ONLY, None))
    for kind, k in chain:
        spec = get_strategy(kind)
        e = epochs_of(spec)
        if spec.cost is not None:
            per_epoch = cost(kind, k, 1) - cost(kind, k, 0)
            fits = math.floor((budget - cost(kind, k, 0)) / per_epoch) if per_epoch > 0 else e
            e = min(e, fits)
        if spec.cost is None or e >= _MIN_EPOCHS:
            if (kind, k) != (strategy, unfreeze):
                plan.reasons.append(f"budget {budget:g} min: {strategy} would take about "
                                    f"{cost(strategy, unfreeze, epochs):.0f} min here; {kind} fits")
            elif e < epochs:
                plan.reasons.append(f"budget {budget:g} min: {epochs} epochs would take about "
                                    f"{cost(strategy, unfreeze, epochs):.0f} min here; {e} fit")
            strategy, unfreeze, epochs = kind, k, e
            break
    plan.strategy = strategy
    if cost(strategy, unfreeze, epochs) > budget:
        plan.warnings.append(f"Even a linear head takes about {cost(strategy, unfreeze, epochs):.1f} min "
                             f"here (feature extraction), over the {budget:g} min budget.")
    return strategy, unfreeze, epochs


def plan_hyperparameters(decision: Decision, signals: dict, amount: dict, *, model: Backbone,
                         image_size: int, batch_size: int, budget_minutes: float | None) -> Plan:
    names = [s["name"] for s in signals["stages"]]
    n_train = amount["train_images"]
    strategy, unfreeze = decision.strategy, decision.unfreeze
    plan = Plan(strategy=strategy, hyperparameters={}, estimated_minutes=None)

    def cost(kind: str, k: int | None, epochs: int) -> float:
        return estimate_minutes(kind, k, epochs, amount=amount, num_stages=len(names),
                                forward_ms=signals["forward_ms_per_image"])

    def epochs_of(spec: StrategySpec) -> int:
        return _epochs(spec, n_train, batch_size)

    epochs = epochs_of(get_strategy(strategy))
    if budget_minutes is not None and cost(strategy, unfreeze, epochs) > budget_minutes:
        strategy, unfreeze, epochs = _fit_budget(plan, budget_minutes, cost, epochs_of, unfreeze,
                                                 epochs, model.default_unfreeze)
    plan.estimated_minutes = round(cost(strategy, unfreeze, epochs), 2)

    spec, hp = get_strategy(strategy), plan.hyperparameters
    steps = max(1, n_train // batch_size if n_train > batch_size else 1)
    if unfreeze is not None and spec.trains in ("last", "first"):
        shown = names[-unfreeze:] if spec.trains == "last" else names[:unfreeze]
        hp["unfreeze"] = _hp(unfreeze, f"the {spec.trains} {unfreeze} of {len(names)} stages train "
                             f"({', '.join(shown)}); "
                             + (decision.reasons[-1] if decision.strategy == strategy else "the budget's choice"))
    if spec.probe_first:
        lp = epochs_of(get_strategy(_HEAD_ONLY))
        hp["lp_epochs"] = _hp(lp, f"the linear-probe phase runs on cached features, so {lp} epochs "
                              f"(about {lp * steps} steps) cost seconds; its head starts the next phase")
    low, high = spec.planning.epoch_limits
    hp["epochs"] = _hp(epochs, f"about {spec.planning.target_steps} optimizer steps at {steps} step(s) "
                       f"per epoch ({n_train} training images, batch {batch_size}), within "
                       f"{low}-{high} epochs"
                       + ("; cut to fit the budget" if any("budget" in r for r in plan.reasons) else ""))
    lr = spec.planning.lr
    hp["lr"] = _hp(lr, f"{spec.planning.lr_reason}. Per group: {_stage_lrs(spec, unfreeze, lr, names)}")
    hp["augment"] = _hp(*_augment(spec, decision, unfreeze))
    hp["image_size"] = _hp(image_size, _image_size_reason(model, image_size, amount))
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

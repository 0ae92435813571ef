"""The recommendation's second half: hyperparameters with their reasons, a training-time
estimate and the ``--budget``.

The time estimate comes from the forward speed measured while computing the signals, on
this machine, at the chosen image size: one training image costs about three forward
passes when everything trains (forward, and a backward twice as expensive), fewer when
gradients stop at a frozen stage; evaluation and feature extraction cost one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import RunConfig
from ..models import Backbone
from .decide import Decision

# Optimizer steps a phase should get: about what it takes AdamW with a cosine schedule to
# settle a head (300) or a backbone from pretrained weights (300; lp-ft's fine-tuning
# phase 200, its head starts trained), within epoch limits that keep tiny sets from
# hundreds of epochs and large ones from a single pass.
_TARGET_STEPS = {"linear": 300, "partial": 300, "full": 300, "surgical": 300, "lp-ft": 200}
_EPOCH_LIMITS = {"linear": (30, 100), "partial": (5, 30), "full": (5, 30), "surgical": (5, 30),
                 "lp-ft": (3, 20)}
# Head learning rate (backbone stages get RunConfig's backbone_lr_scale and layer_decay).
_LR = {"linear": 1e-2, "partial": 1e-3, "full": 1e-3, "surgical": 1e-3, "lp-ft": 3e-4}
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


def _epochs(kind: str, n_train: int, batch_size: int) -> int:
    steps = max(1, n_train // batch_size if n_train > batch_size else 1)
    low, high = _EPOCH_LIMITS[kind]
    return int(min(high, max(low, math.ceil(_TARGET_STEPS[kind] / steps))))


def estimate_minutes(strategy: str, unfreeze: int | None, epochs: int, *, amount: dict,
                     num_stages: int, forward_ms: float) -> float:
    """Rough wall-clock minutes of ``finetune run`` with this plan on this machine."""
    n_train, n_val = amount["train_images"], amount["val_images"]
    n_all = n_train + n_val + amount["test_images"]
    share = (unfreeze or num_stages) / max(1, num_stages)
    per_image = {"partial": 1 + 2 * share, "surgical": 2 + share, "full": 3.0, "lp-ft": 3.0}
    total = 0.0
    if strategy in ("linear", "lp-ft", "surgical"):
        total += n_all  # features extracted once for the (first) linear phase
    if strategy != "linear":
        total += epochs * (n_train * per_image[strategy] + n_val) + amount["test_images"]
    return total * forward_ms * _OVERHEAD / 60_000


def _stage_lrs(strategy: str, unfreeze: int | None, lr: float, names: list[str]) -> str:
    cfg = RunConfig()
    if strategy == "linear":
        return f"head {lr:g}; backbone frozen"
    if strategy == "partial":
        trained = names[len(names) - (unfreeze or 1):]
    elif strategy == "surgical":
        trained = names[: unfreeze or 1]
    else:
        trained = names
    parts = [f"head {lr:g}"]
    for depth, name in enumerate(reversed(trained)):
        parts.append(f"{name} {lr * cfg.backbone_lr_scale * cfg.layer_decay**depth:.2g}")
    return ", ".join(parts)


def plan_hyperparameters(decision: Decision, signals: dict, amount: dict, *, model: Backbone,
                         image_size: int, batch_size: int, budget_minutes: float | None) -> Plan:
    names = [s["name"] for s in signals["stages"]]
    forward_ms = signals["forward_ms_per_image"]
    strategy, unfreeze = decision.strategy, decision.unfreeze
    plan = Plan(strategy=strategy, hyperparameters={}, estimated_minutes=None)

    def cost(kind: str, k: int | None, epochs: int) -> float:
        return estimate_minutes(kind, k, epochs, amount=amount, num_stages=len(names), forward_ms=forward_ms)

    epochs = _epochs(strategy, amount["train_images"], batch_size)
    if budget_minutes is not None and cost(strategy, unfreeze, epochs) > budget_minutes:
        # Fewer epochs first, then cheaper strategies: fine-tuning the last stages, then a head.
        chain = [(strategy, unfreeze)]
        if strategy in ("full", "lp-ft", "surgical"):
            chain.append(("partial", min(unfreeze or model.default_unfreeze, model.default_unfreeze)))
        chain.append(("linear", None))
        for kind, k in chain:
            e = _epochs(kind, amount["train_images"], batch_size)
            if kind != "linear":
                per_epoch = cost(kind, k, 1) - cost(kind, k, 0)
                fits = math.floor((budget_minutes - cost(kind, k, 0)) / per_epoch) if per_epoch > 0 else e
                e = min(e, fits)
            if kind == "linear" or e >= _MIN_EPOCHS:
                if (kind, k) != (strategy, unfreeze):
                    plan.reasons.append(f"budget {budget_minutes:g} min: {strategy} would take about "
                                        f"{cost(strategy, unfreeze, epochs):.0f} min here; {kind} fits")
                elif e < epochs:
                    plan.reasons.append(f"budget {budget_minutes:g} min: {epochs} epochs would take about "
                                        f"{cost(strategy, unfreeze, epochs):.0f} min here; {e} fit")
                strategy, unfreeze, epochs = kind, k, e
                break
        plan.strategy = strategy
        if cost(strategy, unfreeze, epochs) > budget_minutes:
            plan.warnings.append(f"Even a linear head takes about {cost(strategy, unfreeze, epochs):.1f} min "
                                 f"here (feature extraction), over the {budget_minutes:g} min budget.")
    plan.estimated_minutes = round(cost(strategy, unfreeze, epochs), 2)

    hp = plan.hyperparameters
    n_train = amount["train_images"]
    steps = max(1, n_train // batch_size if n_train > batch_size else 1)
    if unfreeze is not None and strategy in ("partial", "surgical"):
        which = "last" if strategy == "partial" else "first"
        hp["unfreeze"] = _hp(unfreeze, f"the {which} {unfreeze} of {len(names)} stages train "
                             f"({', '.join(names[-unfreeze:] if which == 'last' else names[:unfreeze])}); "
                             + (decision.reasons[-1] if decision.strategy == strategy else "the budget's choice"))
    if strategy in ("lp-ft", "surgical"):
        lp = _epochs("linear", n_train, batch_size)
        hp["lp_epochs"] = _hp(lp, f"the linear-probe phase runs on cached features, so {lp} epochs "
                              f"(about {lp * steps} steps) cost seconds; its head starts the next phase")
    hp["epochs"] = _hp(epochs, f"about {_TARGET_STEPS[strategy]} optimizer steps at {steps} step(s) per "
                       f"epoch ({n_train} training images, batch {batch_size}), within "
                       f"{_EPOCH_LIMITS[strategy][0]}-{_EPOCH_LIMITS[strategy][1]} epochs"
                       + ("; cut to fit the budget" if any("budget" in r for r in plan.reasons) else ""))
    lr = _LR[strategy]
    lr_reason = {
        "linear": "AdamW on a linear head over frozen features tolerates a high rate",
        "partial": "new head at 1e-3; pretrained stages move 10x slower, each earlier one 0.7x again",
        "full": "new head at 1e-3; pretrained stages move 10x slower, each earlier one 0.7x again",
        "surgical": "the head is trained first (probe phase); the first stages then adapt at 10x less",
        "lp-ft": "the head starts trained, so fine-tuning takes small steps that keep the features "
                 "(Kumar et al. 2022 fine-tune after the probe at a lower rate)",
    }[strategy]
    hp["lr"] = _hp(lr, f"{lr_reason}. Per group: {_stage_lrs(strategy, unfreeze, lr, names)}")
    little = decision.amount == "little"
    if strategy == "linear":
        augment, why = "none", "cached features are computed once, without augmentation"
    elif little:
        augment, why = "strong", ("little data: strong crops, colour, blur/noise and dropout "
                                  "stretch the few images (DESIGN.md's little-data cells)")
    elif strategy == "partial":
        augment, why = "light", f"large data, and only the last {unfreeze} stage(s) train: crops and flips are enough"
    else:
        # full, lp-ft or surgical on large data: more of the network moves than in partial.
        what = ("far from the pretraining" if decision.similarity == "different"
                else "and the first stages train" if strategy == "surgical" else "and the whole network trains")
        augment, why = "medium", f"large data {what}: crops, flips, colour jitter, small affine"
    hp["augment"] = _hp(augment, why)
    side = min(amount.get("median_width") or image_size, amount.get("median_height") or image_size)
    size_reason = f"the backbone's pretrained input size ({model.pretrained_cfg.image_size} px)"
    if image_size != model.pretrained_cfg.image_size:
        size_reason = f"as asked (the pretrained size is {model.pretrained_cfg.image_size} px)"
    if side and side < image_size / 2:
        size_reason += (f"; your images are about {side:.0f} px, upscaled x{image_size / side:.1f}: "
                        f"a smaller --image-size trains faster, the pretrained size usually scores higher")
    hp["image_size"] = _hp(image_size, size_reason)
    hp["bn_policy"] = _hp(_bn_policy(strategy, unfreeze, signals, batch_size), "DESIGN.md's BatchNorm policy")
    return plan


def _bn_policy(strategy: str, unfreeze: int | None, signals: dict, batch_size: int) -> str:
    if not signals["has_batchnorm"]:
        return "no BatchNorm layers with stored statistics in this backbone"
    if strategy == "linear":
        return "frozen: eval mode, the checkpoint's statistics (the probe above used them too)"
    if strategy == "partial":
        return (f"the last {unfreeze} stage(s) re-estimate their statistics while training; "
                f"frozen stages keep the checkpoint's, in eval mode")
    if strategy == "surgical":
        return (f"the first {unfreeze} stage(s) re-estimate their statistics (AdaBN plus tuning: it "
                f"removed {signals['shift_pixel']:.2f} of the later stages' shift); later stages keep "
                f"the checkpoint's, in eval mode")
    small = " (batch under 16: noisy batch statistics, raise --batch-size if memory allows)" if batch_size < 16 else ""
    return f"every stage trains, BatchNorm with batch statistics of batch {batch_size}{small}"

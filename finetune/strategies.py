"""Fine-tuning strategies: which stages train, at what learning rate, and the BN policy.

The grid (DESIGN.md): little + similar data -> ``linear``; large + similar -> ``partial``;
large + different -> ``full``; ``lp-ft`` first fits a linear head on frozen features and
then fine-tunes everything from it, which keeps early fine-tuning steps from distorting
good pretrained features with a random head (Kumar et al., 2022). ``surgical`` trains the
*first* stages after a probe phase, for input-level shift (blur, noise, colour: Lee et al.,
2022); ``auto`` is resolved into one of these by the recommender before planning.

A strategy is a plan of one or two ``Phase`` objects. A phase decides three things:

* which stages train (the rest are frozen: ``requires_grad=False`` *and* eval mode, so
  frozen BatchNorm layers keep using, and never update, their stored statistics; this is
  re-applied every time Lightning calls ``model.train()``);
* the optimizer's parameter groups: the head at ``lr``, the last unfrozen stage at
  ``lr * backbone_lr_scale`` and every earlier stage ``layer_decay`` times less again;
  no weight decay on biases and normalisation parameters;
* whether the backbone runs at all: a head-only phase trains on cached features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from torch import nn

from .config import RunConfig
from .models import Backbone, Stage

log = logging.getLogger("finetune")


@dataclass(frozen=True)
class Phase:
    name: str  # "linear" | "partial" | "full"; also the checkpoint sub-folder
    unfreeze: int | str  # number of last stages that train, or "all"
    epochs: int
    lr: float
    warmup_epochs: float
    augment: str  # "none" | "light" | "medium" | "strong"
    feature_cache: bool  # head-only phase on cached features
    # `surgical`: the FIRST `unfreeze` stages train instead of the last ones (input-level
    # shift is undone where it enters, Lee et al. 2022).
    from_input: bool = False

    def trainable_stages(self, model: Backbone) -> list[Stage]:
        stages = model.stages()
        if self.unfreeze == "all":
            return stages
        k = int(self.unfreeze)
        if k > len(stages):
            raise ValueError(
                f"--unfreeze {k} is more than the {len(stages)} stages of '{model.variant}' "
                f"({', '.join(s.name for s in stages)}). Use at most {len(stages)}, "
                f"or --strategy full."
            )
        if self.from_input:
            return stages[:k]
        return stages[len(stages) - k:] if k > 0 else []

    def frozen_stages(self, model: Backbone) -> list[Stage]:
        trainable = {s.name for s in self.trainable_stages(model)}
        return [s for s in model.stages() if s.name not in trainable]

    # ----------------------------------------------------------------- freezing
    def freeze(self, model: Backbone) -> None:
        """Set ``requires_grad`` for this phase and apply the BatchNorm policy."""
        for stage in self.frozen_stages(model):
            for p in stage.parameters():
                p.requires_grad_(False)
        for stage in self.trainable_stages(model):
            for p in stage.parameters():
                p.requires_grad_(True)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
        self.apply_bn_policy(model)

    def apply_bn_policy(self, model: Backbone) -> None:
        """Frozen stages in eval mode: BN uses stored statistics, dropout off.

        A head-only phase (``linear``, lp-ft's probe) puts the whole network in eval mode,
        the dropout before the classifier included: a linear probe is a linear layer on
        the frozen network's features, and on cached features there is no dropout to
        apply, so only this way do ``--no-feature-cache`` runs train the same head.
        """
        if not self.trainable_stages(model):
            model.eval()
            return
        for stage in self.frozen_stages(model):
            for module in stage.modules:
                module.eval()

    def check_bn_policy(self, model: Backbone) -> None:
        """Raise if a frozen BatchNorm layer is in training mode (it would drift)."""
        for stage in self.frozen_stages(model):
            for module in stage.modules:
                for name, sub in module.named_modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
                        raise RuntimeError(
                            f"BatchNorm '{name}' in frozen stage '{stage.name}' is in "
                            f"training mode: its running statistics would change."
                        )

    # ----------------------------------------------------------------- optimizer
    def param_groups(self, model: Backbone, cfg: RunConfig) -> list[dict]:
        """Head at lr; backbone stages decayed from the last one; no decay on norms/biases."""
        groups: list[dict] = []
        trainable = self.trainable_stages(model)
        named = [("head", model.get_classifier(), self.lr)]
        for depth, stage in enumerate(reversed(trainable)):
            lr = self.lr * cfg.backbone_lr_scale * cfg.layer_decay**depth
            named.append((stage.name, stage, lr))
        for name, part, lr in named:
            decay, no_decay = [], []
            for p in part.parameters():
                if p.requires_grad:
                    (no_decay if p.ndim <= 1 else decay).append(p)
            if decay:
                groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
            if no_decay:
                groups.append({"name": f"{name}.no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
        return groups

    def describe(self, model: Backbone) -> str:
        trainable = self.trainable_stages(model)
        names = [s.name for s in trainable] + ["head"]
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        return (
            f"phase '{self.name}': training {', '.join(names)} "
            f"({n_train:,} of {n_all:,} parameters), {self.epochs} epochs, head lr {self.lr:g}"
            + (", on cached features" if self.feature_cache else "")
        )


# Defaults per strategy, each with its reason. A flag or recipe value overrides them.
# `surgical` without --unfreeze: the stem and the first stage, where pixel statistics live.
SURGICAL_UNFREEZE = 2

_DEFAULTS = {
    # A linear head on cached features is cheap per epoch: train it long, at a high lr.
    "linear": {"epochs": 30, "lr": 1e-2, "warmup_epochs": 0.0, "augment": "none"},
    # A few stages adapt: moderate lr, light augmentation, one warm-up epoch.
    "partial": {"epochs": 10, "lr": 1e-3, "warmup_epochs": 1.0, "augment": "light"},
    # Everything moves: more epochs, stronger augmentation against over-fitting.
    "full": {"epochs": 15, "lr": 1e-3, "warmup_epochs": 1.0, "augment": "medium"},
    # The first stages and the head adapt; like `partial`, from a probe-trained head.
    "surgical": {"epochs": 10, "lr": 1e-3, "warmup_epochs": 1.0, "augment": "medium"},
}


def plan(cfg: RunConfig, model: Backbone) -> list[Phase]:
    """The phases of ``cfg.strategy`` for ``model``, with defaults filled in."""

    def phase(kind: str, *, epochs: int | None, unfreeze: int | str) -> Phase:
        d = _DEFAULTS[kind]
        cached = kind == "linear" and cfg.feature_cache
        augment = cfg.augment if cfg.augment != "auto" else d["augment"]
        if kind == "linear" and not cached and cfg.augment == "auto":
            augment = "light"  # the backbone runs per epoch anyway: use it
        if cached and augment != "none":
            log.warning("Cached features see no augmentation; augment=%s is ignored "
                        "(use --no-feature-cache to augment a linear probe).", augment)
            augment = "none"
        warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else d["warmup_epochs"]
        return Phase(
            name=kind,
            unfreeze=unfreeze,
            epochs=epochs if epochs is not None else d["epochs"],
            lr=cfg.lr if cfg.lr is not None else d["lr"],
            warmup_epochs=warmup,
            augment=augment,
            feature_cache=cached,
        )

    if cfg.strategy == "linear":
        return [phase("linear", epochs=cfg.epochs, unfreeze=0)]
    if cfg.strategy == "partial":
        k = cfg.unfreeze if cfg.unfreeze is not None else model.default_unfreeze
        return [phase("partial", epochs=cfg.epochs, unfreeze=k)]
    if cfg.strategy == "full":
        return [phase("full", epochs=cfg.epochs, unfreeze="all")]
    if cfg.strategy == "lp-ft":
        # The probe phase keeps its own lr; --lr sets the fine-tuning phase.
        probe = replace(phase("linear", epochs=cfg.lp_epochs, unfreeze=0), lr=_DEFAULTS["linear"]["lr"])
        return [probe, phase("full", epochs=cfg.epochs, unfreeze="all")]
    if cfg.strategy == "surgical":
        # A head trained on frozen features first, so that the first stages adapt to the
        # data rather than to a random head; then the first k stages and the head train.
        k = cfg.unfreeze if cfg.unfreeze is not None else SURGICAL_UNFREEZE
        probe = replace(phase("linear", epochs=cfg.lp_epochs, unfreeze=0), lr=_DEFAULTS["linear"]["lr"])
        return [probe, replace(phase("surgical", epochs=cfg.epochs, unfreeze=k), from_input=True)]
    if cfg.strategy == "auto":
        raise ValueError("Strategy 'auto' is resolved by the recommender before planning "
                         "(finetune.recommend.resolve_auto, called by finetune.train.run).")
    raise ValueError(f"Unknown strategy '{cfg.strategy}'.")

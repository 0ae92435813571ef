"""A phase of a strategy: which stages train, at what learning rate, and the BN policy.

A strategy (registry.py) is a plan of one or two ``Phase`` objects. A phase decides three
things:

* which stages train (the rest are frozen: ``requires_grad=False`` *and* eval mode, so
  frozen BatchNorm layers keep using, and never update, their stored statistics; this is
  re-applied every time Lightning calls ``model.train()``);
* the optimizer's parameter groups: the head at ``lr``, the last unfrozen stage at
  ``lr * backbone_lr_scale`` and every earlier stage ``layer_decay`` times less again;
  no weight decay on biases and normalisation parameters;
* whether the backbone runs at all: a head-only phase trains on cached features.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import RunConfig
from ..models import Backbone, Stage


@dataclass(frozen=True)
class Phase:
    name: str  # "linear" | "partial" | "full" | "surgical"; also the checkpoint sub-folder
    unfreeze: int | str  # number of last stages that train, or "all"
    epochs: int
    lr: float
    warmup_epochs: float
    augment: str  # "none" | "light" | "medium" | "strong"
    feature_cache: bool  # head-only phase on cached features
    # `surgical`: the FIRST `unfreeze` stages train instead of the last ones (input-level
    # shift is undone where it enters, Lee et al. 2022).
    from_input: bool = False
    # The whole network in eval mode while its weights train: every BatchNorm keeps the
    # checkpoint's statistics and dropout is off, as in the probe before it. lp-ft and
    # surgical fine-tune this way: on the built-in glyphs at 96 px, lp-ft's test accuracy
    # is 0.85 with it and 0.63 with batch statistics (docs/run.md).
    bn_eval: bool = False

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
        apply, so only this way do ``--no-feature-cache`` runs train the same head. A
        ``bn_eval`` phase does the same while its stages train.
        """
        if self.bn_eval or not self.trainable_stages(model):
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

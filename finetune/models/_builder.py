"""Build a registered backbone, load its weights, and give it the head the user asked for."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ._base import Backbone, PretrainedCfg
from ._weights import StateDict, load_state_dict_file, resolve_pretrained

log = logging.getLogger("finetune")


def _classifier_keys(model: Backbone) -> set[str]:
    head = model.get_classifier()
    prefix = next(name for name, mod in model.named_modules() if mod is head)
    return {f"{prefix}.{k}" for k in head.state_dict()}


def load_weights(model: Backbone, state: StateDict, source: str) -> None:
    """Load ``state`` strictly; only a classifier of another size may be left out.

    A model may define ``adapt_state_dict(state) -> state`` to translate another
    project's naming (e.g. efficientnet-pytorch's ``_blocks.N``) into its own.
    """
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    own = model.state_dict()
    head_keys = _classifier_keys(model)
    mismatched_head = {k for k in head_keys if k in state and state[k].shape != own[k].shape}
    if mismatched_head:
        state = {k: v for k, v in state.items() if k not in mismatched_head}
        log.info("Weights from %s have another classifier size; the head starts fresh.", source)
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - mismatched_head
    if missing or result.unexpected_keys:
        raise ValueError(
            f"Weights from {source} do not fit '{model.variant}': "
            f"{len(missing)} missing keys (e.g. {sorted(missing)[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {sorted(result.unexpected_keys)[:3]}). "
            f"Check that the file was saved from the same architecture."
        )
    model.weights_source = source


def build_backbone(
    model_cls: type[Backbone],
    variant: str,
    cfg: PretrainedCfg,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs,
) -> Backbone:
    """Construct ``model_cls``, load weights (explicit file > pretrained), reset the head.

    The model is built with the pretrained head size when weights load, so the whole
    checkpoint loads strictly; the classifier is replaced afterwards.
    """
    explicit = weights is not None and str(weights).lower() not in ("", "none")
    loading = explicit or pretrained
    head = cfg.num_classes if loading else (num_classes if num_classes is not None else cfg.num_classes)
    model = model_cls(num_classes=head, **kwargs)
    model.pretrained_cfg = cfg
    model.variant = variant
    model.weights_source = "random initialisation"
    if explicit:
        load_weights(model, load_state_dict_file(weights), f"file {weights}")
    elif pretrained:
        state, source = resolve_pretrained(cfg, variant)
        load_weights(model, state, source)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


@torch.no_grad()
def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

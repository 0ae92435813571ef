"""Backbones by name: ``@register_model`` entrypoints and ``create_backbone``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from ._base import Backbone

_ENTRYPOINTS: dict[str, Callable[..., Backbone]] = {}
_FAMILY: dict[str, str] = {}

TIMM_PREFIX = "timm:"


def register_model(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Register a builder under its function name; the family is its module's name."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"Backbone '{name}' is registered twice ({fn.__module__}).")
    _ENTRYPOINTS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def list_models(family: str | None = None) -> list[str]:
    names = sorted(_ENTRYPOINTS)
    return [n for n in names if family is None or _FAMILY[n] == family]


def model_family(name: str) -> str:
    return "timm" if name.startswith(TIMM_PREFIX) else _FAMILY[resolve_name(name)]


def is_model(name: str) -> bool:
    return name.startswith(TIMM_PREFIX) or name.replace("-", "_") in _ENTRYPOINTS


def resolve_name(name: str) -> str:
    """Canonical name, or a ValueError that suggests the nearest ones."""
    if name.startswith(TIMM_PREFIX):
        return name
    key = name.replace("-", "_")
    if key in _ENTRYPOINTS:
        return key
    close = difflib.get_close_matches(key, list(_ENTRYPOINTS), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown backbone '{name}'.{hint} See `finetune models` for the list, "
        f"or use 'timm:<name>' for any timm model."
    )


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    **kwargs,
) -> Backbone:
    """Build a backbone by name, optionally with pretrained weights and a new head.

    ``weights`` is an explicit file (.pth, .pt, .safetensors, Lightning .ckpt) and wins
    over every other source; ``pretrained=True`` looks for the backbone's own weights
    offline first (installed package, torch / Hugging Face caches) and downloads last.
    ``num_classes`` replaces the classifier after the weights are loaded.
    """
    name = resolve_name(name)
    if name.startswith(TIMM_PREFIX):
        from .timm_backbone import create_timm_backbone

        return create_timm_backbone(
            name[len(TIMM_PREFIX):], pretrained=pretrained, num_classes=num_classes,
            weights=weights, **kwargs,
        )
    return _ENTRYPOINTS[name](
        pretrained=pretrained, num_classes=num_classes, weights=weights, **kwargs
    )

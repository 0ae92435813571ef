"""Any timm model as a backbone: ``create_backbone("timm:convnext_tiny", pretrained=True)``.

timm already offers the interface (``forward_features``, ``forward_head``,
``reset_classifier``, ``num_features``); ``TimmBackbone`` delegates to it and adds what
timm does not have: ``stages()`` for partial unfreezing, derived from timm's
``feature_info``, and weight loading through ``_weights.py`` (explicit file, installed
package, torch / Hugging Face caches, then a download), never timm's own
``pretrained=True`` path, which would go to the network before looking offline.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import timm
import torch
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._weights import StateDict
from .layers import init_linear_head

__all__ = ["TimmBackbone", "create_timm_backbone", "timm_pretrained_cfg"]

_PREFIX = "model."  # TimmBackbone keeps the timm model in ``self.model``


class _OwnTensors(nn.Module):
    """The parameters and buffers a container registers itself, without its children's.

    ViT's ``pos_embed`` (on the root) or ConvNeXt's layer-scale ``gamma`` (on a block)
    live on modules whose children are leaves of their own and may belong to another
    stage; listing the container itself would count those children twice.
    """

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        # Stored outside ``_modules``: .modules() / .train() must not reach the owner's children.
        self.__dict__["owner"] = owner

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True,
    ) -> Iterator[tuple[str, nn.Parameter]]:
        yield from self.owner.named_parameters(prefix, recurse=False, remove_duplicate=remove_duplicate)

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.owner.named_buffers(prefix, recurse=False, remove_duplicate=remove_duplicate)


def _owns_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


class TimmBackbone(Backbone):
    """A timm model (in ``self.model``) behind the package's backbone interface."""

    default_unfreeze = 1

    def __init__(self, name: str, *, num_classes: int = 1000, **kwargs) -> None:
        super().__init__()
        # pretrained=False always: weights come from _weights.py, offline first.
        self.model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        self.timm_name = name
        self.num_classes = self.model.num_classes
        # What forward_head(pre_logits=True) returns: timm's head_hidden_size where a
        # pre-logits layer sits between pooling and classifier, else num_features.
        self.num_features = getattr(self.model, "head_hidden_size", None) or self.model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        """timm's own reset, which knows each architecture's head (a norm or pre-logits
        layer before the classifier, a distillation head); the new layer then gets the
        device, dtype and init that ``create_classifier`` gives every other family."""
        like = next(self.parameters())
        self.model.reset_classifier(num_classes)
        self.num_classes = num_classes
        head = self.get_classifier().to(like.device, like.dtype)  # timm builds it on the CPU
        init_linear_head(head)

    def adapt_state_dict(self, state: StateDict) -> StateDict:
        """Map timm-keyed weights (timm's files, the hub, our own saved checkpoints) onto
        ``model.<timm key>``; files in a model's original format go through timm's own
        ``checkpoint_filter_fn`` first, as timm does when it loads them."""
        own = self.model.state_dict()
        state = {
            k[len(_PREFIX):] if k not in own and k.startswith(_PREFIX) and k[len(_PREFIX):] in own else k: v
            for k, v in state.items()
        }
        if set(state) != set(own):
            convert = getattr(sys.modules[type(self.model).__module__], "checkpoint_filter_fn", None)
            if convert is not None:
                state = convert(state, self.model)
        return {f"{_PREFIX}{k}": v for k, v in state.items()}

    def _stage_ends(self) -> list[str]:
        """The module that ends each stage: timm's feature_info, else the top-level children."""
        names = {name for name, _ in self.model.named_modules()}
        ends = [f["module"] for f in getattr(self.model, "feature_info", None) or [] if f["module"] in names]
        if ends:
            return ends
        head = self.get_classifier()
        ends = [
            name for name, child in self.model.named_children()
            if child is not head and any(True for _ in child.parameters())
        ]
        if not ends:
            raise ValueError(
                f"timm model '{self.timm_name}' has no feature_info and no layers besides its "
                f"classifier, so it has no stages to unfreeze; use the 'full' or 'linear' strategy."
            )
        return ends

    def stages(self) -> list[Stage]:
        """Every module owning tensors, in ``named_modules()`` order, up to and including
        the end of feature_info[i]['module'] forms stage i; later ones (a head norm, a
        pre-logits layer) join the last stage; the classifier is left out."""
        ends = self._stage_ends()
        modules = list(self.model.named_modules())
        # Position of the last module inside each end module's subtree.
        bounds = [
            max(pos for pos, (name, _) in enumerate(modules) if name == end or name.startswith(end + "."))
            for end in ends
        ]
        head_ids = {id(m) for m in self.get_classifier().modules()}
        stages = [Stage(end, []) for end in ends]
        for pos, (_, module) in enumerate(modules):
            if id(module) in head_ids or not _owns_tensors(module):
                continue
            index = next((i for i, bound in enumerate(bounds) if pos <= bound), len(stages) - 1)
            has_children = any(True for _ in module.children())
            stages[index].modules.append(_OwnTensors(module) if has_children else module)
        return [stage for stage in stages if stage.modules]


def _check_name(name: str) -> None:
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr('timm:' + c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown timm model '{name}'.{hint} timm.list_models() lists the {len(timm.list_models())} "
            f"names timm {timm.__version__} knows."
        )


def timm_pretrained_cfg(name: str) -> PretrainedCfg:
    """Our ``PretrainedCfg`` from timm's pretrained cfg (the default tag unless named)."""
    _check_name(name)
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as err:  # an architecture timm knows, with a tag it does not
        arch, tag = split_model_name_tag(name)
        tags = timm.list_pretrained(f"{arch}.*")
        raise ValueError(
            f"timm model '{arch}' has no pretrained tag '{tag}'. Valid: "
            f"{', '.join(repr('timm:' + t) for t in tags) or 'none (no pretrained weights)'}."
        ) from err
    if cfg is None:  # an architecture without any registered weights
        return PretrainedCfg(source="timm", extra={"timm_name": name})
    size = tuple(cfg.input_size)
    return PretrainedCfg(
        input_size=size if len(size) == 3 else (3, size[-1], size[-1]),
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        interpolation=cfg.interpolation or "bicubic",
        crop_pct=cfg.crop_pct,
        num_classes=cfg.num_classes,
        url=cfg.url or None,
        hf_hub_id=cfg.hf_hub_id or None,
        source="timm",
        license=cfg.license,
        extra={
            "timm_name": name,
            "tag": cfg.tag,
            "crop_mode": cfg.crop_mode,
            "test_input_size": cfg.test_input_size,
        },
    )


def create_timm_backbone(
    name: str,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    **kwargs,
) -> TimmBackbone:
    """Wrap ``timm.create_model(name)``; weights load by the package's offline-first rules.

    ``name`` is timm's (``convnext_tiny``, ``resnet50.a1_in1k``), without the ``timm:``
    prefix that ``create_backbone`` strips. ``kwargs`` go to ``timm.create_model``
    (``drop_path_rate=0.1``, ``in_chans=1``, ...).
    """
    cfg = timm_pretrained_cfg(name)
    return build_backbone(
        # build_backbone calls model_cls(num_classes=..., **kwargs); the partial supplies the name.
        partial(TimmBackbone, name), f"timm:{name}", cfg,
        pretrained=pretrained, weights=weights, num_classes=num_classes, **kwargs,
    )

"""Frozen-backbone features: one pass over the images, then the head trains on them.

A linear probe never needs the backbone per epoch: the backbone is frozen and in eval
mode, and without augmentation its pooled output for an image is always the same.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.transforms import prepare_batch
from ..deploy.tta import tta_probabilities
from ..models import Backbone
from .output import interactive


def _bar(loader: DataLoader, desc: str, progress: bool):
    """tqdm over ``loader`` where someone watches stderr (its stream); no bar in a file or CI."""
    return tqdm(loader, desc=desc, unit="batch", leave=False,
                disable=not (progress and interactive(sys.stderr)))


def iter_features(
    model: Backbone,
    loader: DataLoader,
    *,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batch by batch: pooled features (B, num_features) float32 on the CPU, labels (B,).

    A generator, so a caller can write each batch to disk (``feature_cache``) and never
    hold a whole dataset's features in memory.
    """
    was_training = model.training
    model.eval()
    model.to(device)
    try:
        for x, y in _bar(loader, desc, progress):
            with torch.inference_mode():
                x = prepare_batch(x.to(device, non_blocking=True), model.pretrained_cfg)
                if device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        f = model.pooled_features(x)
                else:
                    f = model.pooled_features(x)
                f = f.float().cpu()
            yield f, torch.as_tensor(y).long()
    finally:
        model.train(was_training)


def extract_features(
    model: Backbone,
    loader: DataLoader,
    *,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled penultimate features (N, num_features) float32 and labels (N,) in loader order."""
    feats, labels = [], []
    for f, y in iter_features(model, loader, device=device, desc=desc, progress=progress):
        feats.append(f)
        labels.append(y)
    if not feats:
        return torch.zeros(0, model.num_features), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


@torch.inference_mode()
def predict_probs(
    module: torch.nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    desc: str = "predict",
    progress: bool = True,
    views: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N, C) and labels (N,) of ``module`` over ``loader``; with
    ``views``, averaged over those test-time views (finetune/deploy/tta.py)."""
    was_training = module.training
    module.eval()
    module.to(device)
    probs, labels = [], []
    for x, y in _bar(loader, desc, progress):
        x = x.to(device, non_blocking=True)
        if isinstance(module, Backbone) and x.ndim == 4:
            x = prepare_batch(x, module.pretrained_cfg)  # a FinetuneModule does this itself
        if views:
            probs.append(tta_probabilities(module, x, views).cpu())
        else:
            probs.append(torch.softmax(module(x).float(), dim=1).cpu())
        labels.append(torch.as_tensor(y))
    module.train(was_training)
    return torch.cat(probs), torch.cat(labels).long()

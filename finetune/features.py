"""Frozen-backbone features: one pass over the images, then the head trains on them.

A linear probe never needs the backbone per epoch: the backbone is frozen and in eval
mode, and without augmentation its pooled output for an image is always the same.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .models import Backbone


@torch.inference_mode()
def extract_features(
    model: Backbone,
    loader: DataLoader,
    *,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled penultimate features (N, num_features) float32 and labels (N,) in loader order."""
    was_training = model.training
    model.eval()
    model.to(device)
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                f = model.pooled_features(x)
        else:
            f = model.pooled_features(x)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    if not feats:
        return torch.zeros(0, model.num_features), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels).long()


@torch.inference_mode()
def predict_probs(
    module: torch.nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    desc: str = "predict",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N, C) and labels (N,) of ``module`` over ``loader``."""
    was_training = module.training
    module.eval()
    module.to(device)
    probs, labels = [], []
    for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = module(x).float()
        probs.append(torch.softmax(logits, dim=1).cpu())
        labels.append(torch.as_tensor(y))
    module.train(was_training)
    return torch.cat(probs), torch.cat(labels).long()

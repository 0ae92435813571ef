"""Test-time augmentation: a few views of each image, their softmax probabilities averaged.

    views = tta_views(hflip=True)    # ["plain", "hflip", "crop_center", "crop_top_left", ...]
    probs = tta_probabilities(forward, batch, views)   # (B, C), each row sums to 1

The views are made from the batch that evaluation prepares, (B, 3, S, S) after the
resize, centre crop and normalisation, with ``torchvision.transforms.v2.functional``:

* ``plain``: the evaluation view itself;
* ``hflip``: its mirror image, only for a run that trained with horizontal flips (the
  run's ``hflip``; an export carries it as ``model.json``'s ``preprocessing.hflip``): a
  model that never saw mirrored digits or text is not asked about them;
* ``crop_center``, ``crop_top_left``, ``crop_top_right``, ``crop_bottom_left``,
  ``crop_bottom_right``: the view enlarged by ``CROP_ZOOM`` and cropped back to S x S at
  the centre and the four corners (torchvision's ``FiveCrop``), so each sees the object a
  little larger and shifted, as training's random crops did.

Resizing a normalised tensor equals normalising the resized image: the normalisation is
affine per channel, and bilinear interpolation commutes with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms.v2 import functional as TF

# Each crop view covers 1 / CROP_ZOOM of the evaluation view's side (87%): the share of a
# 224 px centre crop in timm's 256 px resize, so the crops stay within what the network
# sees at its usual crop_pct.
CROP_ZOOM = 1.15
CROPS = ("crop_center", "crop_top_left", "crop_top_right", "crop_bottom_left",
         "crop_bottom_right")
VIEWS = ("plain", "hflip", *CROPS)


def tta_views(*, hflip: bool) -> list[str]:
    """The views of a run that did (or did not) train with horizontal flips."""
    return [v for v in VIEWS if hflip or v != "hflip"]


def make_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, 3, S, S) -> the view ``name`` of it, (B, 3, S, S)."""
    if name == "plain":
        return x
    if name == "hflip":
        return TF.horizontal_flip(x)
    if name not in CROPS:
        raise ValueError(f"Unknown test-time view '{name}'. Valid views: {', '.join(VIEWS)}.")
    size = list(x.shape[-2:])
    big = TF.resize(x, [round(s * CROP_ZOOM) for s in size], antialias=True)
    top_left, top_right, bottom_left, bottom_right, center = TF.five_crop(big, size)
    return {"crop_center": center, "crop_top_left": top_left, "crop_top_right": top_right,
            "crop_bottom_left": bottom_left, "crop_bottom_right": bottom_right}[name]


@torch.inference_mode()
def tta_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      views: Sequence[str]) -> torch.Tensor:
    """The mean over ``views`` of softmax(forward(view of x)): (B, C) float32.

    ``forward`` maps a (B, 3, S, S) batch to logits; one forward pass per view.
    """
    if not views:
        raise ValueError("Test-time augmentation needs at least one view, e.g. ['plain'].")
    total = None
    for name in views:
        probs = torch.softmax(forward(make_view(x, name)).float(), dim=1)
        total = probs if total is None else total + probs
    return total / len(views)


__all__ = ["CROPS", "CROP_ZOOM", "VIEWS", "make_view", "tta_probabilities", "tta_views"]

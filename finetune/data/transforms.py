"""Albumentations pipelines built from a backbone's ``PretrainedCfg``.

Preprocessing comes from the weights (torchvision's habit), so it cannot drift from them:

    eval:  resize shorter side to floor(size / crop_pct) -> centre crop size x size
           -> Normalize(mean, std) -> CHW float32 tensor
    train: graded by ``level`` (docs/design.md: none for cached features, light for ``linear``,
           stronger for ``full`` and the little-data cells):
             none    the eval pipeline
             light   RandomResizedCrop(scale 0.35..1) + horizontal flip
             medium  light + ColorJitter(0.2, 0.2, 0.2, 0.02) + small Affine
             strong  medium with scale 0.15..1 + blur / noise + CoarseDropout

Downscaling uses area interpolation (``area_for_downscale``): cv2's bilinear and bicubic
kernels alias badly when shrinking a photo several times, while the pretrained weights
were evaluated with PIL's antialiased resize, which area interpolation matches closely.
Upscaling uses the cfg's interpolation.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

# albumentations checks the network for a newer version on import; this toolkit is offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

if TYPE_CHECKING:
    from ..models._base import PretrainedCfg

AUGMENT_LEVELS = ("none", "light", "medium", "strong")

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

# Smallest share of the image a training crop keeps. ImageNet training uses 0.08, which
# throws away the object on small fine-tuning sets; 0.35 keeps most of it.
_MIN_CROP_SCALE = {"light": 0.35, "medium": 0.35, "strong": 0.15}


def min_crop_scale(level: str) -> float:
    """The smallest share of the image area a training crop keeps at ``level`` (1.0 for
    ``none``, whose pipeline is the eval one)."""
    _check_level(level)
    return _MIN_CROP_SCALE.get(level, 1.0)


def _check_level(level: str) -> None:
    if level not in AUGMENT_LEVELS:
        raise ValueError(
            f"Unknown augmentation level '{level}'. Valid levels: {', '.join(AUGMENT_LEVELS)}."
        )


def _interpolation(name: str) -> int:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown interpolation '{name}' in the pretrained config. "
            f"Valid: {', '.join(INTERPOLATIONS)}."
        ) from None


def resolve_sizes(pretrained_cfg: PretrainedCfg, image_size: int | None = None) -> tuple[int, int]:
    """``(crop, resize)``: the network's input side, and the shorter side before cropping.

    ``floor(size / crop_pct)`` as timm computes it (224 / 0.875 = 256), so evaluation
    matches the numbers the weights were published with. ``image_size`` overrides the
    cfg's size and keeps its ``crop_pct``.
    """
    size = int(image_size if image_size is not None else pretrained_cfg.input_size[-1])
    if size < 1:
        raise ValueError(f"image_size={size} must be a positive number of pixels.")
    crop_pct = float(pretrained_cfg.crop_pct)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct={crop_pct} in the pretrained config must be in (0, 1].")
    # The epsilon stops 256.00000000000003 -> 256 being undone by float noise the other way.
    resize = max(size, math.floor(size / crop_pct + 1e-6))
    return size, resize


def jpeg_draft_size(pretrained_cfg: PretrainedCfg, image_size: int | None = None) -> int:
    """The ``draft_size`` to decode JPEGs with (``load_image``): twice the resize target.

    A 12-megapixel phone photo then decodes at 1/4 scale, about 4x faster, and is still
    at least twice the size it is resized to, so the area downscaling that follows sees
    the same detail. Training, evaluation and prediction all use this value.
    """
    return 2 * resolve_sizes(pretrained_cfg, image_size)[1]


def preprocess_spec(pretrained_cfg: PretrainedCfg, image_size: int | None = None) -> dict:
    """What evaluation does to an image, as data: what export records next to the model."""
    size, resize = resolve_sizes(pretrained_cfg, image_size)
    _interpolation(pretrained_cfg.interpolation)
    return {
        # load_image(path, draft_size=...): JPEGs decode at a reduced scale, never below it.
        "jpeg_draft_size": jpeg_draft_size(pretrained_cfg, image_size),
        "input_size": [3, size, size],
        "resize": resize,  # shorter side, aspect ratio kept
        "crop": size,  # centre crop, square
        "interpolation": pretrained_cfg.interpolation,  # used when upscaling
        "downscale_interpolation": "area",  # used when shrinking (antialiased)
        "mean": [float(m) for m in pretrained_cfg.mean],
        "std": [float(s) for s in pretrained_cfg.std],
        "max_pixel_value": 255.0,  # x / 255, then (x - mean) / std
        "channel_order": "RGB",
        "layout": "NCHW",
    }


def _normalize(pretrained_cfg: PretrainedCfg, normalize: bool = True) -> list:
    if not normalize:
        return [ToTensorV2()]  # (H, W, 3) uint8 -> (3, H, W) uint8; normalize_batch() later
    return [
        A.Normalize(mean=tuple(pretrained_cfg.mean), std=tuple(pretrained_cfg.std), max_pixel_value=255.0),
        ToTensorV2(),  # (H, W, 3) float32 -> (3, H, W) tensor
    ]


def normalize_batch(x: torch.Tensor, pretrained_cfg: PretrainedCfg) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised, on x's device: the GPU path.

    Loader workers then ship uint8 (4x fewer bytes through shared and pinned memory) and
    skip the float conversion, which on a GPU machine is what limits the pipeline. The
    arithmetic is A.Normalize's: (x / 255 - mean) / std.
    """
    mean = torch.tensor(pretrained_cfg.mean, device=x.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pretrained_cfg.std, device=x.device).view(1, 3, 1, 1) * 255.0
    return (x.float() - mean) / std


def prepare_batch(x: torch.Tensor, pretrained_cfg: PretrainedCfg) -> torch.Tensor:
    """A loader batch on its device, ready for the model: uint8 batches (the GPU path)
    are normalised here, and CUDA batches go channels_last for the tensor cores."""
    if x.dtype == torch.uint8:
        x = normalize_batch(x, pretrained_cfg)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def build_transform(
    pretrained_cfg: PretrainedCfg,
    *,
    image_size: int | None = None,
    train: bool = False,
    level: str = "light",
    seed: int | None = None,
    hflip: bool = True,
    normalize: bool = True,
) -> A.Compose:
    """The pipeline for an (H, W, 3) uint8 RGB array: ``t(image=x)["image"]`` is a
    (3, size, size) float32 tensor. ``seed`` makes the random augmentations repeatable
    (the training dataset reseeds it at every sample from (seed, epoch, index)). ``hflip=False``
    for data whose mirror image is another thing: text, digits, road signs.
    ``normalize=False`` leaves a uint8 tensor for ``normalize_batch`` on the device."""
    _check_level(level)
    size, resize = resolve_sizes(pretrained_cfg, image_size)
    interp = _interpolation(pretrained_cfg.interpolation)
    if not train or level == "none":
        ops = [
            A.SmallestMaxSize(max_size=resize, interpolation=interp, area_for_downscale="image"),
            A.CenterCrop(height=size, width=size),
        ]
        return A.Compose([*ops, *_normalize(pretrained_cfg, normalize)], seed=seed)

    ops = [
        A.RandomResizedCrop(
            size=(size, size),
            scale=(_MIN_CROP_SCALE[level], 1.0),
            interpolation=interp,
            area_for_downscale="image",
        ),
        A.HorizontalFlip(p=0.5 if hflip else 0.0),
    ]
    if level in ("medium", "strong"):
        strong = level == "strong"
        ops += [
            A.Affine(
                scale=(0.9, 1.1) if strong else (0.95, 1.05),
                translate_percent=(-0.06, 0.06) if strong else (-0.03, 0.03),
                rotate=(-15, 15) if strong else (-8, 8),
                interpolation=interp,
                border_mode=cv2.BORDER_REFLECT_101,  # no black corners for the model to learn
                p=0.5,
            ),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
        ]
    if level == "strong":
        # Dropped patches are filled with the mean colour, which normalises to zero.
        mean_fill = tuple(round(255 * m) for m in pretrained_cfg.mean)
        ops += [
            A.OneOf(
                [
                    A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.5)),
                    A.GaussNoise(std_range=(0.02, 0.08)),
                ],
                p=0.3,
            ),
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.05, 0.2),
                hole_width_range=(0.05, 0.2),
                fill=mean_fill,
                p=0.5,
            ),
        ]
    return A.Compose([*ops, *_normalize(pretrained_cfg, normalize)], seed=seed)

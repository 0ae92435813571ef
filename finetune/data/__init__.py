"""The data layer: find and split the images, decode them, augment them, batch them.

    from finetune.data import discover, FinetuneDataModule
    splits = discover("my_images", seed=0)            # verified, stratified, seeded
    dm = FinetuneDataModule(splits, model.pretrained_cfg, augment="light")

``transforms`` and ``datamodule`` import albumentations and Lightning; they load on first
use, so that code that only discovers or decodes images does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, ImageDecodeError, is_image_file, load_image
from .sources import (
    BUILTIN_PREFIX,
    DataError,
    DataSplits,
    discover,
    files_fingerprint,
    load_splits,
    save_splits,
)

if TYPE_CHECKING:
    from .builtin import BUILTIN_DATASETS, build_dataset, resolve_data
    from .datamodule import FinetuneDataModule, ImageDataset
    from .transforms import AUGMENT_LEVELS, build_transform, jpeg_draft_size, preprocess_spec

# builtin is lazy too: `python -m finetune.data.builtin` must not find it imported already.
_LAZY = {
    "BUILTIN_DATASETS": "builtin",
    "build_dataset": "builtin",
    "resolve_data": "builtin",
    "FinetuneDataModule": "datamodule",
    "ImageDataset": "datamodule",
    "AUGMENT_LEVELS": "transforms",
    "build_transform": "transforms",
    "jpeg_draft_size": "transforms",
    "preprocess_spec": "transforms",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUGMENT_LEVELS",
    "BUILTIN_DATASETS",
    "BUILTIN_PREFIX",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "DataError",
    "DataSplits",
    "FinetuneDataModule",
    "ImageDataset",
    "ImageDecodeError",
    "build_dataset",
    "build_transform",
    "discover",
    "files_fingerprint",
    "is_image_file",
    "jpeg_draft_size",
    "load_image",
    "load_splits",
    "preprocess_spec",
    "resolve_data",
    "save_splits",
]

"""Decoded images on disk: decode and shrink every file once, then read pixels by memory map.

Training that runs the backbone (``partial``, ``full``, ``lp-ft``'s second phase) decodes
every image again in every epoch. For PNGs of a few hundred pixels the decode is about
80 % of a loader worker's time (``benchmarks/loader.py``), and on a GPU machine the
workers, not the GPU, set the pace. The image cache pays the decode once: each image goes
through ``load_image`` (EXIF, modes, every check), is shrunk so that its shorter side is
at most ``side``, and its raw uint8 pixels are appended to one file. Later epochs, and
later runs on the same files, read them back through a memory map: a copy instead of a
decode, with the page cache (or the disk) holding the data rather than process memory.

What is stored, and why it is safe:

* evaluation (``side`` = the eval transform's resize target): the cached image is exactly
  what the transform's own ``SmallestMaxSize`` step produces, made by that same
  albumentations op, so the eval pipeline on a cached image gives bit-identical input
  (the transform's resize then has nothing left to do);
* training (``train_side``): the random crop is cut from an image whose shorter side is at
  most ``max(resize, ceil(size / sqrt(min_scale)))``; the smallest square crop the
  augmentation level allows still has ``size`` pixels a side, so crops are shrunk, never
  enlarged, exactly as from the full-resolution file, up to the small difference between
  one area resize and two;
* images already smaller than ``side`` are stored as decoded: upscaling stays in the
  transform.

An entry is ``<cache_dir>/<key[:2]>/<key>/`` with ``pixels.u8`` (raw bytes, image after
image), ``index.npy`` (int64 (N, 3): byte offset, height, width) and ``meta.json``,
written into a temporary folder (``meta.json`` last) and renamed into place, as the
feature cache does (``finetune.io.publish_dir``). The key covers the files (resolved
path, size, mtime, label, order), ``side``, the JPEG draft size and ``CACHE_VERSION``.
Before writing, the entry's size is computed from the image headers and compared with
the free disk space: a cache that cannot fit fails at once, naming the numbers and the
fix, not halfway through.

The cache lives in ``~/.cache/finetune/images`` unless ``FINETUNE_IMAGE_CACHE_DIR`` (or
the run's ``image_cache_dir``) says otherwise. Delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..io import TMP_PREFIX, atomic_write_json, publish_dir, remove_stale_tmp, writing
from .images import load_image
from .sources import DataError, files_fingerprint

log = logging.getLogger("finetune")

# Bump when the entry layout, the key or the way images are decoded or shrunk changes.
CACHE_VERSION = 1
ENV_CACHE_DIR = "FINETUNE_IMAGE_CACHE_DIR"
_META = "meta.json"
_PIXELS = "pixels.u8"
_INDEX = "index.npy"
# Left free on the disk after the entry is written: the cache must not fill it.
_DISK_MARGIN_BYTES = 512 * 2**20


def default_image_cache_dir() -> Path:
    """``$FINETUNE_IMAGE_CACHE_DIR`` if set, else ``~/.cache/finetune/images``."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "finetune" / "images"


def train_side(size: int, resize: int, min_scale: float) -> int:
    """The shorter side a training image is cached at (see the module docstring)."""
    return max(resize, math.ceil(size / math.sqrt(min_scale)))


def _shrunk_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(H, W) after shrinking the shorter side to ``side``; unchanged when already smaller.
    The rounding is albumentations' ``SmallestMaxSize``'s, which does the shrinking."""
    short = min(height, width)
    if short <= side:
        return height, width
    scale = side / short
    return round(height * scale), round(width * scale)


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    import albumentations as A
    import cv2

    if min(image.shape[:2]) <= side:
        return image
    op = A.SmallestMaxSize(max_size=side, interpolation=cv2.INTER_AREA, area_for_downscale="image")
    return op(image=image)["image"]


# ------------------------------------------------------------------------- reading
class ImageStore:
    """The cached images of one entry, by sample index: ``store[i]`` is an (H, W, 3)
    uint8 array (a private, writable copy). The memory map is opened lazily and never
    pickled, so each DataLoader worker maps the file itself."""

    def __init__(self, entry: str | Path) -> None:
        self.entry = Path(entry)
        meta = json.loads((self.entry / _META).read_text())
        self.num_samples = int(meta["num_samples"])
        self.side = int(meta["side"])
        self._pixels: np.ndarray | None = None
        self._index: np.ndarray | None = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pixels is None or self._index is None:
            size = (self.entry / _PIXELS).stat().st_size
            # np.memmap refuses an empty file: an entry of zero images has no pixels.
            self._pixels = (np.memmap(self.entry / _PIXELS, dtype=np.uint8, mode="r")
                            if size else np.zeros(0, dtype=np.uint8))
            self._index = np.load(self.entry / _INDEX)
        return self._pixels, self._index

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        pixels, index = self._open()
        offset, height, width = (int(v) for v in index[i])
        return np.array(pixels[offset:offset + height * width * 3]).reshape(height, width, 3)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None, "_index": None}


def read_entry(entry: Path, key: str) -> ImageStore | None:
    """The entry's store if it is complete and is the one for ``key``; else ``None``."""
    try:
        meta = json.loads((entry / _META).read_text())
        sizes = {name: (entry / name).stat().st_size for name in (_PIXELS, _INDEX)}
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
        return None
    if sizes != meta.get("bytes"):
        return None
    return ImageStore(entry)


# ------------------------------------------------------------------------- writing
def cache_key(samples: Sequence[tuple[str, int]], *, side: int, draft_size: int | None) -> str:
    """A hash of everything the cached pixels depend on."""
    blob = json.dumps({"version": CACHE_VERSION, "files": files_fingerprint(samples),
                       "side": side, "draft_size": draft_size}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def estimate_bytes(samples: Sequence[tuple[str, int]], side: int) -> int:
    """The entry's pixel bytes, from the image headers (no decoding): an upper bound,
    since a JPEG decoded in draft mode may come out smaller."""
    total = 0
    for path, _ in samples:
        with Image.open(path) as im:
            width, height = im.size  # EXIF rotation swaps them, which keeps the product
        h, w = _shrunk_shape(height, width, side)
        total += h * w * 3
    return total


def _check_disk(cache_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(cache_dir).free
    if needed + _DISK_MARGIN_BYTES > free:
        raise DataError(
            f"The image cache needs {needed / 2**30:.2f} GiB in {cache_dir}, which has "
            f"{free / 2**30:.2f} GiB free (and {_DISK_MARGIN_BYTES // 2**20} MiB are kept "
            f"spare). Point it at a bigger disk with --image-cache-dir (or "
            f"{ENV_CACHE_DIR}), or train without --image-cache."
        )


class _Decode(Dataset):
    """One sample decoded and shrunk: what a DataLoader worker produces for the cache."""

    def __init__(self, samples: Sequence[tuple[str, int]], side: int, draft_size: int | None) -> None:
        self.paths = [path for path, _ in samples]
        self.side = side
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_image(self.paths[i], draft_size=self.draft_size)
        return torch.from_numpy(np.ascontiguousarray(_shrink(image, self.side)))


def _write_entry(tmp: Path, key: str, samples: Sequence[tuple[str, int]], *, side: int,
                 draft_size: int | None, num_workers: int) -> None:
    # An own generator: iterating a DataLoader draws its base seed from the generator it
    # is given, or else from torch's global one, which would shift the run's head init
    # and dropout, so that a run with the cache would not repeat a run without it.
    loader = DataLoader(_Decode(samples, side, draft_size), batch_size=None,
                        num_workers=num_workers, shuffle=False, generator=torch.Generator())
    index = np.zeros((len(samples), 3), dtype=np.int64)
    offset = 0
    with open(tmp / _PIXELS, "wb") as f:
        for i, image in enumerate(loader):
            height, width, _ = image.shape
            index[i] = (offset, height, width)
            data = image.numpy().tobytes()
            f.write(data)
            offset += len(data)
        f.flush()
        os.fsync(f.fileno())
    np.save(tmp / _INDEX, index)
    with open(tmp / _INDEX, "rb") as f:
        os.fsync(f.fileno())
    atomic_write_json(tmp / _META, {  # the completion marker: written last
        "key": key,
        "version": CACHE_VERSION,
        "num_samples": len(samples),
        "side": side,
        "draft_size": draft_size,
        "bytes": {name: (tmp / name).stat().st_size for name in (_PIXELS, _INDEX)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def cached_images(
    samples: Sequence[tuple[str, int]],
    *,
    side: int,
    draft_size: int | None = None,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    desc: str = "images",
) -> ImageStore:
    """The decoded images of ``samples``, shrunk to ``side`` on the shorter side, from the
    cache or decoded now (in ``num_workers`` processes) and stored."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_image_cache_dir()
    key = cache_key(samples, side=side, draft_size=draft_size)
    entry = cache_dir / key[:2] / key
    hit = read_entry(entry, key)
    if hit is not None:
        log.info("%s: %d decoded images reused from %s.", desc, len(hit), entry)
        return hit

    entry.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(cache_dir)
    needed = estimate_bytes(samples, side)
    _check_disk(cache_dir, needed)
    start = time.perf_counter()
    fix = (f"free space in {cache_dir}, point --image-cache-dir (or {ENV_CACHE_DIR}) at a "
           f"bigger disk, or train without --image-cache; no part of the entry was kept")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key[:16]}-", dir=entry.parent))
    try:
        with writing(entry, fix, whole=True):
            _write_entry(tmp, key, samples, side=side, draft_size=draft_size,
                         num_workers=num_workers)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, entry, lambda e: read_entry(e, key) is not None)
    store = read_entry(entry, key)
    if store is None:
        raise RuntimeError(f"The image cache entry {entry} was written but cannot be read back.")
    log.info("%s: %d images decoded and cached (%.1f MB, shorter side <= %d px) in %.1f s, in %s.",
             desc, len(store), needed / 1e6, side, time.perf_counter() - start, entry)
    return store


__all__ = [
    "CACHE_VERSION",
    "ENV_CACHE_DIR",
    "ImageStore",
    "cache_key",
    "cached_images",
    "default_image_cache_dir",
    "estimate_bytes",
    "read_entry",
    "train_side",
]

"""A disk cache of frozen-backbone features: extract once, reuse across runs.

A linear probe never needs the frozen backbone twice for the same image: its pooled
output depends only on the backbone's weights, the evaluation preprocessing and the
image file. Those three make the cache key:

* the weights: a SHA-256 over every tensor of the backbone's ``state_dict`` (names,
  dtypes, shapes, bytes; BatchNorm statistics included) except the classifier, which the
  features do not pass through and which is freshly initialised per run;
* the preprocessing: ``preprocess_spec`` (size, resize, crop, interpolation, mean, std,
  JPEG draft size) and how the forward ran (float32 on CPU, bf16 autocast on CUDA);
* the files: each sample's resolved path, size in bytes, modification time in
  nanoseconds and label. Contents are not hashed (that would read every image again on
  every hit); rewriting a file changes its mtime, which is what invalidates it.

An entry is a folder ``<cache_dir>/<key[:2]>/<key>/`` with ``features.npy`` (float32
(N, D)), ``labels.npy`` (int64 (N,)) and ``meta.json``. It is written into a temporary
sibling folder, ``meta.json`` last, then renamed into place with ``os.replace``: a crash
leaves a temporary folder that lookups ignore, never a half-written entry, and a reader
trusts an entry only when ``meta.json`` matches the key and the array files have exactly
the sizes it records. Features are read through ``np.load(mmap_mode="r")``, so training
on a dataset whose features exceed the RAM pages them in as needed.

The cache lives in ``~/.cache/finetune/features`` unless ``FINETUNE_CACHE_DIR`` (or the
run's ``feature_cache_dir``) says otherwise. Under DDP every rank computes the same key;
each extracts on a miss and the first rename wins (the others drop their copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..config import RunConfig
from ..data import FinetuneDataModule, files_fingerprint
from ..data.transforms import preprocess_spec
from ..io import TMP_PREFIX, atomic_write_json, publish_dir, remove_stale_tmp, writing
from ..models import Backbone
from .features import iter_features

log = logging.getLogger("finetune")

# Bump when the entry layout, the key or the way features are computed changes.
CACHE_VERSION = 1
ENV_CACHE_DIR = "FINETUNE_CACHE_DIR"
_META = "meta.json"
_FEATURES = "features.npy"
_LABELS = "labels.npy"


def default_cache_dir() -> Path:
    """``$FINETUNE_CACHE_DIR`` if set, else ``~/.cache/finetune/features``."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "finetune" / "features"


# ------------------------------------------------------------------------- the key
def backbone_fingerprint(model: Backbone) -> str:
    """SHA-256 of the backbone's tensors that the pooled features depend on.

    The classifier is left out: it is not on the feature path, and it is a fresh random
    layer in every run. Hashing ~20 MB (EfficientNet-Lite0) takes tens of milliseconds.
    """
    head = {id(t) for t in model.get_classifier().state_dict(keep_vars=True).values()}
    digest = hashlib.sha256(model.variant.encode("utf-8"))
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in head:
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Through uint8 so that every dtype (bf16 included) hashes its raw bytes.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(*, backbone: str, preprocess: dict, files: str, compute: str) -> str:
    """The entry name: a hash of everything the cached features depend on."""
    blob = json.dumps(
        {"version": CACHE_VERSION, "backbone": backbone, "preprocess": preprocess,
         "files": files, "compute": compute},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def compute_spec(device: torch.device) -> str:
    """How the forward ran: features from bf16 autocast differ from float32 ones."""
    return "cuda-bf16-autocast" if device.type == "cuda" else f"{device.type}-float32"


# ------------------------------------------------------------------------- reading
class FeatureDataset(Dataset):
    """``(feature (D,) float32 tensor, label)`` pairs read from a memory-mapped entry.

    ``__getitems__`` serves a whole batch with one fancy-index read of the memmap
    (the DataLoader uses it when present), which is much faster than row by row. The
    memmap is opened lazily and never pickled, so workers and spawned DDP processes open
    their own view of the file instead of receiving a copy of the data.
    """

    def __init__(self, entry: str | Path) -> None:
        self.entry = Path(entry)
        meta = json.loads((self.entry / _META).read_text())
        self.num_samples = int(meta["num_samples"])
        self.num_features = int(meta["num_features"])
        self._features: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._features is None or self._labels is None:
            self._features = np.load(self.entry / _FEATURES, mmap_mode="r")  # (N, D) float32
            self._labels = np.load(self.entry / _LABELS)  # (N,) int64, small
        return self._features, self._labels

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        feats, labels = self._open()
        return torch.from_numpy(np.array(feats[i])), int(labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        feats, labels = self._open()
        rows = torch.from_numpy(np.asarray(feats[np.asarray(indices)]))  # (B, D), a copy
        return list(zip(rows, labels[indices].tolist(), strict=True))

    @property
    def labels(self) -> np.ndarray:
        return self._open()[1]

    def chunks(self, size: int = 8192):
        """``(features (n, D) tensor, labels (n,) tensor)`` in file order, ``size`` rows
        at a time: a pass over the whole split that never holds all of it in memory."""
        feats, labels = self._open()
        for start in range(0, self.num_samples, size):
            stop = min(start + size, self.num_samples)
            yield (torch.from_numpy(np.array(feats[start:stop])),
                   torch.from_numpy(np.array(labels[start:stop])))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_features": None, "_labels": None}


def _entry_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / key


def read_entry(entry: Path, key: str) -> FeatureDataset | None:
    """The entry's dataset if it is complete and is the one for ``key``; else ``None``."""
    try:
        meta = json.loads((entry / _META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
        return None
    for name in (_FEATURES, _LABELS):
        try:
            size = (entry / name).stat().st_size
        except OSError:
            return None
        if size != meta.get("bytes", {}).get(name):
            return None
    return FeatureDataset(entry)


# ------------------------------------------------------------------------- writing
def _write_entry(
    tmp: Path, key: str, model: Backbone, loader: DataLoader, num_samples: int, *,
    device: torch.device, desc: str, progress: bool, info: dict,
) -> None:
    """Stream the features batch by batch into ``tmp``; ``meta.json`` last."""
    feats = np.lib.format.open_memmap(
        tmp / _FEATURES, mode="w+", dtype=np.float32, shape=(num_samples, model.num_features)
    )
    labels = np.empty(num_samples, dtype=np.int64)
    row = 0
    for f, y in iter_features(model, loader, device=device, desc=desc, progress=progress):
        n = f.shape[0]
        if row + n > num_samples:
            raise RuntimeError(f"The loader gave more than the {num_samples} samples it announced.")
        feats[row:row + n] = f.numpy()
        labels[row:row + n] = y.numpy()
        row += n
    if row != num_samples:
        raise RuntimeError(f"The loader gave {row} samples, expected {num_samples}.")
    feats.flush()
    del feats
    np.save(tmp / _LABELS, labels)
    for name in (_FEATURES, _LABELS):
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    meta = {
        "key": key,
        "version": CACHE_VERSION,
        "num_samples": num_samples,
        "num_features": model.num_features,
        "bytes": {name: (tmp / name).stat().st_size for name in (_FEATURES, _LABELS)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
    }
    atomic_write_json(tmp / _META, meta)  # the completion marker: written last


def cached_features(
    model: Backbone,
    loader: DataLoader,
    samples: Sequence[tuple[str, int]],
    *,
    preprocess: dict,
    device: torch.device,
    cache_dir: str | Path | None = None,
    fingerprint: str | None = None,
    desc: str = "features",
    progress: bool = True,
) -> tuple[FeatureDataset, bool]:
    """The features of ``samples`` (which ``loader`` yields in the same order), from
    the cache or extracted now and stored; also whether it was a cache hit.

    ``preprocess`` is the loader's evaluation transform as data (``preprocess_spec``);
    ``fingerprint`` saves re-hashing the backbone when several splits share it.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = fingerprint or backbone_fingerprint(model)
    key = cache_key(backbone=fingerprint, preprocess=preprocess,
                    files=files_fingerprint(samples), compute=compute_spec(device))
    entry = _entry_dir(cache_dir, key)
    hit = read_entry(entry, key)
    if hit is not None:
        log.info("%s: %d cached features reused from %s.", desc, len(hit), entry)
        return hit, True

    entry.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(cache_dir)
    fix = (f"free space in {cache_dir} or point --feature-cache-dir (or {ENV_CACHE_DIR}) "
           f"at a bigger disk; no part of the entry was kept")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key[:16]}-", dir=entry.parent))
    try:
        info = {"backbone": model.variant, "backbone_sha256": fingerprint,
                "preprocess": preprocess, "compute": compute_spec(device)}
        with writing(entry, fix, whole=True):
            _write_entry(tmp, key, model, loader, len(samples), device=device, desc=desc,
                         progress=progress, info=info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, entry, lambda e: read_entry(e, key) is not None)
    result = read_entry(entry, key)
    if result is None:
        raise RuntimeError(f"The feature cache entry {entry} was written but cannot be read back.")
    log.info("%s: %d features extracted and cached in %s.", desc, len(result), entry)
    return result, False


def feature_splits(
    model: Backbone, dm: FinetuneDataModule, cfg: RunConfig, device: torch.device, progress: bool,
    names: Sequence[str] = ("train", "val", "test"),
) -> tuple[dict[str, Dataset], float, dict[str, bool]]:
    """Pooled features of the splits ``names`` (default all), from the disk cache
    (``feature_cache``) or from one pass of the frozen backbone now; also which splits
    were cache hits."""
    start = time.perf_counter()
    preprocess = preprocess_spec(model.pretrained_cfg, dm.image_size)
    fingerprint = backbone_fingerprint(model)  # hashed once for the three splits
    cached: dict[str, Dataset] = {}
    hits: dict[str, bool] = {}
    for split in names:
        samples = getattr(dm.splits, split)
        if not samples:
            cached[split] = TensorDataset(torch.zeros(0, model.num_features), torch.zeros(0, dtype=torch.long))
            continue
        cached[split], hits[split] = cached_features(
            model, dm.eval_dataloader(split), samples, preprocess=preprocess, device=device,
            cache_dir=cfg.feature_cache_dir, fingerprint=fingerprint, desc=f"features {split}",
            progress=progress,
        )
    return cached, time.perf_counter() - start, hits


__all__ = [
    "feature_splits",
    "CACHE_VERSION",
    "ENV_CACHE_DIR",
    "FeatureDataset",
    "backbone_fingerprint",
    "cache_key",
    "cached_features",
    "compute_spec",
    "default_cache_dir",
    "read_entry",
]

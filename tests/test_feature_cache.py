"""The on-disk feature cache: keyed by weights, preprocessing and files; never trusts a
partial entry; reused across runs (the backbone does not run again)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from finetune.data import discover, preprocess_spec
from finetune.data.datamodule import ImageDataset
from finetune.data.transforms import build_transform
from finetune.models import create_backbone
from finetune.training.feature_cache import (
    FeatureDataset,
    backbone_fingerprint,
    cached_features,
    default_cache_dir,
    read_entry,
)
from finetune.training.features import extract_features

DEVICE = torch.device("cpu")
SIZE = 32


# Batches of four 32 px images.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_backbone("efficientnet_lite0", pretrained=False, num_classes=3).eval()


@pytest.fixture
def data(photos_dir, tmp_path):
    """Two classes, 6 images each, copied so that tests may rewrite them."""
    root = tmp_path / "data"
    for cls in sorted(p for p in photos_dir.iterdir() if p.is_dir())[:2]:
        (root / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.png"))[:6]:
            shutil.copy2(f, root / cls.name / f.name)
    return root


class ForwardCounter:
    """Counts images through the backbone's ``forward_features``."""

    def __init__(self, model, monkeypatch):
        self.images = 0
        original = model.forward_features

        def counted(x):
            self.images += x.shape[0]
            return original(x)

        monkeypatch.setattr(model, "forward_features", counted)


def _features(model, samples, cache_dir, *, size=SIZE):
    transform = build_transform(model.pretrained_cfg, image_size=size, train=False)
    loader = DataLoader(ImageDataset(samples, transform), batch_size=4)
    return cached_features(model, loader, samples, preprocess=preprocess_spec(model.pretrained_cfg, size),
                           device=DEVICE, cache_dir=cache_dir, progress=False)


def _entries(cache_dir):
    return sorted(p for p in cache_dir.glob("*/*") if not p.name.startswith("."))


def test_miss_then_hit_without_running_the_backbone(model, data, tmp_path, monkeypatch):
    samples = discover(data, val_fraction=0, test_fraction=0).train
    counter = ForwardCounter(model, monkeypatch)
    first, hit = _features(model, samples, tmp_path / "cache")
    assert not hit and counter.images == len(samples) == 12
    again, hit = _features(model, samples, tmp_path / "cache")
    assert hit and counter.images == 12  # no forward pass on a hit
    assert len(_entries(tmp_path / "cache")) == 1

    # The memmap holds exactly what a direct extraction computes, in sample order.
    transform = build_transform(model.pretrained_cfg, image_size=SIZE, train=False)
    feats, labels = extract_features(model, DataLoader(ImageDataset(samples, transform), batch_size=5),
                                     device=DEVICE, progress=False)
    batch = next(iter(DataLoader(again, batch_size=len(again))))
    torch.testing.assert_close(batch[0], feats, rtol=1e-5, atol=1e-5)
    assert batch[1].tolist() == labels.tolist() == [label for _, label in samples]
    assert isinstance(np.load(again.entry / "features.npy", mmap_mode="r"), np.memmap)
    assert again[3][0].shape == (model.num_features,)


def test_file_content_image_size_and_weights_invalidate(model, data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    samples = discover(data, val_fraction=0, test_fraction=0).train
    _features(model, samples, cache)

    # A rewritten image (new content, hence new size / mtime) is a miss.
    path = samples[0][0]
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # even with an old timestamp: the size changed
    changed, hit = _features(model, samples, cache)
    assert not hit
    assert not torch.equal(changed[0][0], _features(model, samples, tmp_path / "fresh")[0][1][0])

    # Another image size is another preprocessing: a miss.
    _, hit = _features(model, samples, cache, size=SIZE + 32)
    assert not hit

    # New classifier only: the features do not pass through it, so still a hit.
    fp = backbone_fingerprint(model)
    model.reset_classifier(5)
    assert backbone_fingerprint(model) == fp
    _, hit = _features(model, samples, cache)
    assert hit

    # Different backbone weights (one BN statistic): a miss.
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_mean[0] += 1.0
    try:
        assert backbone_fingerprint(model) != fp
        _, hit = _features(model, samples, cache)
        assert not hit
    finally:
        with torch.no_grad():
            bn.running_mean[0] -= 1.0


def test_partial_entries_are_never_trusted(model, data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    samples = discover(data, val_fraction=0, test_fraction=0).train
    good, _ = _features(model, samples, cache)
    entry = good.entry
    expected = np.load(entry / "features.npy").copy()
    counter = ForwardCounter(model, monkeypatch)

    # A crash before the completion marker: features written, meta.json missing.
    (entry / "meta.json").unlink()
    assert read_entry(entry, entry.name) is None
    redone, hit = _features(model, samples, cache)
    assert not hit and counter.images == 12
    np.testing.assert_allclose(np.load(redone.entry / "features.npy"), expected, rtol=1e-6)

    # A truncated feature file under an intact marker (a damaged disk): not trusted.
    with open(entry / "features.npy", "r+b") as f:
        f.truncate(1000)
    assert read_entry(entry, entry.name) is None
    _, hit = _features(model, samples, cache)
    assert not hit and counter.images == 24
    assert read_entry(entry, entry.name) is not None

    # A marker for another key (a copied folder) is not this entry.
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"] == entry.name and meta["num_samples"] == 12
    assert read_entry(entry, "0" * 64) is None

    # Leftover temporary folders of a killed writer are ignored by lookups.
    (entry.parent / ".tmp-deadbeef-123").mkdir()
    _, hit = _features(model, samples, cache)
    assert hit and counter.images == 24


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("FINETUNE_CACHE_DIR")
    assert default_cache_dir() == default_cache_dir().home() / ".cache" / "finetune" / "features"


def test_dataset_pickles_without_its_data(model, data, tmp_path):
    import pickle

    samples = discover(data, val_fraction=0, test_fraction=0).train
    ds, _ = _features(model, samples, tmp_path / "cache")
    _ = ds[0]  # opens the memmap
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # a path and sizes, not 12 x 1280 floats
    again = pickle.loads(blob)
    torch.testing.assert_close(again[5][0], ds[5][0])
    assert isinstance(ds, FeatureDataset)

"""The decoded-image cache: eval input bit-identical to decoding, training crops from an
image that keeps their resolution, keyed by the files, never half-written, refused up
front when the disk is too small, and a whole run unchanged by it."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.config import RunConfig
from finetune.data import DataError, discover
from finetune.data import image_cache as ic
from finetune.data.datamodule import FinetuneDataModule
from finetune.data.images import load_image
from finetune.training import run
from finetune.training.trainer import quiet_lightning


@pytest.fixture(scope="module")
def cfg(lite0):
    """The default backbone's preprocessing (size, mean, std, interpolation)."""
    return lite0.pretrained_cfg


@pytest.fixture
def data(tmp_path):
    """Two classes of real photo crops, non-square and of several sizes, PNG and JPEG,
    one JPEG stored sideways with an EXIF orientation tag."""
    from skimage import data as skdata

    root = tmp_path / "data"
    sources = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee()}
    rng = np.random.default_rng(0)
    for name, photo in sources.items():
        (root / name).mkdir(parents=True)
        for i in range(6):
            h, w = int(rng.integers(90, 300)), int(rng.integers(90, 300))
            y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
            im = Image.fromarray(photo[y:y + h, x:x + w])
            if i % 3 == 0:
                im.save(root / name / f"{i}.png")
            elif i % 3 == 1:
                im.save(root / name / f"{i}.jpg", quality=90)
            else:
                exif = Image.Exif()
                exif[0x0112] = 6  # rotate 90 degrees on display
                im.save(root / name / f"{i}.jpg", quality=90, exif=exif)
    return root


def _module(splits, cfg, tmp_path, *, cache: bool, augment: str = "light", workers: int = 0):
    return FinetuneDataModule(splits, cfg, image_size=64, augment=augment, batch_size=4,
                              num_workers=workers, image_cache=cache,
                              image_cache_dir=str(tmp_path / "images"))


def test_eval_input_is_bit_identical_to_decoding(data, cfg, tmp_path):
    splits = discover(data, val_fraction=0.3, test_fraction=0.3, seed=0)
    plain = _module(splits, cfg, tmp_path, cache=False)
    cached = _module(splits, cfg, tmp_path, cache=True)
    for split in ("train", "val", "test"):
        a = plain.eval_dataloader(split).dataset
        b = cached.eval_dataloader(split).dataset
        assert b.store is not None and len(a) == len(b) > 0
        for i in range(len(a)):
            assert torch.equal(a[i][0], b[i][0]), f"{split} sample {i} differs"


def test_images_are_shrunk_to_the_side_and_small_ones_kept(data, tmp_path):
    samples = sorted((str(p), 0) for p in data.rglob("*.*"))
    side = 100
    store = ic.cached_images(samples, side=side, cache_dir=tmp_path / "c")
    kept = shrunk = 0
    for i, (path, _) in enumerate(samples):
        original = load_image(path)  # EXIF applied, as the cache must too
        image = store[i]
        if min(original.shape[:2]) <= side:
            np.testing.assert_array_equal(image, original)
            kept += 1
        else:
            assert min(image.shape[:2]) == side
            # the aspect ratio survives (within a rounded pixel)
            ratio = original.shape[0] / original.shape[1]
            assert image.shape[0] / image.shape[1] == pytest.approx(ratio, abs=2 / side)
            shrunk += 1
    assert kept and shrunk  # the fixture exercises both branches


def test_training_side_keeps_the_smallest_crop_at_full_resolution(cfg, tmp_path, photos_dir):
    splits = discover(photos_dir, seed=0)
    dm = _module(splits, cfg, tmp_path, cache=False, augment="light")
    size, side = 64, dm.train_side
    # RandomResizedCrop's smallest square crop keeps 35 % of the area at `light`.
    assert side * (0.35 ** 0.5) >= size
    assert dm.eval_side == 73  # floor(64 / 0.875)
    strong = _module(splits, cfg, tmp_path, cache=False, augment="strong")
    assert strong.train_side > side  # 15 % crops need a bigger source


def test_a_second_build_reads_the_cache_and_a_changed_file_misses(data, tmp_path, monkeypatch):
    samples = sorted((str(p), i % 2) for i, p in enumerate(data.rglob("*.*")))
    first = ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit must not decode")

    monkeypatch.setattr(ic, "load_image", no_decoding)
    second = ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")
    assert second.entry == first.entry
    monkeypatch.undo()

    path = samples[0][0]
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    third = ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")
    assert third.entry != first.entry
    other_side = ic.cached_images(samples, side=81, cache_dir=tmp_path / "c")
    assert other_side.entry not in (first.entry, third.entry)


def test_workers_build_the_same_entry_as_the_main_process(data, tmp_path):
    samples = sorted((str(p), 0) for p in data.rglob("*.*"))
    serial = ic.cached_images(samples, side=90, cache_dir=tmp_path / "a")
    parallel = ic.cached_images(samples, side=90, cache_dir=tmp_path / "b", num_workers=2)
    for name in ("pixels.u8", "index.npy"):
        assert (serial.entry / name).read_bytes() == (parallel.entry / name).read_bytes()


def test_a_failed_build_leaves_nothing(data, tmp_path, monkeypatch):
    samples = sorted((str(p), 0) for p in data.rglob("*.*"))
    calls = {"n": 0}
    real = ic.load_image

    def fails_on_the_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(ic, "load_image", fails_on_the_fifth)
    with pytest.raises(OSError, match="disk gone"):
        ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")
    leftovers = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert leftovers == []
    monkeypatch.undo()
    store = ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")
    assert len(store) == len(samples)


def test_a_damaged_entry_is_rebuilt(data, tmp_path):
    samples = sorted((str(p), 0) for p in data.rglob("*.*"))
    store = ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")
    expected = store[3]
    with open(store.entry / "pixels.u8", "r+b") as f:
        f.truncate(100)
    again = ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again[3], expected)


def test_too_little_disk_fails_before_writing(data, tmp_path, monkeypatch):
    samples = sorted((str(p), 0) for p in data.rglob("*.*"))
    needed = ic.estimate_bytes(samples, 80)
    written = ic.cached_images(samples, side=80, cache_dir=tmp_path / "reference")
    assert needed == (written.entry / "pixels.u8").stat().st_size  # exact without JPEG drafts
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ic.shutil, "disk_usage",
                        lambda p: usage._replace(free=needed))  # no room for the margin
    with pytest.raises(DataError, match="--image-cache-dir"):
        ic.cached_images(samples, side=80, cache_dir=tmp_path / "c")
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]


@pytest.mark.slow
def test_a_run_with_the_cache_trains_the_same_weights(photos_dir, tmp_path):
    """96 px photos, 64 px crops: the training side (109 px) keeps every image as
    decoded and eval input is bit-identical, so with one loader process and one seed the
    run must end with the same weights and the same metrics."""
    results = {}
    for cache in (False, True):
        cfg = RunConfig(data=str(photos_dir), backbone="efficientnet_lite0", strategy="partial",
                        unfreeze=1, epochs=1, image_size=64, batch_size=16, num_workers=0,
                        output=str(tmp_path / f"run-{cache}"), image_cache=cache,
                        image_cache_dir=str(tmp_path / "images"))
        with quiet_lightning():
            results[cache] = run(cfg, progress=False)
    assert any((tmp_path / "images").rglob("pixels.u8"))
    a, b = (torch.load(results[c].run_dir / "checkpoints" / "last.ckpt", weights_only=True,
                       map_location="cpu")["state_dict"] for c in (False, True))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert results[False].metrics["test"] == results[True].metrics["test"]

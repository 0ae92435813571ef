"""The data layer: discovery and splits, decoding, transforms, the datamodule, built-ins."""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from finetune.data import (
    AUGMENT_LEVELS,
    DataError,
    DataSplits,
    FinetuneDataModule,
    ImageDataset,
    ImageDecodeError,
    build_transform,
    discover,
    load_image,
    load_splits,
    preprocess_spec,
    save_splits,
)
from finetune.data.builtin import BUILTIN_DATASETS, PHOTO_SOURCES, build_dataset, main
from finetune.models import PretrainedCfg

# Distinct colours per class, so a mislabelled file would show in the pixels.
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 210), (200, 200, 40), (150, 40, 160)]


def write_png(path: Path, colour=(128, 128, 128), size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def make_class_folders(root: Path, counts: dict[str, int]) -> Path:
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / name / f"{i:03d}.png", COLOURS[k % len(COLOURS)])
    return root


def labels_of(samples) -> list[int]:
    return [label for _, label in samples]


# --------------------------------------------------------------------------- discovery


def test_class_folders_stratified_split(tmp_path):
    root = make_class_folders(tmp_path / "data", {"dog": 20, "cat": 10, "emu": 7})
    splits = discover(root, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert splits.source == "class-folders"
    assert splits.classes == ["cat", "dog", "emu"]  # sorted; label = index
    # Per class: round(n * 0.2) to val and test, the rest train (7 * 0.2 = 1.4 -> 1).
    assert splits.counts("train") == [6, 12, 5]
    assert splits.counts("val") == [2, 4, 1]
    assert splits.counts("test") == [2, 4, 1]
    paths = [p for s in ("train", "val", "test") for p, _ in splits.samples(s)]
    assert len(paths) == len(set(paths)) == 37
    for split in ("train", "val", "test"):
        for path, label in splits.samples(split):
            assert os.path.isabs(path)
            assert Path(path).parent.name == splits.classes[label]
    assert splits.skipped == []


def test_split_is_seeded(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 30, "b": 30})
    first = discover(root, seed=1, verify=False)
    again = discover(root, seed=1, verify=False)
    other = discover(root, seed=2, verify=False)
    assert first.to_json() == again.to_json()
    assert first.val != other.val
    assert first.counts("val") == other.counts("val") == [5, 5]  # 30 * 0.15 = 4.5, rounds up
    assert first.seed == 1 and other.seed == 2


def test_tiny_classes_never_crash(tmp_path):
    root = make_class_folders(tmp_path / "data", {"one": 1, "two": 2, "three": 3, "many": 40})
    splits = discover(root, val_fraction=0.15, test_fraction=0.15)
    one, three, two, many = (splits.classes.index(c) for c in ("one", "three", "two", "many"))
    train, val, test = (splits.counts(s) for s in ("train", "val", "test"))
    assert (train[one], val[one], test[one]) == (1, 0, 0)
    assert (train[two], val[two], test[two]) == (1, 1, 0)
    assert (train[three], val[three], test[three]) == (1, 1, 1)
    assert (train[many], val[many], test[many]) == (28, 6, 6)


def test_split_folders_with_and_without_val(tmp_path):
    full = tmp_path / "full"
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        make_class_folders(full / split, {"x": n, "y": n})
    splits = discover(full)
    assert splits.source == "split-folders"
    assert splits.classes == ["x", "y"]
    assert splits.counts("train") == [6, 6]
    assert splits.counts("val") == [2, 2]
    assert splits.counts("test") == [3, 3]
    assert all("/val/" in p for p, _ in splits.val)

    no_val = tmp_path / "no_val"
    make_class_folders(no_val / "train", {"x": 20, "y": 10})
    make_class_folders(no_val / "test", {"x": 3, "y": 3})
    splits = discover(no_val, val_fraction=0.2)
    # val is cut from train/, stratified: 20 * 0.2 = 4, 10 * 0.2 = 2; test/ stays as given.
    assert splits.counts("val") == [4, 2]
    assert splits.counts("train") == [16, 8]
    assert splits.counts("test") == [3, 3]
    assert all("/train/" in p for p, _ in splits.val)

    only_train = tmp_path / "only_train"
    make_class_folders(only_train / "train", {"x": 20, "y": 20})
    splits = discover(only_train, val_fraction=0.1, test_fraction=0.25)
    assert splits.counts("val") == [2, 2]
    assert splits.counts("test") == [5, 5]
    assert splits.counts("train") == [13, 13]


def test_split_folders_reject_class_missing_from_train(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"x": 3, "y": 3})
    make_class_folders(root / "val", {"x": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra.*no usable training images"):
        discover(root)


def test_hidden_non_image_and_empty_folders(tmp_path, caplog):
    root = make_class_folders(tmp_path / "data", {"a": 4, "b": 4})
    (root / "a" / ".DS_Store").write_bytes(b"\x00junk")
    (root / ".cache").mkdir()
    write_png(root / ".cache" / "x.png")  # hidden folder: not a class
    (root / "b" / "notes.txt").write_text("not a picture")
    write_png(root / "a" / "nested" / "deep.PNG")  # nested + upper-case extension count
    (root / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="finetune"):
        splits = discover(root, val_fraction=0.0, test_fraction=0.0)
    assert splits.classes == ["a", "b"]
    assert splits.counts("train") == [5, 4]
    assert splits.skipped == [f"{root / 'b' / 'notes.txt'}: not an image"]
    assert "empty" in caplog.text


def test_user_errors_name_path_and_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")
    file = write_png(tmp_path / "one.png")
    with pytest.raises(DataError, match=r"one\.png' is a file"):
        discover(file)
    single = make_class_folders(tmp_path / "single", {"only": 3})
    with pytest.raises(DataError, match="at least two"):
        discover(single)
    with pytest.raises(ValueError, match="leaves no training images"):
        discover(single, val_fraction=0.5, test_fraction=0.5)


def test_csv_manifest_without_and_with_split(tmp_path):
    images = make_class_folders(tmp_path / "imgs", {"cat": 10, "dog": 10})
    manifest = tmp_path / "labels.csv"
    rows = [("path", "label")]
    for cls in ("cat", "dog"):
        for i, p in enumerate(sorted((images / cls).iterdir())):
            # Half relative to the CSV's folder, half absolute.
            rows.append((str(p) if i % 2 else os.path.relpath(p, tmp_path), f"{cls}s"))
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    splits = discover(manifest, val_fraction=0.2, test_fraction=0.2)
    assert splits.source == "csv"
    assert splits.classes == ["cats", "dogs"]  # labels come from the CSV, not the folders
    assert splits.counts("train") == [6, 6] and splits.counts("val") == [2, 2]

    manifest2 = tmp_path / "split.csv"
    with open(manifest2, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for cls in ("cat", "dog"):
            for i, p in enumerate(sorted((images / cls).iterdir())):
                w.writerow([os.path.relpath(p, tmp_path), cls, "train" if i < 7 else "test"])
    splits = discover(manifest2, val_fraction=0.3)
    # test as given (3 each); val cut from the 7 train images of each class: round(2.1) = 2.
    assert splits.counts("test") == [3, 3]
    assert splits.counts("val") == [2, 2]
    assert splits.counts("train") == [5, 5]


def test_csv_errors(tmp_path):
    write_png(tmp_path / "a.png")
    bad_columns = tmp_path / "bad.csv"
    bad_columns.write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match=r"unknown: file, class.*path,label or path,label,split"):
        discover(bad_columns)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\n" + "".join(f"gone{i}.png,x\n" for i in range(7)) + "a.png,y\n")
    with pytest.raises(DataError, match=r"7 file\(s\) that do not exist: gone0.png.*and 2 more"):
        discover(missing)
    bad_split = tmp_path / "split.csv"
    bad_split.write_text("path,label,split\na.png,x,holdout\n")
    with pytest.raises(DataError, match=r"line 2: unknown split 'holdout'"):
        discover(bad_split)


def test_splits_json_round_trip(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 6, "b": 5})
    (root / "a" / "junk.txt").write_text("x")
    splits = discover(root, seed=3)
    out = tmp_path / "run" / "splits.json"
    save_splits(splits, out)
    obj = json.loads(out.read_text())
    assert set(obj) == {"classes", "source", "seed", "train", "val", "test", "skipped"}
    assert obj["seed"] == 3 and obj["source"] == "class-folders"
    assert obj["train"][0][1] in ("a", "b")  # labels written as names
    assert load_splits(out) == splits
    assert DataSplits.from_json(splits.to_json()) == splits
    assert [p.name for p in out.parent.iterdir()] == ["splits.json"]  # no temp file left
    with pytest.raises(DataError, match="No splits file"):
        load_splits(tmp_path / "none.json")


def test_undecodable_files_are_skipped_and_listed(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 5, "b": 5})
    (root / "a" / "zero.png").write_bytes(b"")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    (root / "b" / "truncated.png").write_bytes(big.read_bytes()[:400])
    (root / "b" / "page.png").write_text("<html><body>404 Not Found</body></html>")
    splits = discover(root, val_fraction=0.0, test_fraction=0.0)
    assert splits.counts("train") == [5, 5]  # the valid ones all stay
    reasons = {Path(s.split(": ", 1)[0]).name: s.split(": ", 1)[1] for s in splits.skipped}
    assert reasons["zero.png"] == "empty file (0 bytes)"
    assert reasons["truncated.png"].startswith("truncated or corrupt")
    assert reasons["page.png"] == "cannot identify image file"
    assert not any("zero" in p or "truncated" in p or "page" in p for p, _ in splits.train)
    # Without verification they are kept, and the dataset names the bad file when read.
    unverified = discover(root, val_fraction=0.0, test_fraction=0.0, verify=False)
    assert unverified.counts("train") == [6, 7]


# --------------------------------------------------------------------------- decoding


def test_image_modes(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, one half-transparent, two transparent
    rgba[0, 1, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 127, 127]  # half red over white
    assert out[1, 1].tolist() == [255, 255, 255]  # transparent -> white, not black

    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(load_image(tmp_path / "cmyk.jpg")[1, 1].astype(int) - [255, 0, 0]).max() <= 2

    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # 12-bit data in 16-bit PNG
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    g16 = load_image(tmp_path / "g16.png")
    assert g16.max() == 255 and g16.min() == 0  # stretched by range, not clamped to white
    assert g16[32, 0, 0] == round(2048 * 255 / 4095)
    assert (g16[..., 0] == g16[..., 2]).all()

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "pal.png", transparency=0)  # index 0 transparent
    assert load_image(tmp_path / "pal.png").tolist() == [[[255, 255, 255], [0, 0, 255]]]

    Image.new("LA", (1, 1), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").tolist() == [[[255, 255, 255]]]
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    assert load_image(tmp_path / "one.png").tolist() == [[[1, 2, 3]]]
    Image.new("1", (2, 2), 1).save(tmp_path / "bit.png")
    assert load_image(tmp_path / "bit.png").min() == 255
    Image.new("L", (2, 2), 77).save(tmp_path / "grey.bmp")
    assert load_image(tmp_path / "grey.bmp").tolist() == [[[77] * 3] * 2] * 2


def test_exif_rotated_jpeg_equals_upright(tmp_path):
    # Four flat quadrants: any wrong rotation or mirror moves a colour to another corner.
    upright = np.zeros((32, 48, 3), np.uint8)
    upright[:16, :24] = (255, 0, 0)
    upright[:16, 24:] = (0, 255, 0)
    upright[16:, :24] = (0, 0, 255)
    upright[16:, 24:] = (255, 255, 0)
    # Orientation 6 = "rotate 90 degrees clockwise to display": store it turned the other way.
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    # 4:4:4 so the colour edges survive JPEG; only small rounding differences remain.
    stored.save(tmp_path / "phone.jpg", quality=100, subsampling=0, exif=exif)
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=100, subsampling=0)
    loaded = load_image(tmp_path / "phone.jpg").astype(int)
    assert loaded.shape == (32, 48, 3)
    assert np.abs(loaded - upright).max() < 8
    assert np.abs(loaded - load_image(tmp_path / "upright.jpg")).mean() < 1
    assert np.abs(loaded - upright[::-1, ::-1]).mean() > 100  # a 180-degree error would show


def _skimage_data() -> Path:
    import importlib.util

    return Path(next(iter(importlib.util.find_spec("skimage").submodule_search_locations))) / "data"


def test_jpeg_draft_decodes_smaller_but_same_picture(tmp_path):
    photo = Image.open(Path(_skimage_data(), "astronaut.png")).convert("RGB").resize((1024, 768))
    photo.save(tmp_path / "big.jpg", quality=95)
    photo.save(tmp_path / "big.png")
    full = load_image(tmp_path / "big.jpg")
    # min(1024 // 200, 768 // 200) = 3 -> scale 1/2: never below 200 on either side.
    small = load_image(tmp_path / "big.jpg", draft_size=200)
    assert full.shape == (768, 1024, 3) and small.shape == (384, 512, 3)
    reference = cv2.resize(full, (512, 384), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - reference).mean() < 3
    assert load_image(tmp_path / "big.png", draft_size=200).shape == (768, 1024, 3)  # JPEG only


def _png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny real PNG whose header claims width x height (a decompression bomb's header)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_refused_quickly(tmp_path, monkeypatch):
    start = time.perf_counter()
    for w, h in ((10_000, 10_000), (30_000, 30_000)):  # Pillow's warning range, its error range
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            load_image(_png_claiming_size(tmp_path / f"bomb{w}.png", w, h))
    # Our limit holds even when someone switched Pillow's off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 89,478,485"):
        load_image(_png_claiming_size(tmp_path / "b3.png", 10_000, 10_000))
    assert time.perf_counter() - start < 2.0
    write_png(tmp_path / "small.png", size=(100, 100))
    with pytest.raises(ImageDecodeError, match="10,000 pixels exceeds the limit of 5,000"):
        load_image(tmp_path / "small.png", max_pixels=5_000)


# --------------------------------------------------------------------------- transforms

CFG = PretrainedCfg(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear")
HALF = PretrainedCfg(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)


@pytest.mark.parametrize(
    ("height", "width", "interpolation"),
    [(400, 600, cv2.INTER_AREA), (200, 300, cv2.INTER_LINEAR)],  # shrink: area; enlarge: cfg's
)
def test_eval_transform_matches_reference(height, width, interpolation):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = build_transform(CFG)(image=image)["image"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert tuple(out.shape) == (3, 224, 224)
    # Reference: shorter side to floor(224 / 0.875) = 256, then the centre 224 x 224.
    resized = cv2.resize(image, (384, 256), interpolation=interpolation)
    crop = resized[16:240, 80:304].astype(np.float32) / 255.0
    expected = (crop - np.array(CFG.mean, np.float32)) / np.array(CFG.std, np.float32)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_constant_grey_normalises_to_zero():
    grey = np.full((40, 50, 3), 128, np.uint8)  # 127.5 is not a uint8; 128 is 0.5 / 255 off
    out = build_transform(HALF)(image=grey)["image"]
    assert tuple(out.shape) == (3, 32, 32)
    assert out.abs().max().item() == pytest.approx((128 / 255 - 0.5) / 0.5, abs=1e-6)
    assert out.abs().max().item() < 0.005


def test_preprocess_spec_and_image_size_override():
    spec = preprocess_spec(CFG)
    assert spec["input_size"] == [3, 224, 224] and spec["resize"] == 256 and spec["crop"] == 224
    assert spec["mean"] == list(CFG.mean) and spec["channel_order"] == "RGB"
    assert spec["interpolation"] == "bilinear"
    assert spec["jpeg_draft_size"] == 512  # JPEGs decode no smaller than twice the resize
    small = preprocess_spec(CFG, image_size=160)
    assert small["input_size"] == [3, 160, 160] and small["resize"] == 182  # floor(160 / .875)
    out = build_transform(CFG, image_size=160, train=True, level="strong")(
        image=np.zeros((90, 120, 3), np.uint8)
    )["image"]
    assert tuple(out.shape) == (3, 160, 160)


@pytest.mark.parametrize("level", AUGMENT_LEVELS)
def test_train_levels(level):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    first = build_transform(HALF, train=True, level=level, seed=5)
    second = build_transform(HALF, train=True, level=level, seed=5)
    a = [first(image=image)["image"] for _ in range(3)]
    b = [second(image=image)["image"] for _ in range(3)]
    for x, y in zip(a, b, strict=True):
        assert tuple(x.shape) == (3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, y)  # seeded: the same augmentations
    eval_out = build_transform(HALF)(image=image)["image"]
    if level == "none":
        assert all(torch.equal(x, eval_out) for x in a)
    else:
        assert not all(torch.equal(x, eval_out) for x in a)


def test_unknown_level_names_valid_ones():
    with pytest.raises(ValueError, match="none, light, medium, strong"):
        build_transform(CFG, train=True, level="heavy")


# --------------------------------------------------------------------------- datamodule


@pytest.fixture
def small_splits(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 18, "b": 6})
    return discover(root, val_fraction=0.25, test_fraction=0.25, verify=False)


def test_datamodule_batches(small_splits):
    dm = FinetuneDataModule(small_splits, HALF, batch_size=4, augment="medium", seed=0)
    dm.setup("fit")
    assert dm.num_classes == 2 and dm.classes == ["a", "b"]
    assert dm.draft_size == 64 and dm.datasets["val"].draft_size == 64  # 2 x resize (32)
    assert len(small_splits.train) == 10  # a: 18 - 5 - 5, b: 6 - 2 - 2
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert dm.train_dataloader().drop_last is True
    assert dm.val_dataloader().drop_last is False
    # Loaders without gradients take eval_batch_size: by default the training batch (on a
    # CPU larger batches are slower per image); finetune run doubles it on a GPU.
    assert dm.train_dataloader().batch_size == 4
    assert dm.val_dataloader().batch_size == dm.test_dataloader().batch_size == 4
    assert dm.eval_dataloader("train").batch_size == 4
    big = FinetuneDataModule(small_splits, HALF, batch_size=4, eval_batch_size=8)
    big.setup("fit")
    assert big.train_dataloader().batch_size == 4
    assert big.val_dataloader().batch_size == big.eval_dataloader("train").batch_size == 8
    with pytest.raises(ValueError, match="eval_batch_size=0"):
        FinetuneDataModule(small_splits, HALF, batch_size=4, eval_batch_size=0)
    # The unaugmented train set is made once (with the image cache that stats every file).
    assert dm.eval_dataloader("train").dataset is dm.eval_dataloader("train").dataset
    assert dm.eval_dataloader("train").dataset.transform is dm.eval_transform

    # Feature extraction: train split, no augmentation, file order, repeatable.
    loader = dm.eval_dataloader("train")
    labels = torch.cat([yb for _, yb in loader]).tolist()
    assert labels == labels_of(small_splits.train)
    first = torch.cat([xb for xb, _ in loader])
    assert torch.equal(first, torch.cat([xb for xb, _ in loader]))
    # Class "a" is red (220, 30, 30): channel 0 normalises to 220 / 255 * 2 - 1.
    assert first[0, 0].mean().item() == pytest.approx(220 / 255 * 2 - 1, abs=1e-5)
    with pytest.raises(ValueError, match="train, val, test"):
        dm.eval_dataloader("holdout")


def test_small_train_set_keeps_last_batch(small_splits):
    dm = FinetuneDataModule(small_splits, HALF, batch_size=64)
    assert dm.train_dataloader().drop_last is False
    assert sum(len(yb) for _, yb in dm.train_dataloader()) == 10


def test_shuffle_is_seeded(tmp_path):
    # Twelve images, each its own grey level, so a batch's pixels reveal the order.
    samples = [(str(write_png(tmp_path / f"{i}.png", (10 * i,) * 3)), i % 2) for i in range(12)]
    splits = DataSplits(classes=["a", "b"], train=samples, val=[], test=[])

    def order(seed):
        dm = FinetuneDataModule(splits, HALF, batch_size=12, augment="none", seed=seed)
        first_pixels = next(iter(dm.train_dataloader()))[0][:, 0, 0, 0]
        return [round(((v.item() + 1) / 2 * 255) / 10) for v in first_pixels]

    assert sorted(order(0)) == list(range(12))  # a permutation: every image once
    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != list(range(12))


def test_balanced_sampling(tmp_path):
    root = make_class_folders(tmp_path / "data", {"big": 90, "small": 10})
    splits = discover(root, val_fraction=0.0, test_fraction=0.0, verify=False)
    dm = FinetuneDataModule(splits, HALF, batch_size=10, balanced_sampling=True, seed=0)
    loader = dm.train_dataloader()
    draws = []
    for epoch in range(10):  # the sampler yields (epoch, index): each epoch draws afresh
        loader.sampler.set_epoch(epoch)
        draws += [splits.train[i][1] for e, i in loader.sampler if e == epoch]
    assert len(draws) == 1000
    share_small = draws.count(1) / len(draws)
    assert 0.4 < share_small < 0.6  # ~0.5 balanced, against 0.1 without
    plain = FinetuneDataModule(splits, HALF, batch_size=10, seed=0).train_dataloader()
    assert sum(y.sum().item() for _, y in plain) == 10  # every image once per epoch


def test_workers_draw_different_augmentations(tmp_path):
    image = write_png(tmp_path / "same.png", size=(40, 40))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image)
    splits = DataSplits(classes=["a", "b"], train=[(str(image), 0)] * 4, val=[], test=[])
    dm = FinetuneDataModule(splits, HALF, batch_size=1, num_workers=2, seed=0)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batches = [x for x, _ in loader]  # worker 0 gives the 1st and 3rd, worker 1 the 2nd and 4th
    # Without per-worker reseeding both workers would copy one generator: batch 0 == batch 1.
    assert not torch.equal(batches[0], batches[1])


def test_dataset_names_bad_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(ImageDecodeError, match="bad.png: cannot identify image file"):
        ImageDataset([(str(bad), 0)], build_transform(HALF))[0]


# --------------------------------------------------------------------------- built-ins


def _pixels(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): np.asarray(Image.open(p)).tobytes()
        for p in sorted(folder.rglob("*.png"))
    }


def test_builtin_photos(tmp_path):
    path = build_dataset("photos", tmp_path / "a", per_class=3, size=32)
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    assert classes == sorted(PHOTO_SOURCES) == [
        "astronaut", "brick", "cat", "coffee", "grass", "gravel", "motorcycle", "rocket",
    ]
    for cls in classes:
        files = sorted(p.name for p in (path / cls).iterdir())
        assert files == ["0.png", "1.png", "2.png"]
        assert load_image(path / cls / "0.png").shape == (32, 32, 3)
    marker = json.loads((path / ".built.json").read_text())
    assert marker["per_class"] == 3 and marker["seed"] == 0 and marker["size"] == 32
    cat = load_image(path / "cat" / "0.png").astype(int)
    assert cat.std() > 10  # a real photo crop, not a flat fill
    # Deterministic by seed; another seed gives other crops.
    same = build_dataset("photos", tmp_path / "b", per_class=3, size=32)
    other = build_dataset("photos", tmp_path / "c", per_class=3, size=32, seed=1)
    assert _pixels(path) == _pixels(same)
    assert _pixels(path) != _pixels(other)
    # Reused when complete with the same parameters: nothing is rewritten.
    stamp = (path / "cat" / "0.png").stat().st_mtime_ns
    assert build_dataset("photos", tmp_path / "a", per_class=3, size=32) == path
    assert (path / "cat" / "0.png").stat().st_mtime_ns == stamp
    # Different parameters rebuild in place, without leftovers beside it.
    build_dataset("photos", tmp_path / "a", per_class=2, size=32)
    assert sorted(p.name for p in (path / "cat").iterdir()) == ["0.png", "1.png"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["photos"]
    # And discovery reads it as class folders.
    splits = discover(path, val_fraction=0.0, test_fraction=0.0)
    assert splits.classes == classes and splits.counts("train") == [2] * 8


def test_builtin_digits_and_glyphs(tmp_path):
    digits = build_dataset("digits", tmp_path, per_class=2, size=16)
    assert sorted(p.name for p in digits.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    assert all(len(list((digits / str(d)).iterdir())) == 2 for d in range(10))
    one = load_image(digits / "1" / "0.png")
    assert one.shape == (16, 16, 3) and (one[..., 0] == one[..., 1]).all()  # grey as RGB
    assert one.min() < 100 and one.max() > 200  # dark ink on white paper

    glyphs = build_dataset("glyphs", tmp_path, per_class=3, size=32, seed=4)
    assert sorted(p.name for p in glyphs.iterdir() if p.is_dir()) == list("ABCDEFGHIJ")
    assert all(len(list((glyphs / c).iterdir())) == 3 for c in "ABCDEFGHIJ")
    letter = load_image(glyphs / "A" / "0.png").astype(int)
    assert len(np.unique(letter.reshape(-1, 3), axis=0)) > 2  # a glyph on a plain background
    again = build_dataset("glyphs", tmp_path / "again", per_class=3, size=32, seed=4)
    assert _pixels(glyphs) == _pixels(again)


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import finetune.data.builtin as builtin

    def broken(per_class, seed, size):
        raise KeyboardInterrupt

    monkeypatch.setitem(builtin._GENERATORS, "digits", broken)
    with pytest.raises(KeyboardInterrupt):
        build_dataset("digits", tmp_path, per_class=1)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="photos, digits, glyphs"):
        build_dataset("faces", tmp_path)


def test_builtin_command_line(tmp_path, capsys):
    main(["digits", "--root", str(tmp_path), "--per-class", "1", "--size", "8"])
    assert "(10 classes, 10 images)" in capsys.readouterr().out
    assert len(list((tmp_path / "digits").rglob("*.png"))) == 10
    assert set(BUILTIN_DATASETS) == {"photos", "digits", "glyphs"}

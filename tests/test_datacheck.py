"""`finetune data check`: every planted fault found, named, and the exit code right; the
files and classes it calls usable are the ones `discover` gives `finetune run`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _hostile import BROKEN, ODD_VALID, write_bomb, write_broken, write_odd_valid
from click.testing import CliRunner
from PIL import Image

from finetune.cli import main
from finetune.data import DataError, DataSplits, discover, save_splits
from finetune.data.check import check_data


def _pictures(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _picture(path: Path, seed: int, fmt: str = "PNG") -> Path:
    """A 40x40 random picture in ``fmt`` whatever the extension says (e.g. ``UPPER.JPG``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """Two real classes (6 clean images each) plus every kind of fault planted."""
    root = tmp_path_factory.mktemp("hostile") / "data"
    _pictures(root / "cat", 6, seed=1)
    _pictures(root / "dog", 6, seed=2)
    write_odd_valid(root / "cat")
    write_broken(root / "dog")
    write_bomb(root / "cat" / "bomb.png")
    (root / "dog" / "notes.txt").write_text("not a picture")
    (root / "empty_class").mkdir()
    (root / "only_text").mkdir()
    (root / "only_text" / "readme.md").write_text("no images here")
    shutil.copy(root / "cat" / "0.png", root / "dog" / "copy_of_cat0.png")  # same bytes, other label
    shutil.copy(root / "dog" / "1.png", root / "dog" / "again.png")  # same bytes, same label
    return root


def _names(paths) -> set[str]:
    return {Path(p).name for p in paths}


def test_hostile_folder_every_fault_reported(hostile):
    report = check_data(hostile)
    assert report.ok and report.layout == "class-folders"
    # cat: 6 clean + 7 odd-but-valid; dog: 6 clean + 2 copies; unusable: cat's bomb, dog's 4 broken.
    assert report.counts == {"cat": {"train": 13}, "dog": {"train": 8}}
    assert report.unusable == {"cat": 1, "dog": 4}
    reasons = {Path(e["path"]).name: e["reason"] for e in report.undecodable}
    assert set(reasons) == set(BROKEN)
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["html.png"] == "cannot identify image file"
    assert reasons["truncated.png"] == "truncated or corrupt: image file is truncated"
    assert "runcated" in reasons["truncated.jpg"]  # Pillow: "Truncated File Read"
    assert [Path(e["path"]).name for e in report.bombs] == ["bomb.png"]
    assert "decompression bomb" in report.bombs[0]["reason"]
    assert _names(report.not_images) == {"notes.txt", "readme.md"}
    assert report.empty_classes == ["empty_class", "only_text"]
    assert {Path(e["path"]).name: e["mode"] for e in report.unusual_modes} == {
        "cmyk.jpg": "CMYK", "grey16.png": "I;16", "rgba.png": "RGBA",
        "palette_transparent.png": "P", "onebit.png": "1",
    }
    assert [(Path(e["path"]).name, e["width"], e["height"]) for e in report.tiny] == [("one_pixel.png", 1, 1)]
    assert sorted(sorted(_names(g)) for g in report.duplicates) == [
        ["0.png", "copy_of_cat0.png"], ["1.png", "again.png"]]
    assert [_names(g) for g in report.conflicting_duplicates] == [{"0.png", "copy_of_cat0.png"}]
    assert report.modes["RGB"] == 6 + 6 + 2 + 2  # clean, copies, one_pixel and the EXIF JPEG
    assert sum(report.modes.values()) == report.num_usable == 21


def test_command_line_table_and_json(hostile):
    result = CliRunner().invoke(main, ["data", "check", str(hostile)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "class-folders" in out and "OK: training can proceed with 2 classes and 21 usable images" in out
    for needle in ("dog/html.png: cannot identify image file", "cat/bomb.png: decompression bomb",
                   "cat/one_pixel.png: 1x1", "cat/grey16.png: I;16, 16-bit grey rescaled",
                   "Empty class folders (excluded from training): 2", "dog/notes.txt"):
        assert needle in out, needle
    result = CliRunner().invoke(main, ["data", "check", str(hostile), "--json"])
    assert result.exit_code == 0
    obj = json.loads(result.stdout)
    assert obj["ok"] is True and obj["num_usable"] == 21
    assert obj["classes"] == {"cat": {"train": 13, "unusable": 1}, "dog": {"train": 8, "unusable": 4}}
    assert _names(e["path"] for e in obj["decompression_bombs"]) == {"bomb.png"}
    assert obj["tiny_images"]["min_size"] == 32


def test_cannot_train_exits_nonzero_with_reason(tmp_path):
    root = tmp_path / "data"
    _pictures(root / "cat", 3, seed=0)
    write_broken(root / "dog")  # the second class has only broken files
    result = CliRunner().invoke(main, ["data", "check", str(root), "--json"])
    assert result.exit_code == 1
    obj = json.loads(result.stdout)
    assert obj["ok"] is False and obj["empty_classes"] == ["dog"]
    assert "1 class(es) with usable training images (cat)" in obj["problems"][0]
    assert "Error: cannot train on" in result.stderr and "at least two" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["file", "csv-missing", "one-class"])
def test_layout_errors_are_the_reason(tmp_path, kind):
    if kind == "file":
        target = _pictures(tmp_path / "x", 1, seed=0)[0]
        needle = "is a file, not a folder"
    elif kind == "csv-missing":
        _pictures(tmp_path / "a", 2, seed=0)
        target = tmp_path / "m.csv"
        target.write_text("path,label\na/0.png,a\na/1.png,a\nb/9.png,b\n")
        needle = "1 file(s) that do not exist: b/9.png"
    else:
        _pictures(tmp_path / "d" / "only", 2, seed=0)
        target = tmp_path / "d"
        needle = "has 1 class(es)"
    result = CliRunner().invoke(main, ["data", "check", str(target)])
    assert result.exit_code == 1, result.output
    assert needle in result.stderr and "Traceback" not in result.output


def test_missing_path_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_duplicates_across_a_runs_splits(tmp_path):
    root = tmp_path / "data"
    cats, dogs = _pictures(root / "cat", 4, seed=3), _pictures(root / "dog", 4, seed=4)
    leak = root / "dog" / "leak.png"
    shutil.copy(dogs[0], leak)
    splits = DataSplits(
        classes=["cat", "dog"],
        train=[(str(p), 0) for p in cats[:3]] + [(str(p), 1) for p in dogs[:3]],
        val=[(str(cats[3]), 0)],
        test=[(str(dogs[3]), 1), (str(leak), 1)],
    )
    save_splits(splits, tmp_path / "splits.json")
    without = check_data(root)
    assert without.cross_split_duplicates == [] and len(without.duplicates) == 1
    report = check_data(root, splits=tmp_path / "splits.json")
    assert report.cross_split_duplicates == [{str(dogs[0]): "train", str(leak): "test"}]
    assert report.ok and any("optimistic" in w for w in report.warnings)
    result = CliRunner().invoke(main, ["data", "check", str(root), "--splits", str(tmp_path / "splits.json")])
    assert result.exit_code == 0
    assert "Duplicates across train/val/test (leakage): 1" in result.output
    assert "dog/0.png [train] = dog/leak.png [test]" in result.output


def test_split_folders_duplicates_and_strangers(tmp_path):
    root = tmp_path / "data"
    train_cat = _pictures(root / "train" / "cat", 3, seed=5)
    _pictures(root / "train" / "dog", 3, seed=6)
    (root / "val" / "cat").mkdir(parents=True)
    shutil.copy(train_cat[0], root / "val" / "cat" / "same.png")
    report = check_data(root)
    assert report.layout == "split-folders" and report.ok
    assert report.counts == {"cat": {"train": 3, "val": 1}, "dog": {"train": 3}}
    assert [sorted(g.values()) for g in report.cross_split_duplicates] == [["train", "val"]]
    # A class with val images but only broken training images cannot train.
    write_broken(root / "train" / "bird")
    _pictures(root / "val" / "bird", 1, seed=7)
    report = check_data(root)
    assert not report.ok
    assert "bird have val images but no usable training images" in report.problems[0]


def test_bomb_refused_with_bounded_memory(tmp_path):
    """A 20000 x 20000 PNG of ~50 KB (1.2 GB as RGB) is refused from its header: peak
    memory of a fresh interpreter stays near that of reading a small image."""
    bomb = write_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    small = _pictures(tmp_path / "s", 1, seed=0)[0]
    images_py = Path(__file__).resolve().parents[1] / "finetune" / "data" / "images.py"
    script = (
        "import importlib.util, resource, sys\n"
        f"spec = importlib.util.spec_from_file_location('images', {str(images_py)!r})\n"
        "images = importlib.util.module_from_spec(spec); spec.loader.exec_module(images)\n"
        "try:\n    images.load_image(sys.argv[1]); print('decoded')\n"
        "except images.ImageDecodeError as err:\n    print(err.reason)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"  # KB -> MB
    )

    def peak(path: Path) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                             text=True, check=True, timeout=60).stdout.split("\n")
        return out[0], int(out[1])

    reason, bomb_mb = peak(bomb)
    status, small_mb = peak(small)
    assert reason.startswith("decompression bomb refused") and status == "decoded"
    assert bomb_mb - small_mb < 30, (bomb_mb, small_mb)


def test_odd_modes_decode_to_sensible_rgb(hostile):
    """The conversions data check announces are the ones training gets (spot values)."""
    from finetune.data import load_image

    cat = hostile / "cat"
    g16 = load_image(cat / "grey16.png")
    assert (g16.min(), g16.max()) == (0, 255)  # 0..4095 stretched, not clamped to white
    rgba = load_image(cat / "rgba.png").astype(int)
    rgb = np.asarray(Image.open(cat / "rgba.png").convert("RGB")).astype(int)
    np.testing.assert_array_equal(rgba, (rgb * 128 + 255 * 127 + 127) // 255)  # over white
    assert load_image(cat / "exif_rotated.jpg").shape == (48, 32, 3)  # stored 32x48, rotated
    assert load_image(cat / "one_pixel.png").tolist() == [[[200, 10, 10]]]
    assert set(np.unique(load_image(cat / "onebit.png"))) <= {0, 255}
    assert len(ODD_VALID) == 7


# ------------------------------------------------------- the same files as discover()
def _tricky_class_folders(root: Path) -> dict:
    """Class folders with every file discovery must sort out; returns what training uses."""
    for i in range(3):
        _picture(root / "cat" / f"{i}.png", seed=10 + i)
        _picture(root / "dog" / f"{i}.png", seed=20 + i)
    _picture(root / "cat" / "UPPER.JPG", seed=30, fmt="JPEG")
    _picture(root / "cat" / "Mixed.Jpeg", seed=31, fmt="JPEG")
    _picture(root / "cat" / "sub" / "deep.PNG", seed=32)  # nested folders belong to the class
    _picture(root / "cat" / ".hidden.png", seed=33)  # hidden file: not data
    _picture(root / "cat" / ".thumbs" / "t.png", seed=34)  # hidden folder inside a class
    _picture(root / ".cache" / "x.png", seed=35)  # hidden folder: not a class
    _picture(root / "stray.png", seed=36)  # beside the classes, in none
    (root / "cat" / "notes.txt").write_text("not a picture")
    _picture(root / "cat" / "photo.jpg.bak", seed=37)  # an image, but not by its extension
    (root / "cat" / "html.png").write_text("<html>404</html>")  # an image by name only
    (root / "dog" / "readme.md").write_text("about dogs")
    (root / "empty").mkdir()
    (root / "text_only").mkdir()
    (root / "text_only" / "a.txt").write_text("no images")
    return {
        "layout": "class-folders",
        "usable": {"cat": ["cat/0.png", "cat/1.png", "cat/2.png", "cat/Mixed.Jpeg",
                           "cat/UPPER.JPG", "cat/sub/deep.PNG"],
                   "dog": ["dog/0.png", "dog/1.png", "dog/2.png"]},
        "splits": {"train"},
        "not_images": ["cat/notes.txt", "cat/photo.jpg.bak", "dog/readme.md", "text_only/a.txt"],
        "undecodable": ["cat/html.png"],
        "empty": ["empty", "text_only"],
    }


def _tricky_split_folders(root: Path) -> dict:
    """Split folders under aliases: training/, and valid/ beside validation/ (valid/ wins,
    being the earlier alias); no test folder; a class folder empty in every split."""
    for name, seed in (("a", 40), ("b", 50)):
        for i in range(3):
            _picture(root / "training" / name / f"{i}.png", seed=seed + i)
        _picture(root / "valid" / name / "v.png", seed=seed + 5)
        _picture(root / "validation" / name / "ignored.png", seed=seed + 6)
    _picture(root / "valid" / "a" / ".h.png", seed=60)
    _picture(root / "valid" / ".b_old" / "x.png", seed=61)  # hidden class folder
    (root / "training" / "c").mkdir()  # a class with no images in any split
    (root / "valid" / "c").mkdir()
    _picture(root / "extras" / "q" / "1.png", seed=62)  # not a split folder
    (root / "training" / "b" / "labels.csv").write_text("not,an,image")
    return {
        "layout": "split-folders",
        "usable": {"a": ["training/a/0.png", "training/a/1.png", "training/a/2.png", "valid/a/v.png"],
                   "b": ["training/b/0.png", "training/b/1.png", "training/b/2.png", "valid/b/v.png"]},
        "splits": {"train", "val"},
        "not_images": ["training/b/labels.csv"],
        "undecodable": [],
        "empty": ["c"],
    }


def _tricky_csv(root: Path) -> dict:
    """A manifest with split aliases in any case, relative and absolute paths, a repeated
    row, a blank line, a non-image row, an upper-case extension and a broken image."""
    images = root / "images"
    for i in range(6):
        _picture(images / f"{i}.png", seed=70 + i)
    _picture(images / "BIG.PNG", seed=80)
    _picture(images / ".listed.png", seed=81)  # hidden, but named by the manifest: used
    (images / "caption.txt").write_text("a caption")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (images / "unlisted.png").write_bytes((images / "0.png").read_bytes())  # not in the CSV
    rows = ["path,label,split", "images/0.png,x,Training", "images/1.png,x,train",
            f"{images / '2.png'},y,train", "images/3.png,y,TRAIN", "images/BIG.PNG,x,valid",
            "images/4.png,y,Validation", "", "images/5.png,y,test", "images/1.png,x,train",
            "images/.listed.png,y,train", "images/caption.txt,x,train", "images/broken.jpg,x,test"]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return {
        "target": "manifest.csv",
        "layout": "csv",
        "usable": {"x": ["images/0.png", "images/1.png", "images/BIG.PNG"],
                   "y": ["images/.listed.png", "images/2.png", "images/3.png", "images/4.png",
                         "images/5.png"]},
        "splits": {"train", "val", "test"},
        "not_images": ["images/caption.txt"],
        "undecodable": ["images/broken.jpg"],
        "empty": [],
    }


JSON_KEYS = {"path", "layout", "ok", "problems", "warnings", "classes", "num_usable",
             "empty_classes", "not_images", "undecodable", "decompression_bombs", "modes",
             "unusual_modes", "tiny_images", "duplicates", "conflicting_duplicates",
             "cross_split_duplicates"}


@pytest.mark.parametrize("build", [_tricky_class_folders, _tricky_split_folders, _tricky_csv])
def test_usable_files_and_classes_are_discovers(tmp_path, build):
    expected = build(tmp_path)
    target = tmp_path / expected.get("target", "")
    report = check_data(target)
    found = discover(target, val_fraction=0.0, test_fraction=0.0, seed=0)  # verified

    from_discover = sorted((p, s, found.classes[y]) for s in ("train", "val", "test")
                           for p, y in found.samples(s))
    assert report.usable == from_discover
    assert report.usable_classes() == found.classes == sorted(expected["usable"])
    assert report.layout == found.source == expected["layout"]
    assert report.ok and report.num_usable == len(from_discover)

    def rel(paths) -> list[str]:
        return sorted(Path(p).relative_to(tmp_path).as_posix() for p in paths)

    for name, files in expected["usable"].items():
        assert rel(p for p, _, c in report.usable if c == name) == sorted(files), name
    assert {s for _, s, _ in report.usable} == expected["splits"]
    skipped = [entry.rsplit(": ", 1)[0] if entry.endswith(": not an image") else entry
               for entry in found.skipped]
    assert rel(report.not_images) == expected["not_images"]
    assert rel(e["path"] for e in report.undecodable) == expected["undecodable"]
    assert sorted(skipped) == sorted(report.not_images + [f"{e['path']}: {e['reason']}"
                                                         for e in report.undecodable])
    assert report.empty_classes == expected["empty"]
    assert set(report.to_json()) == JSON_KEYS  # usable stays out of the report


def test_split_counts_follow_the_aliases(tmp_path):
    """valid/ is read as val and validation/ is ignored, by both; test is cut from train."""
    _tricky_split_folders(tmp_path)
    report = check_data(tmp_path)
    assert report.counts == {"a": {"train": 3, "val": 1}, "b": {"train": 3, "val": 1}}
    found = discover(tmp_path, val_fraction=0.2, test_fraction=0.34, seed=1)
    assert found.counts("val") == [1, 1]  # given by valid/, not cut from train
    assert found.counts("test") == [1, 1] and found.counts("train") == [2, 2]  # round(3 * 0.34)


def _one_class(root: Path) -> Path:
    _pictures(root / "only", 3, seed=90)
    (root / "empty").mkdir()
    _picture(root / ".hidden" / "x.png", seed=91)  # a hidden folder is no second class
    return root


def _stranger_in_val(root: Path) -> Path:
    _pictures(root / "train" / "a", 2, seed=92)
    _pictures(root / "train" / "b", 2, seed=93)
    (root / "train" / "zebra").mkdir()
    _pictures(root / "val" / "zebra", 1, seed=94)
    return root


def _one_label_csv(root: Path) -> Path:
    _pictures(root / "i", 2, seed=95)
    (root / "m.csv").write_text("path,label\ni/0.png,x\ni/1.png,x\ni/1.png,x\n")
    return root / "m.csv"


def _only_empty_folders(root: Path) -> Path:
    (root / "a").mkdir()
    (root / "b").mkdir()
    return root


@pytest.mark.parametrize("build, layout, counts, fix", [
    (_one_class, "class-folders", {"only": {"train": 3}}, "in its own subfolder"),
    (_stranger_in_val, "split-folders", {"a": {"train": 2}, "b": {"train": 2}, "zebra": {"val": 1}},
     "zebra appear in val"),
    (_one_label_csv, "csv", {"x": {"train": 2}}, "at least two different labels"),
    (_only_empty_folders, "", {}, "has 0 class(es)"),
])
def test_refused_data_gives_discovers_reason_and_still_counts(tmp_path, build, layout, counts, fix):
    """What run refuses before decoding, the check refuses with run's own message, and
    still shows the classes it found."""
    target = build(tmp_path)
    with pytest.raises(DataError) as refused:
        discover(target, verify=False)
    report = check_data(target)
    assert report.problems == [str(refused.value)] and fix in report.problems[0]
    assert report.layout == layout and report.counts == counts

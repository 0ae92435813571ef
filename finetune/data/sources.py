"""Where the images come from: ``--data`` resolved into labelled train / val / test lists.

Three layouts are accepted (docs/design.md, "Data"):

* a folder of class subfolders: ``data/<class>/**/<image>``. Split into train / val / test
  here, stratified per class and seeded, and saved to ``splits.json`` by the run;
* a folder with ``train/`` and optionally ``val/`` (or ``valid/``, ``validation/``) and
  ``test/``, each holding class subfolders. A missing ``val/`` or ``test/`` is split off
  ``train/``, stratified;
* a CSV manifest with a header ``path,label`` or ``path,label,split``. Paths are relative
  to the CSV's folder or absolute.

``list_files`` reads a layout into a ``Listing`` (which files exist, under which split and
class); ``discover`` splits it and ``finetune data check`` (check.py) inspects it, so the two
never disagree about which files and classes there are.

With ``verify=True`` every image is decoded once, in a thread pool, before anything is
split: files that cannot be decoded go to ``skipped`` (with the reason) and never reach a
DataLoader, which is how a run never crashes mid-epoch on a bad file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_write_json
from .images import IMAGE_EXTENSIONS, ImageDecodeError, load_image

logger = logging.getLogger("finetune")

SPLITS = ("train", "val", "test")
# `--data builtin:<name>`: a dataset built offline (data/builtin.py).
BUILTIN_PREFIX = "builtin:"
# Folder / CSV names accepted for each split; the first is the canonical one.
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
CSV_COLUMNS = ("path", "label", "split")
NOT_AN_IMAGE = "not an image"

Sample = tuple[str, int]


class DataError(ValueError):
    """A problem with the user's data; the message names the path and how to fix it."""


@dataclass
class DataSplits:
    """Labelled samples per split. ``label`` is an index into ``classes`` (sorted names)."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    source: str = ""  # "class-folders" | "split-folders" | "csv"
    seed: int = 0  # the seed the split was drawn with (recorded in splits.json)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def samples(self, split: str) -> list[Sample]:
        if split not in SPLITS:
            raise ValueError(f"Unknown split '{split}'. Valid splits: {', '.join(SPLITS)}.")
        return getattr(self, split)

    def counts(self, split: str) -> list[int]:
        """Images per class in ``split``, indexed like ``classes``."""
        per_label = Counter(label for _, label in self.samples(split))
        return [per_label.get(i, 0) for i in range(len(self.classes))]

    def to_json(self) -> dict:
        """The content of ``splits.json``; labels are written as names, readable by people."""
        return {
            "classes": list(self.classes),
            "source": self.source,
            "seed": self.seed,
            **{
                split: [[path, self.classes[label]] for path, label in self.samples(split)]
                for split in SPLITS
            },
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_json(cls, obj: dict) -> DataSplits:
        missing = [key for key in ("classes", *SPLITS) if key not in obj]
        if missing:
            raise DataError(
                f"splits.json lacks {', '.join(missing)}; expected keys: "
                f"classes, source, seed, train, val, test, skipped. Re-create it with a new run."
            )
        classes = [str(c) for c in obj["classes"]]
        index = {name: i for i, name in enumerate(classes)}
        lists: dict[str, list[Sample]] = {}
        for split in SPLITS:
            rows = []
            for path, label in obj[split]:
                if label not in index:
                    raise DataError(
                        f"splits.json: '{path}' in {split} has label '{label}', which is not "
                        f"one of the classes {classes}."
                    )
                rows.append((str(path), index[label]))
            lists[split] = rows
        return cls(
            classes=classes,
            skipped=[str(s) for s in obj.get("skipped", [])],
            source=str(obj.get("source", "")),
            seed=int(obj.get("seed", 0)),
            **lists,
        )


def files_fingerprint(samples: Sequence[tuple[str, int]]) -> str:
    """SHA-256 over (resolved path, size, mtime_ns, label) of every sample, in order."""
    digest = hashlib.sha256()
    for path, label in samples:
        p = Path(path).resolve()
        st = p.stat()
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{int(label)}\n".encode())
    return digest.hexdigest()


def save_splits(splits: DataSplits, path: Path) -> None:
    """Write ``splits.json`` atomically (temporary file + ``os.replace``)."""
    atomic_write_json(path, splits.to_json())


def load_splits(path: Path) -> DataSplits:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"No splits file at '{path}'. Run `finetune run` to create one.") from None
    except json.JSONDecodeError as err:
        raise DataError(f"'{path}' is not valid JSON ({err}). Delete it and rerun.") from None
    return DataSplits.from_json(obj)


# --------------------------------------------------------------------------- listing


@dataclass
class Listing:
    """The files a layout names, before any is decoded.

    ``images`` holds every class folder (or CSV label) the layout names, even one with no
    image files, so that an empty class is one both ``discover`` and the data check see.
    """

    source: str  # "class-folders" | "split-folders" | "csv"
    where: Path  # where the classes are read from, named in messages: root, train/ or the CSV
    images: dict[str, dict[str, list[str]]]  # split -> class -> absolute image paths
    not_images: list[str] = field(default_factory=list)  # absolute paths, in listing order

    def files(self) -> list[tuple[str, str, str]]:
        """``(path, split, class)`` of every image file."""
        return [
            (path, split, name)
            for split, per_class in self.images.items()
            for name, paths in per_class.items()
            for path in paths
        ]

    def without(self, bad: set[str]) -> Listing:
        """The same listing less the paths in ``bad`` (their classes stay, maybe empty)."""
        images = {
            split: {name: [p for p in paths if p not in bad] for name, paths in per_class.items()}
            for split, per_class in self.images.items()
        }
        return Listing(self.source, self.where, images, list(self.not_images))


def list_files(data: str | Path) -> Listing:
    """Read the layout of ``data`` (folder or CSV) into a ``Listing``; nothing is decoded.

    Raises ``DataError`` when ``data`` is no layout at all: a missing path, a file that is
    not a CSV, a folder without subfolders, or a CSV that cannot be read as a manifest.
    """
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(
            f"Data path '{root}' does not exist. Pass a folder of class subfolders, a folder "
            f"with train/ val/ test/ subfolders, or a CSV manifest (path,label[,split])."
        )
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(
                f"'{root}' is a file, not a folder or a .csv manifest. Point --data at the "
                f"folder that holds one subfolder per class, or at a CSV with columns path,label[,split]."
            )
        return _list_csv(root)
    split_dirs = _split_dirs(root)
    if "train" in split_dirs:
        return _list_split_folders(root, split_dirs)
    return _list_class_folders(root)


def training_classes(listing: Listing) -> list[str]:
    """The sorted classes training uses: those with image files in train.

    Raises ``DataError`` when fewer than two classes have any, or when a class has val or
    test images but none in train (it could be scored but never learnt).
    """
    classes = _usable_classes(listing.images["train"], listing.where)
    known = set(classes)
    for split in ("val", "test"):
        strangers = sorted(
            name
            for name, paths in listing.images.get(split, {}).items()
            if paths and name not in known
        )
        if strangers:
            raise DataError(
                f"{listing.where}: class(es) {', '.join(strangers)} appear in {split} but have no usable "
                f"training images. Add their images to train, or remove them from {split}."
            )
    return classes


def _has_image_extension(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _split_dirs(root: Path) -> dict[str, Path]:
    """The folder of each split present; the first alias found wins (val/ over valid/)."""
    found: dict[str, Path] = {}
    for split, names in SPLIT_ALIASES.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found


def _visible_subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_class_folders(root: Path, not_images: list[str]) -> dict[str, list[str]]:
    """``{class name: sorted absolute image paths}``; other files' paths go to ``not_images``.

    Names starting with "." (``.DS_Store``, ``.thumbnails/``) are skipped, not listed:
    they are the file system's or a viewer's, not the user's.
    """
    classes: dict[str, list[str]] = {}
    for class_dir in _visible_subdirs(root):
        images: list[str] = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = os.path.abspath(os.path.join(dirpath, filename))
                (images if _has_image_extension(filename) else not_images).append(path)
        classes[class_dir.name] = images
    stray = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    stray_images = [n for n in stray if _has_image_extension(n)]
    if stray_images:
        logger.warning(
            "%d image(s) directly in '%s' (e.g. %s) are not in a class folder and are ignored.",
            len(stray_images), root, stray_images[0],
        )
    return classes


def _list_class_folders(root: Path) -> Listing:
    not_images: list[str] = []
    per_class = _scan_class_folders(root, not_images)
    if not per_class:
        raise DataError(
            f"'{root}' has no subfolders. Put the images of each class in its own subfolder "
            f"({root}/<class>/<image>), or use train/ val/ test/ subfolders, or a CSV manifest."
        )
    return Listing("class-folders", root, {"train": per_class}, not_images)


def _list_split_folders(root: Path, split_dirs: dict[str, Path]) -> Listing:
    known = {name for names in SPLIT_ALIASES.values() for name in names}
    others = [p.name for p in _visible_subdirs(root) if p.name not in known]
    if others:
        logger.warning(
            "'%s' has train/ so it is read as split folders; ignoring other subfolders: %s",
            root, ", ".join(others),
        )
    not_images: list[str] = []
    per_split = {split: _scan_class_folders(folder, not_images) for split, folder in split_dirs.items()}
    return Listing("split-folders", split_dirs["train"], per_split, not_images)


# --------------------------------------------------------------------------- discovery


def discover(
    data: str | Path,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    verify: bool = True,
) -> DataSplits:
    """Resolve ``data`` (folder or CSV) into a stratified, seeded ``DataSplits``.

    ``val_fraction`` and ``test_fraction`` are fractions of each class's images (of the
    whole class folder, or of ``train/`` when a split folder or CSV lacks that split).
    """
    _check_fractions(val_fraction, test_fraction)
    listing = list_files(data)
    skipped = [f"{path}: {NOT_AN_IMAGE}" for path in listing.not_images]
    if verify:
        listing = listing.without(_verify((p for p, _, _ in listing.files()), skipped))
    classes, lists = _assemble(listing, val_fraction, test_fraction, seed)
    return DataSplits(classes, skipped=skipped, source=listing.source, seed=seed, **lists)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}={value} must be in [0, 1).")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training "
            f"images; keep the sum below 1 (e.g. 0.15 + 0.15)."
        )


def _verify(paths: Iterable[str], skipped: list[str]) -> set[str]:
    """Decode every path once (threads: Pillow releases the GIL); return the bad ones."""
    paths = list(paths)
    if not paths:
        return set()
    start = time.perf_counter()

    def check(path: str) -> str | None:
        try:
            # draft_size: JPEGs decode at reduced scale; the whole stream is still read,
            # so truncation and corruption are still found.
            load_image(path, draft_size=64)
        except ImageDecodeError as err:
            return str(err)
        return None

    workers = min(32, (os.cpu_count() or 1) * 2, len(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, paths))
    bad = set()
    for path, error in zip(paths, results, strict=True):
        if error is not None:
            bad.add(path)
            skipped.append(error)
    logger.info(
        "Verified %d images in %.1f s: %d could not be decoded.",
        len(paths), time.perf_counter() - start, len(bad),
    )
    for error in [e for e in results if e is not None][:5]:
        logger.warning("Skipping undecodable image %s", error)
    return bad


def _usable_classes(per_class: dict[str, list[str]], where: Path) -> list[str]:
    empty = sorted(name for name, paths in per_class.items() if not paths)
    if empty:
        logger.warning(
            "Ignoring %d class folder(s) in '%s' with no usable images: %s",
            len(empty), where, ", ".join(empty),
        )
    classes = sorted(name for name, paths in per_class.items() if paths)
    if len(classes) < 2:
        if where.is_file():  # a CSV manifest: its labels are the classes
            fix = "Give the training rows at least two different labels, e.g. cat and dog."
        else:
            fix = (f"Put the images of each class in its own subfolder, e.g. "
                   f"{where}/cat/1.jpg and {where}/dog/1.jpg.")
        raise DataError(
            f"'{where}' has {len(classes)} class(es) with usable images"
            f"{' (' + ', '.join(classes) + ')' if classes else ''}; classification needs at "
            f"least two. {fix}"
        )
    return classes


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of a class's ``n`` images go to val and test (the rest train).

    Rounded per class, so each split holds each class in proportion. Small classes keep
    at least one training image; with 3+ images each requested split gets at least one,
    with 2 the second image goes to the larger of val / test.
    """

    def rounded(x: float) -> int:
        return int(math.floor(x + 0.5))

    n_val, n_test = rounded(n * val_fraction), rounded(n * test_fraction)
    if n >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    elif n == 2 and (val_fraction > 0 or test_fraction > 0):
        n_val, n_test = (1, 0) if val_fraction >= test_fraction else (0, 1)
    else:
        n_val = n_test = 0
    while n_val + n_test > n - 1:  # at least one training image per class
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _stratified_split(
    per_class: dict[str, list[str]],
    classes: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Shuffle each class with its own seeded generator and cut it by ``_split_counts``.

    Per class rather than sklearn's ``train_test_split(stratify=...)``: that raises on a
    class with one image and can leave a small class out of val or test entirely. The
    generator is seeded by (seed, class name), so adding images to one class does not
    reshuffle the others.
    """
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for label, name in enumerate(classes):
        paths = sorted(per_class.get(name, []))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = [paths[i] for i in rng.permutation(len(paths))]
        n_val, n_test = _split_counts(len(order), val_fraction, test_fraction)
        val += [(p, label) for p in order[:n_val]]
        test += [(p, label) for p in order[n_val : n_val + n_test]]
        train += [(p, label) for p in order[n_val + n_test :]]
    return sorted(train), sorted(val), sorted(test)


def _assemble(
    listing: Listing, val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[str], dict[str, list[Sample]]]:
    """Classes from train; the splits a layout gives are kept, the missing ones cut from train."""
    classes = training_classes(listing)
    index = {name: i for i, name in enumerate(classes)}
    per_split = listing.images
    has_val = any(per_split.get("val", {}).values())
    has_test = any(per_split.get("test", {}).values())
    split_val = 0.0 if has_val else val_fraction
    split_test = 0.0 if has_test else test_fraction
    train, val, test = _stratified_split(per_split["train"], classes, split_val, split_test, seed)
    lists = {"train": train, "val": val, "test": test}
    for split, present in (("val", has_val), ("test", has_test)):
        if present:
            lists[split] = sorted(
                (p, index[name]) for name, paths in per_split[split].items() for p in paths
            )
        elif listing.source != "class-folders":  # class folders never hold a split
            logger.info(
                "No %s split in '%s': %d images split off train.",
                split, listing.where, len(lists[split]),
            )
    return classes, lists


def _canonical_split(value: str) -> str | None:
    value = value.strip().lower()
    for split, names in SPLIT_ALIASES.items():
        if value in names:
            return split
    return None


def _list_csv(csv_path: Path) -> Listing:
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    columns = [c.strip().lower() for c in header or []]
    expected = "path,label or path,label,split"
    if not columns:
        raise DataError(f"CSV manifest '{csv_path}' is empty. Its first line must be the header {expected}.")
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown or "path" not in columns or "label" not in columns or len(set(columns)) != len(columns):
        raise DataError(
            f"CSV manifest '{csv_path}' has columns {columns}"
            f"{' (unknown: ' + ', '.join(unknown) + ')' if unknown else ''}; expected the header "
            f"{expected}. Rename the columns (the first line must be the header)."
        )
    col = {name: columns.index(name) for name in columns}
    has_split = "split" in col

    not_images: list[str] = []
    per_split: dict[str, dict[str, list[str]]] = {}
    missing: list[str] = []
    seen: dict[str, tuple[str, str]] = {}
    for line_no, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise DataError(
                f"{csv_path}, line {line_no}: {len(row)} fields, but the header has {len(columns)} "
                f"({','.join(columns)}). Quote fields that contain commas."
            )
        rel, label = row[col["path"]].strip(), row[col["label"]].strip()
        if not rel or not label:
            raise DataError(f"{csv_path}, line {line_no}: empty path or label. Fill in both.")
        split = "train"
        if has_split:
            split = _canonical_split(row[col["split"]]) or ""
            if not split:
                raise DataError(
                    f"{csv_path}, line {line_no}: unknown split '{row[col['split']]}'. "
                    f"Use one of: train, val, test."
                )
        path = os.path.abspath(os.path.join(base, os.path.expanduser(rel)))
        if path in seen:
            if seen[path] != (split, label):
                raise DataError(
                    f"{csv_path}, line {line_no}: '{rel}' is listed twice with different "
                    f"label/split ({seen[path]} and {(split, label)}). Keep one row per image."
                )
            continue
        seen[path] = (split, label)
        if not os.path.isfile(path):
            missing.append(rel)
            continue
        if not _has_image_extension(path):
            not_images.append(path)
            continue
        per_split.setdefault(split, {}).setdefault(label, []).append(path)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"CSV manifest '{csv_path}' lists {len(missing)} file(s) that do not exist: {shown}. "
            f"Paths are read relative to '{base}' unless absolute."
        )
    if not per_split.get("train"):
        raise DataError(
            f"CSV manifest '{csv_path}' has no training images"
            f"{' (no row with split=train)' if has_split and per_split else ''}. "
            f"Add rows path,label{',train' if has_split else ''}."
        )
    return Listing("csv", csv_path, per_split, not_images)

"""``finetune data check DIR``: what training would make of a dataset, without training.

    report = check_data("my_images", splits="runs/x/splits.json")
    print(report.format())          # or report.to_json()
    report.ok                       # False: report.problems says why training cannot run

The files and classes come from the functions that list them for ``finetune run``
(``sources.list_files`` and ``sources.training_classes``; ``discover`` splits what they
list), and every file is decoded exactly as training decodes it (``images.load_image``),
so a file this check calls usable is one training uses, and a file it calls broken is one
training skips. On top of that it reports what training tolerates but a person should
know: empty class folders, files that are not images, unusual colour modes and how they
are converted, tiny images, exact duplicate files (by content hash) and duplicates that
sit in different splits (test images leaking into training).

Training can proceed (``ok``) when at least two classes have usable training images and
every class with val / test images also has training images; everything else is a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from . import MAX_IMAGE_PIXELS, DataError, ImageDecodeError, load_image, load_splits
from .sources import SPLITS, list_files, training_classes

# Modes that reach the model unchanged or as plain grey; anything else is converted and
# reported, with how (images.py documents the conversions).
COMMON_MODES = frozenset({"RGB", "L"})
_CONVERSIONS = {
    "RGBA": "alpha composited on white",
    "LA": "alpha composited on white",
    "PA": "alpha composited on white",
    "P": "palette expanded to RGB",
    "1": "1-bit expanded to black/white RGB",
    "CMYK": "CMYK converted to RGB",
    "YCbCr": "YCbCr converted to RGB",
    "I;16": "16-bit grey rescaled by its value range",
    "I;16B": "16-bit grey rescaled by its value range",
    "I;16L": "16-bit grey rescaled by its value range",
    "I": "32-bit grey rescaled by its value range",
    "F": "float grey rescaled by its value range",
}
BOMB = "decompression bomb"
DEFAULT_MIN_SIZE = 32  # below this a picture carries little more than its average colour
_SHOWN = 20  # entries per section in the human-readable report; --json lists all


@dataclass
class DataCheck:
    """The findings of ``check_data``; ``ok`` says whether ``finetune run`` can train on it."""

    path: str
    layout: str = ""  # "class-folders" | "split-folders" | "csv" | "" (not understood)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> split -> usable
    unusable: dict[str, int] = field(default_factory=dict)  # class -> undecodable files
    empty_classes: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    undecodable: list[dict] = field(default_factory=list)  # {"path", "reason"}
    bombs: list[dict] = field(default_factory=list)  # {"path", "reason"}
    modes: dict[str, int] = field(default_factory=dict)  # mode -> usable images
    unusual_modes: list[dict] = field(default_factory=list)  # {"path", "mode", "conversion"}
    tiny: list[dict] = field(default_factory=list)  # {"path", "width", "height"}
    min_size: int = DEFAULT_MIN_SIZE
    duplicates: list[list[str]] = field(default_factory=list)  # groups of identical files
    conflicting_duplicates: list[list[str]] = field(default_factory=list)  # ... with different labels
    cross_split_duplicates: list[dict[str, str]] = field(default_factory=list)  # {path: split}
    problems: list[str] = field(default_factory=list)  # why training cannot proceed
    warnings: list[str] = field(default_factory=list)
    # (path, split, class) of every usable image, sorted. Not in to_json: its "classes"
    # table counts them, and a list of every file would swamp the report.
    usable: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_usable(self) -> int:
        return sum(sum(per_split.values()) for per_split in self.counts.values())

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "layout": self.layout,
            "ok": self.ok,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "classes": {name: {**per_split, "unusable": self.unusable.get(name, 0)}
                        for name, per_split in self.counts.items()},
            "num_usable": self.num_usable,
            "empty_classes": list(self.empty_classes),
            "not_images": list(self.not_images),
            "undecodable": list(self.undecodable),
            "decompression_bombs": list(self.bombs),
            "modes": dict(self.modes),
            "unusual_modes": list(self.unusual_modes),
            "tiny_images": {"min_size": self.min_size, "files": list(self.tiny)},
            "duplicates": [list(g) for g in self.duplicates],
            "conflicting_duplicates": [list(g) for g in self.conflicting_duplicates],
            "cross_split_duplicates": [dict(g) for g in self.cross_split_duplicates],
        }

    def format(self) -> str:
        """The human-readable report: a class table, then one section per finding."""
        root = Path(self.path)
        rel = _relative_to(root)
        lines = [f"Data check: {self.path}" + (f" ({self.layout})" if self.layout else "")]
        splits = [s for s in SPLITS if any(c.get(s) for c in self.counts.values())] or ["train"]
        if self.counts:
            heads = ["images"] if splits == ["train"] and self.layout == "class-folders" else splits
            width = max(12, *(len(n) for n in self.counts))
            lines.append("  " + "class".ljust(width) + "".join(h.rjust(8) for h in heads)
                         + "unusable".rjust(10))
            for name, per_split in self.counts.items():
                lines.append("  " + name.ljust(width)
                             + "".join(str(per_split.get(s, 0)).rjust(8) for s in splits)
                             + str(self.unusable.get(name, 0)).rjust(10))
            lines.append("  " + "total".ljust(width)
                         + "".join(str(sum(c.get(s, 0) for c in self.counts.values())).rjust(8)
                                   for s in splits)
                         + str(sum(self.unusable.values())).rjust(10))
        sections = [
            ("Empty class folders (excluded from training)", self.empty_classes),
            ("Not images (ignored)", [rel(p) for p in self.not_images]),
            ("Undecodable (skipped by training)",
             [f"{rel(e['path'])}: {e['reason']}" for e in self.undecodable]),
            ("Decompression bombs (refused before decoding)",
             [f"{rel(e['path'])}: {e['reason']}" for e in self.bombs]),
            ("Unusual modes (converted to RGB)",
             [f"{rel(e['path'])}: {e['mode']}, {e['conversion']}" for e in self.unusual_modes]),
            (f"Tiny images (under {self.min_size} px on a side)",
             [f"{rel(e['path'])}: {e['width']}x{e['height']}" for e in self.tiny]),
            ("Exact duplicates (same bytes)", [" = ".join(rel(p) for p in g) for g in self.duplicates]),
            ("Duplicates with different labels",
             [" = ".join(rel(p) for p in g) for g in self.conflicting_duplicates]),
            ("Duplicates across train/val/test (leakage)",
             [" = ".join(f"{rel(p)} [{s}]" for p, s in g.items()) for g in self.cross_split_duplicates]),
        ]
        for title, items in sections:
            if not items:
                continue
            lines.append(f"{title}: {len(items)}")
            lines += [f"  {item}" for item in items[:_SHOWN]]
            if len(items) > _SHOWN:
                lines.append(f"  ... and {len(items) - _SHOWN} more (--json lists all)")
        if self.modes:
            lines.append("Modes of usable images: "
                         + ", ".join(f"{m}={n}" for m, n in sorted(self.modes.items())))
        lines += [f"Warning: {w}" for w in self.warnings]
        if self.ok:
            lines.append(f"OK: training can proceed with {len(self.usable_classes())} classes and "
                         f"{self.num_usable} usable images.")
        else:
            lines += [f"Cannot train: {p}" for p in self.problems]
        return "\n".join(lines)

    def usable_classes(self, split: str = "train") -> list[str]:
        return [name for name, per_split in self.counts.items() if per_split.get(split, 0) > 0]


def _relative_to(root: Path):
    base = root if root.is_dir() else root.parent

    def rel(path: str) -> str:
        try:
            return str(Path(path).relative_to(base.resolve()))
        except ValueError:
            return path

    return rel


# ---------------------------------------------------------------------- the check
def check_data(
    data: str | Path,
    *,
    splits: str | Path | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> DataCheck:
    """Inspect ``data`` (anything ``--data`` accepts) and, optionally, a run's ``splits.json``."""
    root = Path(data).expanduser()
    report = DataCheck(path=str(root), min_size=min_size)
    if not root.exists():
        raise DataError(f"Data path '{root}' does not exist. Pass a folder of class subfolders, "
                        f"a folder with train/ val/ test/ subfolders, or a CSV manifest.")
    files, class_names = _listed(report, root)

    split_of: dict[str, str] = {}
    if splits is not None:
        saved = load_splits(Path(splits))
        split_of = {p: s for s in SPLITS for p, _ in saved.samples(s)}
    elif report.layout in ("split-folders", "csv"):
        split_of = {p: s for p, s, _ in files}

    to_inspect = sorted({p for p, _, _ in files} | {p for p in split_of if os.path.isfile(p)})
    results = dict(zip(to_inspect, _map(lambda p: _inspect(p, max_pixels), to_inspect), strict=True))

    counts: dict[str, Counter] = defaultdict(Counter)
    unusable: Counter = Counter()
    for path, split, name in files:
        info = results[path]
        counts[name][split] += 0  # a class whose every file is broken still gets its row
        if info["error"] is not None:
            unusable[name] += 1
        else:
            counts[name][split] += 1
            report.usable.append((path, split, name))
    report.usable.sort()
    report.counts = {name: dict(counts[name]) for name in sorted(counts)}
    report.unusable = {name: unusable[name] for name in sorted(unusable)}

    labels = {p: name for p, _, name in files}
    _file_findings(report, {p: results[p] for p in to_inspect if p in labels})
    _duplicates(report, results, labels, split_of)
    usable = {n for n, per_split in report.counts.items() if any(per_split.values())}
    report.empty_classes = sorted(class_names - usable)
    _verdict(report)
    return report


def _listed(report: DataCheck, root: Path) -> tuple[list[tuple[str, str, str]], set[str]]:
    """``(path, split, class)`` of every image file the layout names, and every class name
    (with image files or not); sets the layout, the non-images and, when ``finetune run``
    would refuse the layout or its classes before decoding anything, the problem."""
    # Discovery's warnings (empty folders, stray images) are sections of the report.
    with _quiet_discovery():
        try:
            listing = list_files(root)
        except DataError as err:
            report.problems.append(str(err))
            return [], set()
        try:
            training_classes(listing)
        except DataError as err:
            report.problems.append(str(err))
    files = listing.files()
    report.not_images = sorted(listing.not_images)
    # A refused layout with no file in it is not named: there is nothing to read it by.
    if files or report.not_images or not report.problems:
        report.layout = listing.source
    return files, {name for per_class in listing.images.values() for name in per_class}


def _file_findings(report: DataCheck, results: dict[str, dict]) -> None:
    """Broken files, bombs, unusual modes and tiny images among the data's own files."""
    for path, info in results.items():
        if info["error"] is not None:
            target = report.bombs if info["error"].startswith(BOMB) else report.undecodable
            target.append({"path": path, "reason": info["error"]})
            continue
        mode = info["mode"]
        report.modes[mode] = report.modes.get(mode, 0) + 1
        if mode not in COMMON_MODES or info["transparency"]:
            conversion = _CONVERSIONS.get(mode, f"{mode} converted to RGB")
            if info["transparency"] and mode in ("P", "L", "RGB"):
                conversion = "transparent colour composited on white"
            report.unusual_modes.append({"path": path, "mode": mode, "conversion": conversion})
        width, height = info["size"]
        if min(width, height) < report.min_size:
            report.tiny.append({"path": path, "width": width, "height": height})


@contextlib.contextmanager
def _quiet_discovery():
    logger = logging.getLogger("finetune")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _verdict(report: DataCheck) -> None:
    train = report.usable_classes("train")
    if report.problems:
        pass  # discover() already refused the layout; its message is the reason
    elif len(train) < 2:
        report.problems.append(
            f"{len(train)} class(es) with usable training images"
            f"{' (' + ', '.join(train) + ')' if train else ''}; classification needs at least "
            f"two. Fix or replace the undecodable files listed above."
        )
    for split in ("val", "test"):
        strangers = [n for n in report.usable_classes(split) if n not in train]
        if strangers and not report.problems:
            report.problems.append(
                f"class(es) {', '.join(strangers)} have {split} images but no usable training "
                f"images. Add training images for them, or remove them from {split}."
            )
    if report.empty_classes:
        report.warnings.append(f"{len(report.empty_classes)} class folder(s) without usable "
                               f"images are left out: {', '.join(report.empty_classes)}.")
    skipped = len(report.undecodable) + len(report.bombs)
    if skipped:
        report.warnings.append(f"{skipped} file(s) cannot be decoded and will be skipped.")
    if report.cross_split_duplicates:
        report.warnings.append(
            f"{len(report.cross_split_duplicates)} image(s) appear in more than one of "
            f"train/val/test: validation and test scores will be optimistic. Remove the copies."
        )
    if report.conflicting_duplicates:
        report.warnings.append(f"{len(report.conflicting_duplicates)} identical file group(s) "
                               f"carry different labels.")
    sizes = [sum(c.values()) for n, c in report.counts.items() if n in train]
    if sizes and max(sizes) > 3 * min(sizes):
        report.warnings.append(f"Classes are imbalanced ({max(sizes)}:{min(sizes)} images); "
                               f"`finetune run` weights the loss by class (--class-weights).")


def _duplicates(report: DataCheck, results: dict, labels: dict[str, str],
                split_of: dict[str, str]) -> None:
    groups: dict[str, list[str]] = defaultdict(list)
    for path, info in results.items():
        if info["sha256"] is not None and info["error"] is None:
            groups[info["sha256"]].append(path)
    for paths in (sorted(g) for g in groups.values() if len(g) > 1):
        in_data = [p for p in paths if p in labels]
        if len(in_data) > 1:
            report.duplicates.append(in_data)
            if len({labels[p] for p in in_data}) > 1:
                report.conflicting_duplicates.append(in_data)
        placed = {p: split_of[p] for p in paths if p in split_of}
        if len(set(placed.values())) > 1:
            report.cross_split_duplicates.append(placed)


# ---------------------------------------------------------------------- files
def _inspect(path: str, max_pixels: int) -> dict:
    """Decode ``path`` as training does; on success, its header's mode and size."""
    info: dict = {"error": None, "mode": None, "size": None, "transparency": False,
                  "sha256": _sha256(path)}
    try:
        # draft_size as in discover(): JPEGs decode at reduced scale, but the whole stream
        # is read, so truncation is found the same way.
        load_image(path, max_pixels=max_pixels, draft_size=64)
    except ImageDecodeError as err:
        info["error"] = err.reason
        return info
    with Image.open(path) as image:  # header only: load_image has already vetted the file
        info["mode"], info["size"] = image.mode, image.size
        info["transparency"] = "transparency" in image.info
    return info


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _map(fn, items: list):
    if not items:
        return []
    # Threads: hashing and Pillow's decoders release the GIL.
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2, len(items))) as pool:
        return list(pool.map(fn, items))


__all__ = ["DEFAULT_MIN_SIZE", "DataCheck", "check_data"]

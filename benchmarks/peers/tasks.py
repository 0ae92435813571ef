"""The benchmark's tasks as split folders that every tool reads: ``ROOT/<task>/{train,val,test}/<class>/``.

    python benchmarks/peers/tasks.py --root /work/peers/tasks [--only glyphs]

Each task is built (or reused), then split by finetune's own ``discover`` (seed 0, 15 %
validation, 15 % test, stratified), exactly the split ``finetune run --data <folder>``
draws; the files are copied into split folders, so finetune, timm, fastai, scikit-learn
and AutoGluon all train on the same images and are scored on the same test images.

Tasks:

* ``glyphs``, ``photos``: finetune's built-in sets at their default size;
* ``digits``: the built-in digits capped at 60 per class (600 of scikit-learn's 1,797),
  so that seven tools fit in the time a 2-core machine has;
* ``lfw``: scikit-image's bundled ``lfw_subset.npy``, 100 real 25x25 grey face crops from
  Labeled Faces in the Wild and 100 non-face crops (its docstring: faces first), a real
  image set that ships inside an installed package.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.data.builtin import build_dataset, package_dir
from finetune.data.sources import SPLITS, discover

TASKS = ("glyphs", "digits", "photos", "lfw")
PER_CLASS = {"glyphs": None, "digits": 60, "photos": None}


def build_lfw(root: Path) -> Path:
    """``root/lfw/{face,not_face}/<i>.png`` from scikit-image's lfw_subset.npy."""
    target = root / "lfw"
    if (target / "face").is_dir() and (target / "not_face").is_dir():
        return target
    faces = np.load(
        package_dir("skimage") / "data" / "lfw_subset.npy"
    )  # (200, 25, 25) float in [0, 1]
    tmp = root / ".lfw.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for i, image in enumerate(faces):
        folder = tmp / ("face" if i < len(faces) // 2 else "not_face")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    tmp.rename(target)
    return target


def source_folder(task: str, root: Path, per_class: int | None = None) -> Path:
    if task == "lfw":
        return build_lfw(root / "source")
    per_class = per_class if per_class is not None else PER_CLASS[task]
    return build_dataset(task, root=root / "source", per_class=per_class)


def export_splits(task: str, root: Path, per_class: int | None = None) -> dict:
    """Copy finetune's split of the task into ``root/<task>/``; return the counts.

    ``per_class`` overrides the task's size (built-in sets only); a folder exported
    before is reused, so give a different size its own ``root``.
    """
    splits = discover(source_folder(task, root, per_class), seed=0)
    target = root / task
    if not (target / "splits.json").is_file():
        tmp = root / f".{task}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for split in SPLITS:
            for path, label in splits.samples(split):
                folder = tmp / split / splits.classes[label]
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, folder / Path(path).name)
        (tmp / "splits.json").write_text(json.dumps(splits.to_json()) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return {"classes": len(splits.classes), **{s: len(splits.samples(s)) for s in SPLITS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--only", choices=TASKS, action="append", help="build only these tasks")
    args = parser.parse_args()
    for task in args.only or TASKS:
        print(task, json.dumps(export_splits(task, args.root)))


if __name__ == "__main__":
    main()

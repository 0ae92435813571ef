"""``finetune export``: the model leaves with its preprocessing, and proves it predicts the same.

    finetune export runs/photos-efficientnet_lite0-linear --format onnx
    -> runs/photos-efficientnet_lite0-linear/model/onnx/{model.onnx, model.json}

An export is a folder: the model file (named by its format: ``finetune.deploy.formats``
holds one module per format, with its writer and loader) and ``model.json``, which holds the labels in index order, the
backbone, the strategy, the run's metrics, the input and output tensors, and the
preprocessing as data (``preprocess_spec`` plus the exact resize, crop and rounding
rules) so that any runtime can feed the model what evaluation fed it.

Parity before success: the exported model, fed through what ``model.json`` says
(``finetune.load``), and the run's PyTorch model, fed through the evaluation pipeline,
classify real images from the run's test split at batch 1 and at batch 7. The largest
absolute difference in probabilities must stay within the format's tolerance
(``TOLERANCE`` in float32, ``HALF_TOLERANCE`` with ``half=True``, unless the format sets
its own), and that in logits within ``LOGIT_TOLERANCE`` (``HALF_LOGIT_TOLERANCE``) times
the largest logit, or the export fails and leaves nothing behind.

Atomic: everything is written to a hidden temporary folder next to the destination,
which is renamed into place only after parity passed; a failure or an interruption
removes it.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import load_image
from ..data.transforms import build_transform, jpeg_draft_size, preprocess_spec
from ..io import atomic_write_json, writing
from ..models import Backbone
from ..run_folder import load_run_model
from .formats import (
    FLOAT16,
    FLOAT32,
    INPUT_NAME,
    MODEL_JSON,
    OUTPUT_NAME,
    ExportError,
    ExportFormat,
    ExportOptions,
    get_format,
)
from .predict import load_export

log = logging.getLogger("finetune")

# The default bounds (finetune/deploy/formats/_spec.py says why these values).
TOLERANCE, LOGIT_TOLERANCE = FLOAT32
HALF_TOLERANCE, HALF_LOGIT_TOLERANCE = FLOAT16
PARITY_BATCH_SIZES = (1, 7)
# Traced and exported at batch 2, checked at 1 and 7: a batch size baked into the graph
# (a reshape with a constant) fails parity instead of shipping.
EXAMPLE_BATCH = 2

# How evaluation resizes (albumentations' SmallestMaxSize + CenterCrop on OpenCV), stated
# so that a runtime without OpenCV can reproduce it; docs/export.md has a numpy version.
RESIZE_RULE = (
    "s = resize / min(h, w); new size (max(1, round(h * s)), max(1, round(w * s))) with "
    "Python's round (half to even); no resize when the size is unchanged. s < 1: area "
    "interpolation (OpenCV INTER_AREA: each output pixel is the mean of the input area it "
    "covers, weighted by overlap). s > 1: `interpolation` as OpenCV computes it: pixel "
    "centres at (i + 0.5) * (n_in / n_out) - 0.5, taps beyond the edge repeat the edge "
    "pixel, bicubic with a = cubic_coefficient. The result is rounded to uint8."
)
CROP_RULE = "centre crop: top = (h' - crop) // 2, left = (w' - crop) // 2, crop x crop pixels"
NORMALIZE_RULE = "x / max_pixel_value, then (x - mean) / std per channel, in float32; HWC -> CHW"
CUBIC_COEFFICIENT = -0.75  # OpenCV's INTER_CUBIC (Pillow and PyTorch use -0.5)
STEPS = (
    "decode (a JPEG at reduced scale: Pillow's Image.draft('RGB', (jpeg_draft_size,) * 2))",
    "apply the EXIF orientation (PIL.ImageOps.exif_transpose)",
    "convert to RGB uint8; transparency composited over white; 16-bit grey stretched min..max",
    "resize: see resize_rule",
    "crop: see crop_rule",
    "normalise: see normalize_rule; stack into a (B, 3, crop, crop) batch",
)


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float  # largest |p_export - p_pytorch| over images, classes, batch sizes
    max_abs_logit_diff: float  # the same for logits
    logit_scale: float  # max(1, largest |logit| of the PyTorch model)
    top1_agree: int  # images whose top-1 label agrees at every batch size
    num_images: int
    batch_sizes: tuple[int, ...]
    tolerance: float  # on probabilities
    logit_tolerance: float  # on logits, times logit_scale
    images: str  # which images, in words ("7 test images")

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff) and np.isfinite(self.max_abs_logit_diff)
                    and self.max_abs_diff <= self.tolerance
                    and self.max_abs_logit_diff <= self.logit_tolerance * self.logit_scale)

    def describe(self) -> str:
        sizes = " and ".join(str(b) for b in self.batch_sizes)
        return (f"max |p_export - p_pytorch| = {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e}), "
                f"max |logit difference| = {self.max_abs_logit_diff:.2e} (tolerance "
                f"{self.logit_tolerance:.0e} x {self.logit_scale:.3g}), top-1 agreement "
                f"{self.top1_agree}/{self.num_images}, on {self.images} at batch {sizes}")

    def to_json(self) -> dict:
        return {**asdict(self), "batch_sizes": list(self.batch_sizes), "passed": self.passed}


@dataclass
class ExportResult:
    path: Path  # the export folder
    format: str
    model_file: Path
    parity: Parity
    metadata: dict  # the content of model.json


# ---------------------------------------------------------------------- entry points
def export_run(
    run_dir: str | Path,
    *,
    format: str,
    output: str | Path | None = None,
    opset: int | None = None,
    half: bool = False,
    overwrite: bool = False,
) -> ExportResult:
    """Export a run's best model to ``output`` (default ``RUN_DIR/model/<format>``)."""

    run_dir = Path(run_dir)
    _export_format(format).options(half=half, opset=opset)  # before the run is read
    model, cfg, splits = load_run_model(run_dir)  # weights_only=True: a code pickle is refused
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    images, where = parity_images(splits)
    return export_model(
        model,
        labels=splits.classes,
        image_size=cfg.image_size or model.pretrained_cfg.image_size,
        format=format,
        output=Path(output) if output is not None else run_dir / "model" / format,
        images=images,
        images_desc=where,
        opset=opset,
        half=half,
        overwrite=overwrite,
        info={
            "strategy": cfg.strategy,
            "hflip": cfg.hflip,
            "metrics": {"test": metrics.get("test"), "val": metrics.get("val")},
            "run": str(run_dir),
        },
    )


def export_model(
    model: Backbone,
    *,
    labels: Sequence[str],
    image_size: int,
    format: str,
    output: str | Path,
    images: Sequence[str | Path],
    images_desc: str | None = None,
    opset: int | None = None,
    half: bool = False,
    overwrite: bool = False,
    info: dict | None = None,
) -> ExportResult:
    """Export ``model`` (a backbone with its trained head; moved to the CPU, eval mode) and
    check parity on ``images`` (real image files, at least one; reused cyclically up to
    batch 7)."""
    spec = _export_format(format)
    options = spec.options(half=half, opset=opset)
    if len(labels) != model.num_classes:
        raise ExportError(f"{len(labels)} labels for a model with {model.num_classes} outputs; "
                          f"pass one label per class, in index order.")
    if not images:
        raise ExportError("Parity needs real images and none were given.")
    dest = Path(output).expanduser()
    _check_destination(dest, overwrite)
    model = model.cpu().eval()
    unique = len(images)
    images = [Path(images[i % unique]) for i in range(max(PARITY_BATCH_SIZES))]
    desc = images_desc or f"{unique} images"
    if unique < len(images):
        desc += f" (repeated to {len(images)})"

    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The export is written to a temporary folder beside dest and renamed into place: a
    # full disk leaves dest as it was.
    kept = (f"the previous export in {dest} is intact" if (dest / MODEL_JSON).is_file()
            else f"nothing was written to {dest}")
    with writing(dest, f"free space in {dest.parent} or export with --output to another "
                       f"disk; {kept}", whole=True):
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            exported = copy.deepcopy(model).half() if half else model
            example = _eval_batch(model, images[:EXAMPLE_BATCH], image_size)
            example = example.half() if half else example
            spec.write(exported, tmp / spec.model_file, example, options)
            metadata = build_metadata(model, labels=labels, image_size=image_size, format=format,
                                      half=half, opset=options.opset, info=info)
            atomic_write_json(tmp / MODEL_JSON, metadata)

            bounds = spec.parity_tolerances(half)
            parity = check_parity(model, tmp, images, image_size=image_size, images_desc=desc,
                                  tolerance=bounds.probability, logit_tolerance=bounds.logit)
            metadata["parity"] = parity.to_json()
            atomic_write_json(tmp / MODEL_JSON, metadata)
            if not parity.passed:
                hint = (" float16 lost too much here: export without --half." if half else
                        " The export or its model.json preprocessing differs from the evaluated "
                        "model; report this with the run's backbone and the format.")
                raise ExportError(f"Parity check failed for the {format} export: {parity.describe()}. "
                                  f"Nothing was written: '{dest}' is as it was.{hint}")
            _move_into_place(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in created:  # deepest first: only folders this export made, if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
    log.info("Exported %s to %s; parity: %s", format, dest, parity.describe())
    return ExportResult(path=dest, format=format, model_file=dest / spec.model_file,
                        parity=parity, metadata=metadata)


# ---------------------------------------------------------------------- pieces
def parity_images(splits, n: int = max(PARITY_BATCH_SIZES)) -> tuple[list[Path], str]:
    """Up to ``n`` readable images: the test split first, then val, then train."""
    chosen: list[Path] = []
    counts: dict[str, int] = {}
    for split in ("test", "val", "train"):
        for path, _ in getattr(splits, split):
            if len(chosen) == n:
                break
            if Path(path).is_file():
                chosen.append(Path(path))
                counts[split] = counts.get(split, 0) + 1
    if not chosen:
        raise ExportError("None of the run's images exist at the paths in splits.json; parity "
                          "needs real images. Restore the data folder, then export again.")
    return chosen, " + ".join(f"{c} {split}" for split, c in counts.items()) + " images"


def build_metadata(model: Backbone, *, labels: Sequence[str], image_size: int, format: str,
                   half: bool, opset: int | None = None, info: dict | None = None) -> dict:
    """The content of ``model.json`` (docs/export.md describes every field); the format
    adds its own fields after ``half``."""
    import albumentations
    import cv2

    export_format = _export_format(format)
    spec = preprocess_spec(model.pretrained_cfg, image_size)
    crop = spec["crop"]
    dtype = "float16" if half else "float32"
    meta: dict = {
        "format": format,
        "model_file": export_format.model_file,
        "labels": list(labels),
        "num_classes": len(labels),
        "backbone": model.variant,
        "strategy": (info or {}).get("strategy"),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, crop, crop], "dtype": dtype},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(labels)], "dtype": dtype,
                   "meaning": "logits; softmax over axis 1 gives the probabilities"},
        "preprocessing": {
            **spec,
            "cubic_coefficient": CUBIC_COEFFICIENT,
            "resize_rule": RESIZE_RULE,
            "crop_rule": CROP_RULE,
            "normalize_rule": NORMALIZE_RULE,
            "steps": list(STEPS),
            # Whether the run trained with horizontal flips: test-time augmentation
            # (predict --tta) adds a mirrored view only then.
            "hflip": bool((info or {}).get("hflip", False)),
            "reference": (f"finetune.data.load_image + build_transform(train=False): "
                          f"albumentations {albumentations.__version__}, OpenCV {cv2.__version__}"),
        },
        "half": half,
    }
    if export_format.metadata is not None:
        meta.update(export_format.metadata(model, ExportOptions(half=half, opset=opset)))
    for key in ("metrics", "run"):
        if info and key in info:
            meta[key] = info[key]
    meta["finetune_version"] = importlib.metadata.version("finetune")
    meta["torch_version"] = torch.__version__
    return meta


def check_parity(reference: Backbone, export_dir: Path, images: Sequence[Path], *,
                 image_size: int, tolerance: float = TOLERANCE,
                 logit_tolerance: float = LOGIT_TOLERANCE, images_desc: str = "") -> Parity:
    """The export (fed by ``finetune.load``, i.e. by what model.json says) against
    ``reference`` fed by the evaluation pipeline, at every size in PARITY_BATCH_SIZES."""
    with torch.inference_mode():
        expected_logits = reference(_eval_batch(reference, images, image_size)).float()
    expected = torch.softmax(expected_logits, 1).numpy().astype(np.float64)
    predictor = load_export(export_dir)
    worst = worst_logit = 0.0
    agree = np.ones(len(images), dtype=bool)
    for batch_size in PARITY_BATCH_SIZES:
        logits = np.concatenate([
            predictor.logits(torch.stack([predictor.preprocess(p) for p in images[i:i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]).astype(np.float64)
        got = torch.softmax(torch.from_numpy(logits), 1).numpy()
        worst = max(worst, float(np.abs(got - expected).max()))
        worst_logit = max(worst_logit, float(np.abs(logits - expected_logits.numpy()).max()))
        agree &= got.argmax(1) == expected.argmax(1)
    return Parity(max_abs_diff=worst, max_abs_logit_diff=worst_logit,
                  logit_scale=max(1.0, float(expected_logits.abs().max())),
                  top1_agree=int(agree.sum()), num_images=len(images),
                  batch_sizes=PARITY_BATCH_SIZES, tolerance=tolerance,
                  logit_tolerance=logit_tolerance, images=images_desc or f"{len(images)} images")


def _eval_batch(model: Backbone, images: Sequence[Path], image_size: int) -> torch.Tensor:
    """(N, 3, S, S): what evaluation feeds the model (the data module's eval path)."""
    cfg = model.pretrained_cfg
    transform = build_transform(cfg, image_size=image_size, train=False)
    draft = jpeg_draft_size(cfg, image_size)
    return torch.stack([transform(image=load_image(p, draft_size=draft))["image"] for p in images])


def _export_format(name: str) -> ExportFormat:
    try:
        return get_format(name)
    except ValueError as err:
        raise ExportError(str(err)) from None


def _check_destination(dest: Path, overwrite: bool) -> None:
    if dest.is_file():
        raise ExportError(f"Export destination '{dest}' is a file; --output takes a folder.")
    if dest.is_dir() and any(dest.iterdir()):
        if not (dest / MODEL_JSON).is_file():
            raise ExportError(f"'{dest}' is a folder that holds other files, not an export; choose "
                              f"an empty or new folder with --output.")
        if not overwrite:
            raise ExportError(f"'{dest}' already holds an export. Use --overwrite to replace it "
                              f"(the old one stays until the new one passes parity), or --output.")


def _apply_umask(folder: Path) -> None:
    """Temporary files and folders are created private (0600 / 0700); the export gets the
    permissions an ordinary file written by this user would get."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; an old export at ``dest`` is moved aside first and
    deleted only after the new one is in place, so some complete export is always there."""
    _apply_umask(tmp)
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, old / "export")
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old / "export", dest)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "HALF_LOGIT_TOLERANCE",
    "HALF_TOLERANCE",
    "LOGIT_TOLERANCE",
    "TOLERANCE",
    "ExportError",
    "ExportResult",
    "Parity",
    "build_metadata",
    "check_parity",
    "export_model",
    "export_run",
    "parity_images",
]

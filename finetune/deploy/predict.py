"""Predict with a trained model, from a run folder or any export folder, the same everywhere.

    import finetune
    predictor = finetune.load("runs/photos-efficientnet_lite0-linear/model/onnx")
    predictor.predict("cat.jpg", top_k=3)  # [Prediction(label='cat', probability=0.97), ...]
    predictor.predict([Image.open("a.png"), np.asarray(rgb)])  # one list per image
    predictor.predict("cat.jpg", tta=True)  # averaged over predictor.tta_views (deploy/tta.py)

Every image goes through the evaluation pipeline, the one implementation the toolkit
has: ``finetune.data.load_image`` (EXIF orientation, RGB conversion, JPEG draft decoding
at the recorded size) and ``build_transform(train=False)`` (shorter side resized, centre
crop, normalisation). An export carries that pipeline as data (``model.json``,
``preprocessing``); a run folder derives it from its backbone's pretrained config with
``preprocess_spec``, as evaluation does.

An export folder is read by its format's loader (``finetune.deploy.formats``), chosen by
``model.json``'s ``format``. Loading is safe: a run's checkpoint is read with
``torch.load(weights_only=True)``, and a checkpoint that would need arbitrary code to
unpickle is refused (``UnsafeCheckpointError``); each format's loader refuses the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from ..data import ImageDecodeError, is_image_file, load_image
from ..data.images import apply_exif_orientation, to_rgb
from ..data.transforms import build_transform, preprocess_spec, resolve_sizes
from ..models import Backbone, PretrainedCfg
from ..run_folder import load_run_model
from .formats import MODEL_JSON, Forward, format_names, get_format, torch_forward
from .tta import tta_probabilities, tta_views

ImageInput = str | Path | Image.Image | np.ndarray


class Prediction(NamedTuple):
    label: str
    probability: float


def pretrained_cfg_from_spec(spec: dict) -> PretrainedCfg:
    """The ``PretrainedCfg`` with which ``build_transform`` does exactly what ``spec`` says.

    ``crop_pct`` is recovered as crop / resize and checked: ``resolve_sizes`` must give
    back the recorded resize and crop, else the spec is refused rather than approximated.
    """
    expected = {"downscale_interpolation": "area", "channel_order": "RGB", "layout": "NCHW",
                "max_pixel_value": 255.0}
    for key, value in expected.items():
        if spec.get(key, value) != value:
            raise ValueError(
                f"model.json preprocessing has {key}={spec[key]!r}; this version of finetune "
                f"implements {key}={value!r} only. Re-export the model with this version."
            )
    try:
        crop, resize = int(spec["crop"]), int(spec["resize"])
        cfg = PretrainedCfg(
            input_size=(3, crop, crop),
            mean=tuple(float(m) for m in spec["mean"]),
            std=tuple(float(s) for s in spec["std"]),
            interpolation=str(spec["interpolation"]),
            crop_pct=crop / resize,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"model.json preprocessing is incomplete or malformed ({err!r}); "
                         f"re-export the model with `finetune export`.") from None
    if resolve_sizes(cfg, crop) != (crop, resize):
        raise ValueError(f"model.json preprocessing: resize {resize} and crop {crop} cannot be "
                         f"reproduced (crop must not exceed resize).")
    return cfg


def to_rgb_array(image: ImageInput, *, draft_size: int | None = None) -> np.ndarray:
    """Any accepted input -> (H, W, 3) uint8 RGB, as ``load_image`` would read it.

    Paths go through ``load_image`` itself. A PIL image gets the same EXIF orientation
    and mode conversion (on a copy: the caller's image is not changed); it is already
    decoded, so ``draft_size`` cannot apply to it. An array must already be upright RGB.
    """
    if isinstance(image, (str, Path)):
        return load_image(image, draft_size=draft_size)
    if isinstance(image, Image.Image):
        return to_rgb(apply_exif_orientation(image.copy(), Path("<PIL image>")))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"An image array must be (H, W, 3) uint8 RGB; got shape {image.shape} and dtype "
                f"{image.dtype}. Use np.asarray(Image.open(path).convert('RGB')), or pass the path."
            )
        return np.ascontiguousarray(image)
    raise TypeError(f"Cannot predict on a {type(image).__name__}: pass a path, a PIL image or "
                    f"an (H, W, 3) uint8 RGB array.")


class Predictor:
    """A model plus its preprocessing: ``predict(images, top_k=5)``.

    Built by :func:`load`; ``forward`` maps a normalised (B, 3, S, S) batch to logits.
    """

    def __init__(self, forward: Forward, *, labels: Sequence[str], preprocessing: dict,
                 kind: str, source: Path, info: dict | None = None) -> None:
        self._forward = forward
        self.labels = list(labels)
        self.preprocessing = dict(preprocessing)
        self.kind = kind  # "run", or the export format's name
        self.source = Path(source)
        self.info = dict(info or {})
        cfg = pretrained_cfg_from_spec(self.preprocessing)
        self.image_size = cfg.image_size
        self._transform = build_transform(cfg, image_size=cfg.image_size, train=False)
        self._draft_size = self.preprocessing.get("jpeg_draft_size")
        # Whether the run trained with horizontal flips; an export from before model.json
        # recorded it gets no mirrored view.
        self.hflip = bool(self.preprocessing.get("hflip", False))

    @property
    def tta_views(self) -> list[str]:
        """The test-time views ``tta=True`` averages (finetune/deploy/tta.py)."""
        return tta_views(hflip=self.hflip)

    def __repr__(self) -> str:
        return (f"Predictor({self.kind} from '{self.source}', {len(self.labels)} labels, "
                f"{self.image_size} px)")

    # ------------------------------------------------------------------ steps
    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image -> (3, S, S) float32, exactly as evaluation prepares it."""
        return self._transform(image=to_rgb_array(image, draft_size=self._draft_size))["image"]

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed batch -> (B, C) float32 logits."""
        return self._forward(batch).float().numpy()

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor, *, tta: bool = False) -> np.ndarray:
        """(B, 3, S, S) preprocessed batch -> (B, C) float32 softmax probabilities;
        ``tta``: averaged over ``tta_views``."""
        if tta:
            return tta_probabilities(self._forward, batch, self.tta_views).numpy()
        return torch.softmax(self._forward(batch).float(), dim=1).numpy()

    def predict_proba(self, images: ImageInput | Sequence[ImageInput], *,
                      batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """(N, C) probabilities, in input order; ``batch_size`` images run at a time."""
        items, _ = _as_list(images)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1.")
        out = [self.probabilities(torch.stack([self.preprocess(im) for im in items[i:i + batch_size]]),
                                  tta=tta)
               for i in range(0, len(items), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[list[Prediction]]:
        """The ``k`` most probable labels of each row of ``probs``, most probable first."""
        if k < 1:
            raise ValueError(f"top_k={k} must be at least 1.")
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[Prediction(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]

    def predict(self, images: ImageInput | Sequence[ImageInput], *, top_k: int = 5,
                batch_size: int = 32, tta: bool = False) -> list[Prediction] | list[list[Prediction]]:
        """Top-k ``Prediction(label, probability)`` for one image, or a list per image.

        ``images``: a path, a PIL image, an (H, W, 3) uint8 RGB array, a list of those,
        or an (N, H, W, 3) uint8 array. ``tta``: probabilities averaged over the
        test-time views (``tta_views``).
        """
        items, single = _as_list(images)
        result = self.top_k(self.predict_proba(items, batch_size=batch_size, tta=tta), top_k)
        return result[0] if single else result


def _as_list(images) -> tuple[list, bool]:
    if isinstance(images, (str, Path, Image.Image)):
        return [images], True
    if isinstance(images, np.ndarray):
        return ([images], True) if images.ndim == 3 else (list(images), False)
    return list(images), False


# ---------------------------------------------------------------------- loading
def load(path: str | Path, *, device: str | torch.device = "cpu") -> Predictor:
    """A ``Predictor`` for a run folder (``finetune run``) or an export folder (``finetune
    export``; a file inside one works too). ``device`` applies to run folders and to the
    formats that run in PyTorch; a format with its own runtime says what it runs on."""
    path = Path(path).expanduser()
    if path.is_file() and (path.parent / MODEL_JSON).is_file():
        path = path.parent
    if (path / MODEL_JSON).is_file():
        return load_export(path, device=device)
    if (path / "config.yaml").is_file():
        return load_run(path, device=device)
    if not path.exists():
        raise FileNotFoundError(f"Model '{path}' does not exist. Pass a run folder or an export folder.")
    raise ValueError(f"'{path}' is neither a run folder (no config.yaml) nor an export folder "
                     f"(no {MODEL_JSON}). Pass the folder that `finetune run` or `finetune export` wrote.")


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu") -> Predictor:
    """The run's best checkpoint (read with ``weights_only=True``) and its eval pipeline."""
    run_dir = Path(run_dir)
    model, cfg, splits = load_run_model(run_dir)
    spec = {**preprocess_spec(model.pretrained_cfg, cfg.image_size or model.pretrained_cfg.image_size),
            "hflip": cfg.hflip}
    info = {"backbone": model.variant, "strategy": cfg.strategy}
    return Predictor(torch_forward(model, device), labels=splits.classes, preprocessing=spec,
                     kind="run", source=run_dir, info=info)


def read_model_json(folder: str | Path) -> dict:
    path = Path(folder) / MODEL_JSON
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"Cannot read '{path}': {err}. Re-export the model.") from None
    missing = [k for k in ("format", "labels", "backbone", "preprocessing") if k not in meta]
    if missing:
        raise ValueError(f"'{path}' lacks {', '.join(missing)}: it was not written by `finetune export`.")
    try:
        get_format(meta["format"])
    except ValueError as err:
        raise ValueError(f"'{path}': {err} Export the run again with this version of finetune, "
                         f"or install the version that wrote it.") from None
    return meta


def load_export(folder: str | Path, *, device: str | torch.device = "cpu") -> Predictor:
    folder = Path(folder)
    meta = read_model_json(folder)
    spec = get_format(meta["format"])
    model_file = folder / spec.model_file
    if not model_file.is_file():
        raise FileNotFoundError(f"'{model_file}' is missing: {folder / MODEL_JSON} describes a "
                                f"{spec.name} export. Re-export the run.")
    forward = spec.load(model_file, meta, torch.device(device))
    info = {k: meta.get(k) for k in ("backbone", "strategy", "metrics", "parity")}
    return Predictor(forward, labels=meta["labels"], preprocessing=meta["preprocessing"],
                     kind=spec.name, source=folder, info=info)


def load_backbone(folder: str | Path) -> Backbone:
    """An export as the package's own backbone, ready to evaluate or train on, for the
    formats that hold the backbone's weights: ``create_backbone(model.json's backbone,
    num_classes=len(labels))`` + its weights."""
    folder = Path(folder)
    meta = read_model_json(folder)
    spec = get_format(meta["format"])
    if spec.load_backbone is None:
        able = [n for n in format_names() if get_format(n).load_backbone is not None]
        raise ValueError(f"'{folder}' is a {spec.name} export; load_backbone reads "
                         f"{' or '.join(able)} exports (`finetune export RUN_DIR --format "
                         f"{able[0] if able else '...'}`).")
    return spec.load_backbone(folder / spec.model_file, meta)


# ---------------------------------------------------------------------- files and folders
def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded to every image file inside them, sorted, recursively."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)))
        else:
            found.append(p)
    return found


def predict_files(predictor: Predictor, files: Sequence[Path], *, top_k: int = 5,
                  batch_size: int = 32, tta: bool = False) -> Iterator[tuple[Path, list[Prediction] | None, str | None]]:
    """``(path, predictions, None)`` per readable file, ``(path, None, reason)`` per file that
    cannot be decoded: one bad file is reported, never the end of a folder's predictions."""
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        tensors, ok, failed = [], [], {}
        for f in chunk:
            try:
                tensors.append(predictor.preprocess(f))
                ok.append(f)
            except ImageDecodeError as err:
                failed[f] = err.reason
        preds = iter(())
        if tensors:
            probs = predictor.probabilities(torch.stack(tensors), tta=tta)
            preds = iter(predictor.top_k(probs, top_k))
        for f in chunk:
            yield (f, None, failed[f]) if f in failed else (f, next(preds), None)


__all__ = [
    "MODEL_JSON",
    "Prediction",
    "Predictor",
    "collect_images",
    "load",
    "load_backbone",
    "load_export",
    "load_run",
    "predict_files",
    "pretrained_cfg_from_spec",
    "read_model_json",
    "to_rgb_array",
]

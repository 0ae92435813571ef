"""What the recommender measures: the data's amount, its shift from the checkpoint's
BatchNorm statistics per depth, and the label information in frozen features per depth.

Everything runs on a class-stratified subsample with at most three forward passes:

1. eval mode, the checkpoint as it is: the mean and variance of every BatchNorm layer's
   input over the data (compared with the layer's stored ``running_mean`` /
   ``running_var``), the globally pooled output of every stage, the penultimate features;
2. BatchNorm layers in training mode with cumulative statistics (AdaBN, Li et al. 2016):
   every layer now normalises with the data's own statistics, so the input of layer l is
   what it would be had every earlier layer been re-estimated on the data. Its distance
   from layer l's stored statistics is the shift that *remains* after AdaBN: pixel-level
   shift (blur, noise, colour cast) enters early and is removed; semantic shift persists;
3. eval mode with the re-estimated statistics: the penultimate features after AdaBN.

The probes are ridge classifiers on one-hot targets scored by exact leave-one-out
(closed form from one eigendecomposition: every depth, every regularisation strength,
in well under a second for hundreds of images). Leave-one-out rather than k-fold
because the cells that matter most have 5-20 images per class, where k folds are noisy
or impossible; ridge rather than logistic regression because its leave-one-out needs no
refitting; accuracy rather than LogME's evidence because a user can read "87 % (chance
12 %)" and because the little-data warning quotes it as the expected accuracy.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.images import ImageDecodeError, load_image
from ..data.transforms import build_transform, jpeg_draft_size, normalize_batch
from ..models import Backbone

Sample = tuple[str, int]

# A channel whose variance is below this (in either distribution) is treated as dead:
# its divergence is dominated by the floor and says nothing about the data.
_VAR_FLOOR = 1e-4
# Per-channel symmetric KL is capped here before averaging, so that a handful of nearly
# dead channels cannot outweigh hundreds of informative ones (log-scale: about e^4).
_KL_CAP = 50.0
# Regularisation strengths of the ridge probes, relative to the mean eigenvalue of the
# Gram matrix (so the same grid suits every depth, whatever its feature scale).
RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


# ------------------------------------------------------------------------- amount
def amount_stats(samples: Sequence[Sample], classes: Sequence[str], *, header_limit: int = 4000,
                 seed: int = 0) -> dict:
    """Counts per class and image sizes from file headers (no pixel is decoded)."""
    counts = Counter(label for _, label in samples)
    per_class = [counts.get(i, 0) for i in range(len(classes))]
    present = [c for c in per_class if c > 0]
    rng = np.random.default_rng(seed)
    paths = [p for p, _ in samples]
    if len(paths) > header_limit:
        paths = [paths[i] for i in rng.choice(len(paths), header_limit, replace=False)]
    widths, heights, grey_modes, read = [], [], 0, 0
    for path in paths:
        try:
            with Image.open(path) as im:  # lazy: reads the header only
                widths.append(im.width)
                heights.append(im.height)
                grey_modes += im.mode in ("1", "L", "LA", "I", "I;16", "F")
                read += 1
        except (OSError, ValueError):
            continue
    return {
        "images": int(sum(per_class)),
        "classes": len(classes),
        "per_class": {name: int(n) for name, n in zip(classes, per_class, strict=True)},
        "per_class_median": float(np.median(per_class)),
        "per_class_min": int(min(per_class)),
        "per_class_max": int(max(per_class)),
        "imbalance": float(max(present) / min(present)) if present else float("nan"),
        "median_width": float(np.median(widths)) if widths else float("nan"),
        "median_height": float(np.median(heights)) if heights else float("nan"),
        "grey_mode_fraction": grey_modes / read if read else float("nan"),
        "headers_read": read,
    }


def stratified_subsample(samples: Sequence[Sample], *, max_images: int, num_classes: int,
                         seed: int = 0) -> list[Sample]:
    """At most ``max_images`` samples, the same number per class where classes allow."""
    by_class: dict[int, list[str]] = {}
    for path, label in sorted(samples):
        by_class.setdefault(label, []).append(path)
    rng = np.random.default_rng(seed)
    quota = max(2, max_images // max(1, num_classes))
    out: list[Sample] = []
    for label in sorted(by_class):
        paths = by_class[label]
        take = rng.permutation(len(paths))[:quota]
        out += [(paths[i], label) for i in sorted(take)]
    return out


# ------------------------------------------------------------------------- images
@dataclass
class ImageBatch:
    """The decoded subsample: (N, 3, S, S) uint8 at the evaluation size, and labels."""

    pixels: torch.Tensor
    labels: np.ndarray
    paths: list[str]
    grey_fraction: float
    skipped: list[str]


def load_subsample(samples: Sequence[Sample], model: Backbone, image_size: int) -> ImageBatch:
    """Decode with the evaluation pipeline (resize, centre crop), kept as uint8 to save memory."""
    cfg = model.pretrained_cfg
    transform = build_transform(cfg, image_size=image_size, train=False, normalize=False)
    draft = jpeg_draft_size(cfg, image_size)
    pixels, labels, paths, skipped, grey = [], [], [], [], 0
    for path, label in samples:
        try:
            image = load_image(path, draft_size=draft)  # (H, W, 3) uint8 RGB
        except ImageDecodeError as err:
            skipped.append(str(err))
            continue
        view = image[::4, ::4].astype(np.int16)
        # Grey stored as RGB (scans, digits) is as grey as an "L" file: look at the pixels.
        grey += int(np.abs(view[..., 0] - view[..., 1]).max() <= 3 and np.abs(view[..., 1] - view[..., 2]).max() <= 3)
        pixels.append(transform(image=image)["image"])  # (3, S, S) uint8
        labels.append(label)
        paths.append(path)
    if not pixels:
        raise ValueError("None of the sampled images could be decoded; run `finetune data check` on the data.")
    return ImageBatch(torch.stack(pixels), np.asarray(labels), paths, grey / len(pixels), skipped)


def _batches(images: ImageBatch, model: Backbone, batch_size: int,
             order: np.ndarray | None = None) -> Iterator[torch.Tensor]:
    """Normalised float batches; near-equal sizes, so no batch of 1 reaches train-mode BN."""
    n = len(images.labels)
    index = np.arange(n) if order is None else order
    chunks = max(1, math.ceil(n / batch_size))
    for part in np.array_split(index, chunks):
        yield normalize_batch(images.pixels[torch.as_tensor(part)], model.pretrained_cfg)


# ------------------------------------------------------------------------- hooks
def bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers that hold running statistics (what the checkpoint stored)."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        and m.running_mean is not None and m.running_var is not None
    ]


def stage_of_modules(model: Backbone) -> dict[int, int]:
    """``id(module) -> stage index`` for every module inside ``model.stages()``."""
    owner: dict[int, int] = {}
    for i, stage in enumerate(model.stages()):
        for module in stage.modules:
            for sub in module.modules():
                owner.setdefault(id(sub), i)
    return owner


class _Moments:
    """Per-channel mean and variance over (N, H, W), accumulated batch by batch.

    Sums over (H, W) per sample in float32 (cheap: torch reduces contiguous trailing
    dimensions fast), then over the batch in float64, so thousands of batches add up
    without cancellation in E[x²] - E[x]².
    """

    def __init__(self) -> None:
        self.n = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if x.ndim == 2:  # BatchNorm1d on (B, C)
            x = x[:, :, None]
        if x.ndim == 4 and x.shape[2] >= 8 and x.shape[3] >= 8:
            # Every other row and column: neighbouring positions are strongly correlated, so
            # a quarter of them estimates the same moments, at a quarter of the hook's cost.
            x = x[:, :, ::2, ::2]
        spatial = tuple(range(2, x.ndim))
        s = x.sum(dim=spatial).double().sum(dim=0)
        sq = (x * x).sum(dim=spatial).double().sum(dim=0)
        count = x.numel() // x.shape[1]
        if self.total is None:
            self.total, self.total_sq = s, sq
        else:
            self.total, self.total_sq = self.total + s, self.total_sq + sq
        self.n += count

    @property
    def mean(self) -> torch.Tensor | None:
        return None if self.total is None else self.total / max(1, self.n)

    @property
    def var(self) -> torch.Tensor:
        return (self.total_sq / max(1, self.n) - self.mean**2).clamp(min=0.0)


class _Recorder:
    """Forward hooks: BN input moments per layer, pooled output per stage."""

    def __init__(self, model: Backbone, *, stages: bool, layers: set[str] | None = None) -> None:
        self.moments: dict[str, _Moments] = {}
        self.pooled: dict[int, list[torch.Tensor]] = {}
        self._current: dict[int, torch.Tensor] = {}
        self._handles = []
        for name, bn in bn_layers(model):
            if layers is not None and name not in layers:
                continue
            self.moments[name] = _Moments()
            self._handles.append(bn.register_forward_pre_hook(self._bn_hook(name)))
        if stages:
            for i, stage in enumerate(model.stages()):
                for module in stage.modules:
                    self._handles.append(module.register_forward_hook(self._stage_hook(i)))

    def _bn_hook(self, name: str):
        def hook(module, args):
            self.moments[name].add(args[0])
        return hook

    def _stage_hook(self, index: int):
        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor) and out.ndim >= 2:
                # The last module of the stage to run overwrites the earlier ones: its
                # output is the stage's output. (B, C, H, W) -> (B, C); tokens (B, N, C) -> (B, C).
                pooled = out.mean(dim=(2, 3)) if out.ndim == 4 else out.mean(dim=1) if out.ndim == 3 else out
                self._current[index] = pooled.detach().float()
        return hook

    def end_batch(self) -> None:
        for index, pooled in self._current.items():
            self.pooled.setdefault(index, []).append(pooled)
        self._current = {}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class PassResult:
    penultimate: np.ndarray  # (N, num_features)
    stage_features: dict[int, np.ndarray]  # stage index -> (N, C_stage)
    moments: dict[str, tuple[np.ndarray, np.ndarray]]  # BN layer -> (mean, var) of its input
    seconds: float


def forward_pass(model: Backbone, images: ImageBatch, *, batch_size: int, stages: bool,
                 layers: set[str] | None = None, order: np.ndarray | None = None) -> PassResult:
    """One pass over the subsample in the model's current modes, hooks recording the
    inputs of the BN ``layers`` (default all) and, with ``stages``, every stage's output."""
    recorder = _Recorder(model, stages=stages, layers=layers)
    feats = []
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for x in _batches(images, model, batch_size, order):
                feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
                recorder.end_batch()
    finally:
        recorder.close()
    seconds = time.perf_counter() - start
    inverse = np.argsort(order) if order is not None else None

    def restore(rows: torch.Tensor) -> np.ndarray:  # back to the subsample's order
        arr = rows.numpy()
        return arr[inverse] if inverse is not None else arr

    return PassResult(
        penultimate=restore(torch.cat(feats)),
        stage_features={i: restore(torch.cat(v)) for i, v in recorder.pooled.items()},
        moments={k: (m.mean.numpy(), m.var.numpy()) for k, m in recorder.moments.items() if m.mean is not None},
        seconds=seconds,
    )


def early_adabn(model: Backbone, images: ImageBatch, *, early_stages: int, batch_size: int,
                max_images: int = 256, seed: int = 0) -> Backbone:
    """A copy whose BN layers in the first ``early_stages`` stages hold statistics
    re-estimated on the data (AdaBN, Li et al. 2016); later layers keep the checkpoint's.

    The estimate runs the first stages' BN in training mode with a cumulative average
    (``momentum=None``) over a shuffled subset: shuffled so that no batch is one class,
    a few hundred images because mean and variance per channel settle long before that.
    """
    adapted = copy.deepcopy(model).eval()
    owner = stage_of_modules(adapted)
    early = [bn for _, bn in bn_layers(adapted) if owner.get(id(bn), early_stages) < early_stages]
    for bn in early:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    n = len(images.labels)
    order = np.random.default_rng(seed).permutation(n)[:max_images]
    with torch.no_grad():  # not inference_mode: the running-stat buffers are updated in place
        for x in _batches(images, adapted, batch_size, order):
            adapted.forward_features(x)
    return adapted.eval()


# ------------------------------------------------------------------------- shift
def symmetric_kl(mu_p: np.ndarray, var_p: np.ndarray, mu_q: np.ndarray, var_q: np.ndarray) -> np.ndarray:
    """Per-channel ½(KL(p‖q) + KL(q‖p)) of two 1-D Gaussians; 0 when they are equal."""
    var_p = np.maximum(var_p, _VAR_FLOOR)
    var_q = np.maximum(var_q, _VAR_FLOOR)
    d2 = (mu_p - mu_q) ** 2
    return 0.25 * ((var_p + d2) / var_q + (var_q + d2) / var_p) - 0.5


def layer_shift(moments: tuple[np.ndarray, np.ndarray], bn: nn.modules.batchnorm._BatchNorm) -> float:
    """Mean over channels of the capped symmetric KL between the data's statistics of the
    layer's input and the checkpoint's running statistics; dead channels (running
    variance below the floor in the checkpoint) are left out."""
    mean, var = moments
    run_mean = bn.running_mean.detach().double().cpu().numpy()
    run_var = bn.running_var.detach().double().cpu().numpy()
    alive = run_var > _VAR_FLOOR
    if not alive.any():
        return 0.0
    kl = symmetric_kl(mean[alive], var[alive], run_mean[alive], run_var[alive])
    return float(np.mean(np.minimum(kl, _KL_CAP)))


def stage_shift(result: PassResult, model: Backbone, layers: list[tuple[str, nn.Module]],
                owner: dict[int, int], num_stages: int) -> list[float | None]:
    """Mean layer shift per stage; None for a stage without BatchNorm."""
    per_stage: dict[int, list[float]] = {}
    for name, bn in layers:
        if name in result.moments and id(bn) in owner:
            per_stage.setdefault(owner[id(bn)], []).append(layer_shift(result.moments[name], bn))
    return [float(np.mean(per_stage[i])) if i in per_stage else None for i in range(num_stages)]


# ------------------------------------------------------------------------- probes
def _standardize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    keep = std > 1e-8 * max(1.0, float(std.max(initial=0.0)))
    return x[:, keep] / std[keep] if keep.any() else x[:, :1] * 0.0


def ridge_loo_accuracy(features: np.ndarray, labels: np.ndarray, *, num_classes: int,
                       alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[float, float]:
    """Exact leave-one-out balanced accuracy of a ridge classifier (one-hot targets,
    unpenalised intercept) at the best of ``alphas``; returns (accuracy, alpha).

    With the centred Gram matrix K = U diag(s) Uᵀ, the hat matrix of ridge at strength a
    is H = 11ᵀ/n + U diag(s / (s + a)) Uᵀ, and the leave-one-out prediction of sample i
    is y_i - (y_i - ŷ_i) / (1 - H_ii): no refitting.
    """
    n = len(labels)
    x = _standardize(features)
    y = np.eye(num_classes)[labels]
    y_mean = y.mean(axis=0)
    yc = y - y_mean
    gram = x @ x.T / x.shape[1]  # (n, n)
    s, u = np.linalg.eigh(gram)
    s = np.clip(s, 0.0, None)
    scale = float(s.mean()) or 1.0
    uty = u.T @ yc  # (n, C)
    present = np.unique(labels)
    best = (-1.0, float(alphas[0]))
    for alpha in alphas:
        shrink = s / (s + alpha * scale)
        fitted = y_mean + u @ (shrink[:, None] * uty)  # (n, C)
        h = 1.0 / n + (u**2) @ shrink  # (n,)
        loo = y - (y - fitted) / np.clip(1.0 - h, 1e-9, None)[:, None]
        pred = loo.argmax(axis=1)
        acc = float(np.mean([np.mean(pred[labels == c] == c) for c in present]))
        if acc >= best[0] - 1e-12:  # ties go to the stronger regularisation
            best = (acc, float(alpha))
    return best


def learning_curve(features: np.ndarray, labels: np.ndarray, *, num_classes: int,
                   fractions: Sequence[float] = (0.25, 0.5, 1.0), repeats: int = 3,
                   seed: int = 0) -> dict[str, float]:
    """Probe accuracy on class-stratified fractions of the subsample (at least two images
    per class), averaged over ``repeats`` draws; keys are the fractions as strings."""
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    out = {}
    for fraction in fractions:
        draws = 1 if fraction >= 1.0 else repeats
        accs = []
        for _ in range(draws):
            rows = np.concatenate([
                rng.permutation(idx)[: max(2, int(round(fraction * len(idx))))] for idx in by_class.values()
            ])
            accs.append(ridge_loo_accuracy(features[rows], labels[rows], num_classes=num_classes)[0])
        out[f"{fraction:g}"] = float(np.mean(accs))
    return out


# ------------------------------------------------------------------------- all signals
def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _early_stage_count(num_stages: int) -> int:
    """The "early" stages whose BN statistics AdaBN re-estimates: the first third, where
    pixel-level statistics (contrast, blur, noise, colour) live in a CNN."""
    return max(1, math.ceil(num_stages / 3))


def _passes(model: Backbone, images: ImageBatch, *, has_bn: bool, early: int, batch_size: int,
            seed: int) -> tuple[PassResult, PassResult | None]:
    """The checkpoint's pass (every stage and BN layer), then, for a model with BatchNorm,
    the pass after early AdaBN; that one records only the later layers, the only ones
    whose remaining shift is reported."""
    first = forward_pass(model, images, batch_size=batch_size, stages=True)
    if not has_bn:
        return first, None
    adapted = early_adabn(model, images, early_stages=early, batch_size=batch_size, seed=seed)
    owner = stage_of_modules(adapted)
    later = {name for name, bn in bn_layers(adapted) if owner.get(id(bn), -1) >= early}
    return first, forward_pass(adapted, images, batch_size=batch_size, stages=False, layers=later)


def _stage_shifts(model: Backbone, layers: list[tuple[str, nn.Module]], first: PassResult,
                  adapted: PassResult | None, *, early: int,
                  num_stages: int) -> tuple[list[float | None], list[float | None]]:
    """Shift per stage from the checkpoint's statistics, before and after early AdaBN;
    None where a stage has no BatchNorm, and after AdaBN for the early stages it re-estimated."""
    owner = stage_of_modules(model)
    raw = stage_shift(first, model, layers, owner, num_stages) if layers else [None] * num_stages
    after = (stage_shift(adapted, model, layers, owner, num_stages) if adapted
             else [None] * num_stages)
    return raw, [a if i >= early else None for i, a in enumerate(after)]


def _stage_probes(first: PassResult, labels: np.ndarray, *, num_classes: int,
                  num_stages: int) -> tuple[list[float | None], float]:
    """Probe accuracy per stage, and the ridge strength chosen for the last one."""
    # The last stage is probed through the head's pooling (pre-logits): what `linear` trains on.
    penultimate, alpha = ridge_loo_accuracy(first.penultimate, labels, num_classes=num_classes)
    probes: list[float | None] = []
    for i in range(num_stages - 1):
        feats = first.stage_features.get(i)
        probes.append(ridge_loo_accuracy(feats, labels, num_classes=num_classes)[0] if feats is not None else None)
    probes.append(penultimate)
    return probes, alpha


def _subsample_signals(images: ImageBatch, *, num_classes: int, image_size: int) -> dict:
    """What the probes saw: how many images, per class, which were skipped, at what size."""
    labels = images.labels
    present = sorted(set(labels.tolist()))
    return {
        "subsample": int(len(labels)),
        "subsample_per_class_median": float(np.median(np.bincount(labels, minlength=num_classes)[present])),
        "skipped": images.skipped,
        "grey_fraction": images.grey_fraction,
        "image_size": int(image_size),
    }


def _probe_signals(probes: list[float | None], alpha: float, first: PassResult, labels: np.ndarray,
                   *, names: list[str], num_classes: int, seed: int) -> dict:
    """The last stage's probe against chance, the best stage, and how accuracy grows with data."""
    penultimate = probes[-1]
    chance = 1.0 / len(set(labels.tolist()))
    curve = learning_curve(first.penultimate, labels, num_classes=num_classes, seed=seed)
    best = max(range(len(probes)), key=lambda i: (probes[i] if probes[i] is not None else -1.0, i))
    return {
        "probe_accuracy": penultimate,
        "probe_alpha": alpha,
        "chance": chance,
        "kappa": (penultimate - chance) / (1.0 - chance),
        "best_stage": best,
        "best_stage_name": names[best],
        "best_stage_accuracy": probes[best],
        "learning_curve": curve,
        "learning_curve_slope": curve["1"] - curve["0.5"],
    }


def _shift_signals(raw: list[float | None], after: list[float | None], early: int) -> dict:
    """Shift averaged over the early, the deep (last third) and the later stages, and the
    part of the later stages' shift that early AdaBN removes (pixel-level shift)."""
    deep = range(len(raw) - early, len(raw))
    later = range(early, len(raw))
    later_raw = _mean([raw[i] for i in later])
    later_after = _mean([after[i] for i in later])
    return {
        "shift_early": _mean([raw[i] for i in range(early)]),
        "shift_deep": _mean([raw[i] for i in deep]),
        "shift_later": later_raw,
        "shift_later_after_early_adabn": later_after,
        "shift_pixel": (max(0.0, later_raw - later_after) if later_raw is not None and later_after is not None
                        else None),
    }


def _adabn_probe_signals(adapted: PassResult | None, labels: np.ndarray, *, num_classes: int,
                         penultimate: float) -> dict:
    """The penultimate probe after early AdaBN and its gain; None without BatchNorm."""
    if adapted is None:
        return {"probe_accuracy_after_early_adabn": None, "adabn_gain": None}
    accuracy = ridge_loo_accuracy(adapted.penultimate, labels, num_classes=num_classes)[0]
    return {"probe_accuracy_after_early_adabn": accuracy, "adabn_gain": accuracy - penultimate}


def measure(model: Backbone, probe_samples: Sequence[Sample], *, num_classes: int, image_size: int,
            max_images: int = 500, batch_size: int = 32, seed: int = 0) -> dict:
    """Every depth signal of ``model`` (pretrained, any head) on a subsample of
    ``probe_samples``, as a JSON-able dict (see ``finetune.recommend`` for their use)."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    sub = stratified_subsample(probe_samples, max_images=max_images, num_classes=num_classes, seed=seed)
    images = load_subsample(sub, model, image_size)
    load_ms = 1000.0 * (time.perf_counter() - start) / len(images.labels)
    labels = images.labels
    names = [s.name for s in model.stages()]
    layers = bn_layers(model)
    early = _early_stage_count(len(names))
    try:
        first, adapted = _passes(model, images, has_bn=bool(layers), early=early,
                                 batch_size=batch_size, seed=seed)
    finally:
        model.train(was_training)

    raw, after = _stage_shifts(model, layers, first, adapted, early=early, num_stages=len(names))
    probes, alpha = _stage_probes(first, labels, num_classes=num_classes, num_stages=len(names))
    signals = {
        **_subsample_signals(images, num_classes=num_classes, image_size=image_size),
        "has_batchnorm": bool(layers),
        "bn_layers": len(layers),
        "early_stages": early,
        "stages": [
            {"name": names[i], "probe_accuracy": probes[i], "shift": raw[i], "shift_after_early_adabn": after[i]}
            for i in range(len(names))
        ],
        **_probe_signals(probes, alpha, first, labels, names=names, num_classes=num_classes, seed=seed),
        **_shift_signals(raw, after, early),
        "forward_ms_per_image": 1000.0 * first.seconds / len(labels),
        "load_ms_per_image": load_ms,
        **_adabn_probe_signals(adapted, labels, num_classes=num_classes, penultimate=probes[-1]),
    }
    signals["seconds"] = time.perf_counter() - start
    return signals

"""The test images a run got most confidently wrong (fastai's "top losses"), with Grad-CAM.

    losses = top_losses(probs, labels)        # misclassified indices, highest loss first
    gallery = top_losses_gallery(TestPredictions(model, test_samples, probs, 96), classes)

The loss of an image is its cross-entropy, ``-log p(true class)``; among the misclassified
images the highest losses are the mistakes the model was surest of. Each is drawn as the
model saw it with the Grad-CAM map of the class it predicted (``explain.gradcam_maps``):
where it looked when it went wrong. Only Grad-CAM, on at most ``MAX_TOP_LOSSES`` images
(one backward pass each), so a run's report pays about a second for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..models import Backbone
from .explain import Explainer, draw_map, feature_stage
from .figures import png_bytes

MAX_TOP_LOSSES = 8
_COLUMNS = 4


@dataclass
class TestPredictions:
    """What a run's evaluation hands the report: the model at the evaluated weights (a whole
    backbone, also after a head trained on cached features), the test split's
    ``(path, label)`` samples and their softmax probabilities in the same order."""

    model: Backbone
    samples: Sequence[tuple[str, int]]
    probs: np.ndarray  # (N, C)
    image_size: int


@dataclass(frozen=True)
class TopLoss:
    path: str
    true: int
    predicted: int
    probability: float  # of the predicted class
    loss: float  # -log p(true)


def top_losses(probs: np.ndarray, labels: np.ndarray, k: int = MAX_TOP_LOSSES) -> list[int]:
    """Indices of the misclassified rows of ``probs`` (N, C), highest loss first, at most ``k``."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probability rows for {len(labels)} labels.")
    p_true = probs[np.arange(len(labels)), labels]
    loss = -np.log(np.clip(p_true, 1e-12, 1.0))
    wrong = np.flatnonzero(np.argmax(probs, axis=1) != labels)
    return [int(i) for i in wrong[np.argsort(-loss[wrong], kind="stable")][:k]]


def _entries(preds: TestPredictions, k: int) -> list[TopLoss]:
    labels = np.array([label for _, label in preds.samples])
    entries = []
    for i in top_losses(preds.probs, labels, k):
        row = preds.probs[i]
        predicted = int(np.argmax(row))
        entries.append(TopLoss(str(preds.samples[i][0]), int(labels[i]), predicted,
                               float(row[predicted]), float(-math.log(max(row[labels[i]], 1e-12)))))
    return entries


@dataclass
class Gallery:
    entries: list[TopLoss]  # highest loss first; empty when every test image is right
    png: bytes | None  # None when nothing is wrong, or when ``note`` says why not
    note: str | None = None


def top_losses_gallery(preds: TestPredictions, classes: Sequence[str], *,
                       k: int = MAX_TOP_LOSSES) -> Gallery:
    """The top-loss entries and their gallery as PNG bytes.

    The model runs in eval mode for the maps and goes back to its mode afterwards; its
    weights do not change. A backbone without a spatial feature map (a vision
    transformer) gets the entries and a note instead of the picture.
    """
    if len(preds.probs) != len(preds.samples):
        raise ValueError(f"{len(preds.probs)} probability rows for {len(preds.samples)} test images.")
    entries = _entries(preds, k)
    if not entries:
        return Gallery([], None)
    explainer = Explainer(preds.model, preds.image_size)
    try:
        images = [explainer.load(e.path) for e in entries]
        try:
            feature_stage(preds.model, images[0][None].to(explainer.device))
        except ValueError:
            return Gallery(entries, None, f"{preds.model.variant} has no spatial feature map "
                                          f"for Grad-CAM to read, so the gallery is not drawn.")
        shown = [explainer.explain(x, target=e.predicted, methods=("gradcam",), check=False)
                 for x, e in zip(images, entries, strict=True)]
    finally:
        explainer.restore()
    columns = min(_COLUMNS, len(entries))
    rows = math.ceil(len(entries) / columns)
    fig = Figure(figsize=(2.6 * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, entry, explanation in zip(axes, entries, shown, strict=False):
        draw_map(ax, explanation.image, explanation.maps["gradcam"], "gradcam")
        ax.set_title(f"true: {classes[entry.true]}\npredicted: {classes[entry.predicted]} "
                     f"({entry.probability:.2f})\nloss {entry.loss:.2f}", fontsize=8)
    for ax in axes[len(entries):]:
        ax.set_axis_off()
    fig.suptitle("Top losses: most confident mistakes on test (Grad-CAM of the predicted class)",
                 fontsize=10)
    return Gallery(entries, png_bytes(fig))


__all__ = ["MAX_TOP_LOSSES", "Gallery", "TestPredictions", "TopLoss", "top_losses", "top_losses_gallery"]

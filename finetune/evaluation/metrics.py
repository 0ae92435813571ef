"""Classification metrics from collected predictions, as plain JSON-ready Python values.

The trainer collects ``y_true`` (N,) and softmax ``probs`` (N, C) over a split and
calls :func:`classification_metrics`; the result is the ``val`` / ``test`` entry of
``metrics.json`` (docs/design.md) and the input of :mod:`finetune.evaluation.report`.

    metrics = classification_metrics(y_true, probs, classes)
    metrics["accuracy"], metrics["per_class"]["cat"]["f1"], metrics["confusion_matrix"]

Every class in ``classes`` is reported, even one that never occurs in the split: a
per-class table that silently drops rows hides exactly the classes a user worries about.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

__all__ = [
    "classification_metrics",
    "expected_calibration_error",
    "most_confused_pairs",
]

# Probabilities are clipped here before the log so one confident mistake gives a large
# but finite loss (-log(1e-12) ~ 27.6) instead of inf, which JSON cannot hold.
_NLL_EPS = 1e-12
# Rows of a softmax computed in bf16 / fp16 and cast back sum to 1 only to ~3 digits;
# logits essentially never land this close to 1.
_ROW_SUM_ATOL = 1e-2
_TOP_K = 5


def _check_inputs(y_true, probs, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y_true int64 (N,), probs float64 (N, C))`` or raise a ValueError that says why."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices of shape (N,), got shape {y.shape}.")
    if p.ndim != 2:
        raise ValueError(
            f"probs must be 2-D of shape (N, num_classes), got shape {p.shape}. "
            f"Stack the per-batch softmax outputs with np.concatenate."
        )
    if len(y) == 0:
        raise ValueError("No samples: y_true is empty. Check that the split holds images.")
    if p.shape[0] != len(y):
        raise ValueError(
            f"probs has {p.shape[0]} rows but y_true has {len(y)} labels; they must match."
        )
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(
            f"probs has {p.shape[1]} columns but there are {num_classes} classes; "
            f"pass one probability per class."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ValueError(
                f"y_true must hold integer class indices, got dtype {y.dtype}. "
                f"Map label names to indices in `classes` order first."
            )
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= p.shape[1])
    if bad.any():
        raise ValueError(
            f"y_true holds class index {int(y[bad][0])}, outside 0..{p.shape[1] - 1} "
            f"for {p.shape[1]} classes."
        )
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or inf; the model output diverged.")
    row_sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if (p < 0).any() or abs(row_sums[worst] - 1.0) > _ROW_SUM_ATOL:
        raise ValueError(
            f"probs rows must be probabilities that sum to 1 (row {worst} sums to "
            f"{row_sums[worst]:.4g}, min value {p.min():.4g}). These look like logits: "
            f"pass softmax probabilities, e.g. torch.softmax(logits, dim=1)."
        )
    return y, p


def expected_calibration_error(y_true, probs, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the sample-weighted gap between confidence and accuracy.

    Confidence is the top probability; samples are grouped into ``n_bins`` equal-width
    bins ``(lo, hi]`` over [0, 1], and ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|.
    0 is perfectly calibrated; a model that says 99% and is right half the time scores 0.49.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    y, p = _check_inputs(y_true, probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True gives bins (lo, hi]; a confidence of exactly 1.0 lands in the last bin.
    bin_idx = np.digitize(conf, edges[1:-1], right=True)
    ece = 0.0
    for b in np.unique(bin_idx):
        in_bin = bin_idx == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def most_confused_pairs(matrix, classes: list[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells as ``(true label, predicted label, count)``.

    Directional on purpose: "cat predicted as dog" and "dog predicted as cat" are
    different failures with different fixes. Ties keep class order; zero cells are left out.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(
            f"confusion matrix of shape {cm.shape} does not fit {len(classes)} classes; "
            f"expected ({len(classes)}, {len(classes)})."
        )
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = []
    for i, j in zip(*np.unravel_index(flat, off.shape), strict=True):
        if off[i, j] > 0:
            pairs.append((classes[i], classes[j], int(off[i, j])))
    return pairs


def classification_metrics(y_true, probs, classes: list[str], *, loss: float | None = None) -> dict:
    """Accuracy, top-5, macro-F1, balanced accuracy, NLL, ECE, per-class table, confusion matrix.

    Args:
        y_true: (N,) integer class indices into ``classes``.
        probs: (N, C) softmax probabilities, C == len(classes). Logits raise a ValueError.
        classes: label names in index order.
        loss: the split's loss as the trainer measured it (e.g. with label smoothing);
            when None, the mean negative log-likelihood of ``probs`` for the true class.

    Returns plain Python floats / ints / lists, ready for ``json.dump``:
    ``top5_accuracy`` is None for 5 or fewer classes (it would always be 1.0);
    ``macro_f1`` averages over the classes present in ``y_true`` or predicted, so a class
    absent from the split and never predicted does not count as a failure;
    ``balanced_accuracy`` is the mean recall over the classes present in ``y_true``;
    ``confusion_matrix`` rows are true classes, columns predictions, all C of them.
    """
    classes = [str(c) for c in classes]
    if len(classes) == 0:
        raise ValueError("classes is empty; pass the label names in index order.")
    if len(set(classes)) != len(classes):
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        raise ValueError(f"classes must be unique, but {dupes} repeat.")
    y, p = _check_inputs(y_true, probs, num_classes=len(classes))
    num_classes = len(classes)
    labels = list(range(num_classes))
    y_pred = p.argmax(axis=1)

    cm = confusion_matrix(y, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    # sklearn's balanced_accuracy_score warns when a prediction is a class absent from
    # y_true; the definition (mean recall over true classes) is simple enough to do here.
    balanced = float(recall[present].mean())
    top5 = None
    if num_classes > _TOP_K:
        top5 = float(top_k_accuracy_score(y, p, k=_TOP_K, labels=labels))
    if loss is None:
        true_prob = p[np.arange(len(y)), y]
        loss = float(-np.log(np.clip(true_prob, _NLL_EPS, None)).mean())

    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "top5_accuracy": top5,
        "macro_f1": float(f1_score(y, y_pred, average="macro", zero_division=0)),
        "balanced_accuracy": balanced,
        "loss": float(loss),
        "ece": expected_calibration_error(y, p),
        "num_samples": int(len(y)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }

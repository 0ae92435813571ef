"""``--head-fit lbfgs``: the linear head as a regularised logistic regression.

The way CLIP (Radford et al., 2021) and DINOv2 (Oquab et al., 2023) evaluate frozen
features: multinomial logistic regression fitted to convergence with L-BFGS, once per
value of a log-spaced grid of the inverse regularisation strength ``C``, and the ``C``
that is best on held-out data is kept. No learning rate, no epochs, no schedule.

The objective, for the C of the sweep and N training samples, is scikit-learn's
``LogisticRegression`` divided by ``C * N``::

    mean_i w[y_i] * CE(W x_i + b, y_i) / mean_i w[y_i]  +  ||W||^2 / (2 C N)

on standardised features (per-dimension mean 0, std 1, from the samples it is fitted on),
which keeps L-BFGS well conditioned whatever the backbone's feature scale; the bias is not
penalised. The fitted ``(W, b)`` are then folded back to act on raw features, so the
result is an ordinary ``nn.Linear`` head and checkpoints, evaluation and export need not
know how it was trained.

How C is chosen (``fit_logistic_head(select=...)``):

* ``"val"``: fit on train for every C, keep the best on the validation split. The choice
  for ``--no-head-refit`` and for a probe that a later phase fine-tunes from.
* ``"cv"``: stratified k-fold cross-validation over train + val, as scikit-learn's
  ``LogisticRegressionCV`` does (k = ``CV_FOLDS``, fewer when a class has fewer images, at
  least 2; the same ``StratifiedKFold`` folds), each C scored by its mean held-out
  ``CV_SCORING`` over the folds, ties to the lowest held-out loss. The choice before a refit: a
  validation split of a few dozen images decides C by one or two images, the folds see
  every labelled image. The head is then fitted on train alone at that C, so that the
  run's val metrics come from a head that has not seen val (val did help choose C, as one
  part of the folds). Train and val are standardised together here (as a
  ``StandardScaler`` before ``LogisticRegressionCV`` does), and the cross-validation holds
  them in memory twice over (all of them, plus one fold's training part): when that does
  not fit in ``in_memory_bytes``, C is chosen on val instead, and ``HeadFit.selection``
  says so.

``refit_logistic_head`` then fits the chosen C once more on train + val: the final head
learns from every labelled image (as ``LogisticRegressionCV(refit=True)`` does after its
cross-validation). The objective is per sample, so the same C means the same trade-off on
more samples.

Features are read in chunks from the memory-mapped cache (``FeatureDataset.chunks``);
splits that fit in ``in_memory_bytes`` are loaded once, larger ones are streamed on every
L-BFGS evaluation, so the fit on train, with C chosen on val, and the refit never need all
features in memory at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("finetune")

# 10^-3 .. 10^3 in half decades: 13 values. CLIP sweeps 96 values over 10^-6..10^6;
# on standardised features the useful range is far narrower, and the warm-started
# sweep costs a few seconds on thousands of samples.
DEFAULT_CS: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-6, 7))
# Used when there is no validation split to choose C on.
FALLBACK_C = 1.0
# The folds that choose C before a refit: LogisticRegressionCV's default of 5, fewer when
# the smallest class has fewer images (each held-out part should hold every class), at
# least 2.
CV_FOLDS = 5
# A fixed seed for the fold assignment: the same images give the same C on every rerun.
CV_SEED = 0
# How the held-out folds score a C: mean accuracy, as LogisticRegressionCV's default, and
# among Cs tied on it, the lowest mean log-loss. On the 11 tasks of
# benchmarks/linear_vs_logreg.py accuracy is below LogisticRegression() on 1 (mean +0.10
# points), log-loss on 2 (-0.24). Where every C classifies every held-out image (photos),
# LogisticRegressionCV's tie to the smaller C takes C=0.001, whose probabilities are soft
# (test loss 0.2); the lowest loss among the tied takes C=100 (test loss under 1e-4, the
# same accuracies on all 11: benchmarks/results/linear_vs_logreg-default.json).
CV_SCORING = "accuracy"
CV_SCORINGS = ("log_loss", "accuracy")
SELECTIONS = ("val", "cv")
# Mean fold scores closer than this are a tie (the lower loss wins): the same accuracies
# summed in another order differ in the last bits.
TIE_TOL = 1e-9
# Stop when no gradient component exceeds this: scikit-learn's default tol for lbfgs.
GRAD_TOL = 1e-4
# The refit, the head the run keeps, stops tighter: the weights' distance from the optimum
# grows with C * N times the gradient, and at the C > 1 that cross-validation often picks,
# GRAD_TOL leaves test probabilities 0.02-0.15 off the optimum's (as scikit-learn's default
# does). One warm-started fit: tens of iterations more.
REFIT_GRAD_TOL = 1e-6
# Below this many multiply-adds per pass (N * D * classes), the fit runs on one thread:
# each L-BFGS evaluation is then well under a millisecond of arithmetic, and waking
# OpenMP workers costs more than it saves (on a loaded 2-core machine, 20x more).
SINGLE_THREAD_MACS = 50_000_000

Chunks = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class HeadFit:
    weight: torch.Tensor  # (num_classes, D), acts on raw features
    bias: torch.Tensor  # (num_classes,)
    C: float
    time_s: float
    sweep: list[dict] = field(default_factory=list)  # one row per C tried
    # How C was chosen: {"method": "val" | "cv" | "fixed", ...}; for "cv" the folds, the
    # scoring and the chosen C's cross-validated accuracy and loss.
    selection: dict = field(default_factory=dict)
    # Set by refit_logistic_head: the fit on train + val at the chosen C (images, fit
    # statistics); the sweep's val scores stay those of the fit on train alone.
    refit: dict | None = None

    def apply_to(self, classifier: nn.Module) -> None:
        """Copy the fitted weights into the model's ``nn.Linear`` classifier."""
        check_linear_head(classifier)
        if tuple(classifier.weight.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"The fitted head is {tuple(self.weight.shape)} but the classifier is "
                f"{tuple(classifier.weight.shape)}: fit it with the model's num_classes."
            )
        with torch.no_grad():
            classifier.weight.copy_(self.weight.to(classifier.weight))
            if classifier.bias is not None:
                classifier.bias.copy_(self.bias.to(classifier.bias))

    def best_row(self) -> dict:
        return next(row for row in self.sweep if row["C"] == self.C)


def check_linear_head(classifier: nn.Module) -> None:
    if not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"--head-fit lbfgs fits a linear classifier, but this backbone's classifier is "
            f"{type(classifier).__name__}. Use --head-fit sgd for it."
        )


def _as_chunks(data, chunk_size: int, in_memory_bytes: int) -> tuple[Chunks, int, int]:
    """``data`` (a FeatureDataset or an ``(X, y)`` pair) as a re-iterable chunk source."""
    if isinstance(data, tuple):
        x, y = data
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        return (lambda: [(x, y)]), x.shape[0], x.shape[1]
    n, d = len(data), data.num_features
    if n * d * 4 <= in_memory_bytes:
        parts = list(data.chunks(chunk_size))
        x = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, d)
        y = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
        return (lambda: [(x, y)]), n, d
    return (lambda: data.chunks(chunk_size)), n, d


def _moments(chunks: Chunks, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over the split, accumulated in float64."""
    total, sq, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
    for x, _ in chunks():
        x = x.double()
        total += x.sum(0)
        sq += (x * x).sum(0)
        n += x.shape[0]
    mean = total / max(n, 1)
    var = (sq / max(n, 1) - mean * mean).clamp(min=0.0)
    # A dimension that never varies (a dead ReLU) gets std 1: it carries no signal anyway.
    std = torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var))
    return mean.float(), std.float()


def _standardised(chunks: Chunks, mean, std, *, in_memory: bool) -> Chunks:
    """The chunks with (x - mean) / std applied: once, when the split is in memory (each
    L-BFGS evaluation then costs two matrix products), else chunk by chunk on each pass."""
    if in_memory:
        parts = [((x - mean) / std, y) for x, y in chunks()]
        return lambda: parts

    def gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in chunks():
            yield (x - mean) / std, y
    return gen


def _evaluate(chunks: Chunks, weight, bias) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the standardised-space head."""
    correct, loss, n = 0, 0.0, 0
    with torch.no_grad():
        for x, y in chunks():
            logits = x @ weight.T + bias
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += y.numel()
    return (correct / n, loss / n) if n else (float("nan"), float("nan"))


def _minimise(w, b, train_std: Chunks, *, l2: float, class_weights, weight_sum: float,
              label_smoothing: float, max_iter: int, grad_tol: float = GRAD_TOL) -> tuple[int, int]:
    """L-BFGS on the full (chunked) training objective, in place on ``w`` and ``b``."""
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=grad_tol, tolerance_change=1e-9,
                                  line_search_fn="strong_wolfe")
    evals = 0

    def closure() -> torch.Tensor:
        nonlocal evals
        evals += 1
        optimizer.zero_grad()
        total = 0.0
        for x, y in train_std():
            loss = F.cross_entropy(x @ w.T + b, y, weight=class_weights, reduction="none",
                                   label_smoothing=label_smoothing)
            # Per-sample losses come weighted by w[y]; normalise by the total weight.
            part = loss.sum() / weight_sum
            part.backward()  # chunk by chunk: no graph over the whole split
            total += part.item()
        penalty = l2 * (w * w).sum()
        penalty.backward()
        return torch.tensor(total + penalty.item())

    optimizer.step(closure)
    return int(optimizer.state[w].get("n_iter", 0)), evals


@contextlib.contextmanager
def _threads(macs: int):
    """One thread for a fit of ``macs`` multiply-adds per pass up to SINGLE_THREAD_MACS,
    torch's own count above it; the count before, afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1 if macs <= SINGLE_THREAD_MACS else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_logistic_head(
    train,
    val=None,
    *,
    num_classes: int,
    Cs: Sequence[float] = DEFAULT_CS,
    select: str = "val",
    cv_scoring: str = CV_SCORING,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    max_iter: int = 300,
    chunk_size: int = 16384,
    in_memory_bytes: int = 1 << 30,
) -> HeadFit:
    """Choose C from ``Cs`` and fit the head on ``train`` at it.

    ``train`` and ``val`` are ``FeatureDataset``s or ``(X (N, D), y (N,))`` pairs. Every
    sweep runs from the strongest regularisation to the weakest, each fit warm-started
    from the previous one. ``select="val"``: best = highest val accuracy, ties to the
    lower val loss. ``select="cv"``: best = best mean ``cv_scoring`` over the stratified
    folds of train + val (``cv_folds``), ties to the lower mean held-out loss; the head is then fitted on
    train at that C and scored on val. Without ``val``, ``FALLBACK_C`` is used alone.
    """
    if select not in SELECTIONS:
        raise ValueError(f"Unknown C selection '{select}'. Valid: {', '.join(SELECTIONS)}.")
    if cv_scoring not in CV_SCORINGS:
        raise ValueError(f"Unknown cross-validation scoring '{cv_scoring}'. "
                         f"Valid: {', '.join(CV_SCORINGS)}.")
    start = time.perf_counter()
    if _length(train) == 0:
        raise ValueError("No training features to fit the head on.")
    n_val = _length(val) if val is not None else 0
    if n_val == 0:
        train_chunks, n, d = _as_chunks(train, chunk_size, in_memory_bytes)
        log.warning("No validation split to choose the regularisation on: --head-fit lbfgs "
                    "uses C=%g.", FALLBACK_C)
        with _threads(n * d * num_classes):
            fit = _fit(train_chunks, None, n=n, d=d, num_classes=num_classes, Cs=[FALLBACK_C],
                       class_weights=class_weights, label_smoothing=label_smoothing,
                       max_iter=max_iter, in_memory_bytes=in_memory_bytes)
        fit.selection = {"method": "fixed", "reason": "no validation split"}
    elif select == "cv":
        fit = _fit_cv(train, val, num_classes=num_classes, Cs=sorted(float(c) for c in Cs),
                      scoring=cv_scoring, class_weights=class_weights,
                      label_smoothing=label_smoothing, max_iter=max_iter, chunk_size=chunk_size,
                      in_memory_bytes=in_memory_bytes)
    else:
        fit = _fit_on_val(_as_chunks(train, chunk_size, in_memory_bytes),
                          _as_chunks(val, chunk_size, in_memory_bytes),
                          num_classes=num_classes, Cs=sorted(float(c) for c in Cs),
                          class_weights=class_weights, label_smoothing=label_smoothing,
                          max_iter=max_iter, in_memory_bytes=in_memory_bytes)
    fit.time_s = time.perf_counter() - start
    chosen = fit.best_row()
    sel = fit.selection
    how = {"fixed": "without a validation split", "val": f"on val ({n_val} images)"}.get(sel["method"])
    if sel["method"] == "cv":
        how = (f"by {sel['folds']}-fold cross-validation over train + val ({sel['images']} "
               f"images; cross-validated accuracy {sel['cv_accuracy']:.4f}, loss {sel['cv_loss']:.4f})")
    log.info("Head fit L-BFGS: C=%g chosen %s from %d values; train accuracy %.4f%s, %.2f s.",
             fit.C, how, len(fit.sweep), chosen["train_accuracy"],
             f", val accuracy {chosen['val_accuracy']:.4f}" if "val_accuracy" in chosen else "",
             fit.time_s)
    return fit


def _fit_on_val(train_source, val_source, *, num_classes: int, Cs: Sequence[float],
                **fit_args) -> HeadFit:
    """Every C fitted on train, the best on val kept."""
    (train_chunks, n, d), (val_chunks, n_val, _) = train_source, val_source
    with _threads(n * d * num_classes):
        fit = _fit(train_chunks, val_chunks, n=n, d=d, num_classes=num_classes, Cs=Cs, **fit_args)
    fit.selection = {"method": "val", "images": n_val}
    return fit


def cv_fold_count(y) -> int | None:
    """The folds for labels ``y``: ``CV_FOLDS``, or the smallest class's image count when
    that is smaller, at least 2; None when no two images share a class (no stratified
    split exists)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64))
    if len(counts) == 0 or counts.max() < 2:
        return None
    return max(2, min(CV_FOLDS, int(counts[counts > 0].min())))


def cv_folds(y, *, seed: int = CV_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit, held-out) index pairs of scikit-learn's ``StratifiedKFold`` (shuffled,
    ``seed``) with ``cv_fold_count(y)`` folds: the folds ``LogisticRegressionCV`` sees when
    given that splitter."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=np.int64)
    k = cv_fold_count(y)
    if k is None:
        raise ValueError("Cross-validation needs a class with at least two images.")
    with warnings.catch_warnings():
        # A class with a single image sits in one held-out part: known, and allowed.
        warnings.filterwarnings("ignore", message="The least populated class")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros((len(y), 1)), y))


def _fit_cv(train, val, *, num_classes: int, Cs: Sequence[float], scoring: str, class_weights,
            label_smoothing: float, max_iter: int, chunk_size: int, in_memory_bytes: int) -> HeadFit:
    """C by stratified k-fold cross-validation over train + val, then the head on train at
    that C; C on val instead when train + val do not fit in memory twice over, or when no
    class has two images."""
    # Streamed (a budget of 0), so that the only copy in memory is the gathered one.
    (train_chunks, n_train, d), (val_chunks, n_val, _) = (_as_chunks(train, chunk_size, 0),
                                                          _as_chunks(val, chunk_size, 0))
    n = n_train + n_val
    fit_args = dict(class_weights=class_weights, label_smoothing=label_smoothing,
                    max_iter=max_iter, in_memory_bytes=in_memory_bytes)
    fallback = None
    if 2 * n * d * 4 > in_memory_bytes:
        fallback = (f"train + val ({2 * n * d * 4 / 2**20:.0f} MiB twice over) exceed "
                    f"in_memory_bytes ({in_memory_bytes / 2**20:.0f} MiB)")
    else:
        x, y = _gather([train_chunks, val_chunks], n, d)
        if cv_fold_count(y.numpy()) is None:
            fallback = "no class has two images to split into folds"
    if fallback is not None:
        log.info("Head fit L-BFGS: C is chosen on val, not by cross-validation: %s.", fallback)
        fit = _fit_on_val(_as_chunks(train, chunk_size, in_memory_bytes),
                          _as_chunks(val, chunk_size, in_memory_bytes),
                          num_classes=num_classes, Cs=Cs, **fit_args)
        fit.selection["cv_fallback"] = fallback
        return fit

    with _threads(n * d * num_classes):
        # Standardised once, in place, with the moments of train + val.
        mean, std = _moments(_blocks(x, y, 16384), d)
        x.sub_(mean).div_(std)
        folds = cv_folds(y.numpy())
        sweep = _cv_sweep(_row_span(x), y, folds, num_classes=num_classes, Cs=Cs,
                          class_weights=class_weights, label_smoothing=label_smoothing,
                          max_iter=max_iter)
        key = "cv_loss" if scoring == "log_loss" else "cv_accuracy"
        sign = -1.0 if scoring == "log_loss" else 1.0
        best_score = max(sign * row[key] for row in sweep)
        # Among the Cs within the tie tolerance of the best, the lowest held-out loss: where
        # every C classifies every held-out image, the best-calibrated one.
        tied = [row for row in sweep if sign * row[key] >= best_score - TIE_TOL]
        chosen = min(tied, key=lambda row: row["cv_loss"])
        # The head on train alone at that C, scored on val: the run's val metrics.
        fit = _fit(lambda: [(x[:n_train], y[:n_train])], lambda: [(x[n_train:], y[n_train:])],
                   n=n_train, d=d, num_classes=num_classes, Cs=[chosen["C"]], **fit_args)
    train_row = fit.sweep[0]
    chosen.update({k: train_row[k] for k in ("train_accuracy", "train_loss", "val_accuracy",
                                             "val_loss")})
    # The head acts on features standardised by train + val: fold that in as well.
    weight = fit.weight / std
    bias = fit.bias - weight @ mean
    selection = {"method": "cv", "folds": len(folds), "seed": CV_SEED, "scoring": scoring,
                 "images": n, "train_images": n_train, "val_images": n_val,
                 "cv_accuracy": chosen["cv_accuracy"], "cv_loss": chosen["cv_loss"]}
    return HeadFit(weight=weight, bias=bias, C=chosen["C"], time_s=0.0, sweep=sweep,
                   selection=selection)


def _gather(sources: Sequence[Chunks], n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunks of ``sources``, one after the other, in one (N, D) tensor and labels."""
    x, y = torch.empty(n, d), torch.empty(n, dtype=torch.long)
    i = 0
    for chunks in sources:
        for xc, yc in chunks():
            x[i:i + len(yc)] = xc
            y[i:i + len(yc)] = yc
            i += len(yc)
    if i != n:
        raise RuntimeError(f"Expected {n} feature rows, read {i}.")
    return x, y


def _blocks(x: torch.Tensor, y: torch.Tensor, size: int) -> Chunks:
    """``(x, y)`` as row blocks (views): moments accumulate in float64 block by block."""
    return lambda: ((x[i:i + size], y[i:i + size]) for i in range(0, len(y), size))


def _row_span(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, D) in coordinates of its row span, ``U S`` of its SVD (N, N), when it has
    fewer rows than columns; else ``x``. Every fitted W lies in that span (the loss's
    gradient is a combination of the rows; the penalty's is W itself), the distances and
    products between rows are unchanged, so a fold's fit and held-out scores are the same
    at N / D of the cost."""
    n, d = x.shape
    if n >= d:
        return x
    u, s, _ = torch.linalg.svd(x, full_matrices=False)  # (N, N), (N,)
    return u * s


def _cv_sweep(x: torch.Tensor, y: torch.Tensor, folds: Sequence[tuple[np.ndarray, np.ndarray]], *,
              num_classes: int, Cs: Sequence[float], class_weights, label_smoothing: float,
              max_iter: int) -> list[dict]:
    """Per fold, the warm-started sweep over ``Cs`` on its training part, each C scored on
    its held-out part; one row per C with the mean and per-fold scores."""
    cw = class_weights.float() if class_weights is not None else torch.ones(num_classes)
    per_fold = []
    for f, (fit_idx, held_idx) in enumerate(folds):
        fit_idx, held_idx = torch.from_numpy(fit_idx), torch.from_numpy(held_idx)
        # (N_f, D) copies, freed after the fold: two matrix products per L-BFGS evaluation.
        part, held = (x[fit_idx], y[fit_idx]), (x[held_idx], y[held_idx])
        per_fold.append(_fold_sweep(part, held, num_classes=num_classes, Cs=Cs, class_weights=cw,
                                    label_smoothing=label_smoothing, max_iter=max_iter, fold=f))
    rows = []
    for j, C in enumerate(Cs):
        runs = [fold[j] for fold in per_fold]
        rows.append({"C": C,
                     "cv_accuracy": float(np.mean([r["accuracy"] for r in runs])),
                     "cv_loss": float(np.mean([r["loss"] for r in runs])),
                     "cv_fold_accuracy": [round(r["accuracy"], 6) for r in runs],
                     "cv_fold_loss": [round(r["loss"], 6) for r in runs],
                     "iterations": sum(r["iterations"] for r in runs),
                     "evaluations": sum(r["evaluations"] for r in runs),
                     "time_s": round(sum(r["time_s"] for r in runs), 4)})
    return rows


def _fold_sweep(part: tuple[torch.Tensor, torch.Tensor], held: tuple[torch.Tensor, torch.Tensor], *,
                num_classes: int, Cs: Sequence[float], class_weights: torch.Tensor,
                label_smoothing: float, max_iter: int, fold: int) -> list[dict]:
    """One fold: fit on ``part`` for each C in order, warm-started; score on ``held``."""
    n, d = part[0].shape
    weight_sum = class_weights[part[1]].sum().item()
    w = torch.zeros(num_classes, d, requires_grad=True)  # (C, D)
    b = torch.zeros(num_classes, requires_grad=True)  # (C,)
    out = []
    for C in Cs:
        t0 = time.perf_counter()
        iterations, evals = _minimise(w, b, lambda: [part], l2=1.0 / (2.0 * C * n),
                                      class_weights=class_weights, weight_sum=weight_sum,
                                      label_smoothing=label_smoothing, max_iter=max_iter)
        accuracy, loss = _evaluate(lambda: [held], w.detach(), b.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"The L-BFGS head fit diverged at C={C:g} (fold {fold}).")
        out.append({"accuracy": accuracy, "loss": loss, "iterations": iterations,
                    "evaluations": evals, "time_s": time.perf_counter() - t0})
    return out


def refit_logistic_head(
    selection: HeadFit,
    train,
    val,
    *,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    max_iter: int = 300,
    chunk_size: int = 16384,
    in_memory_bytes: int = 1 << 30,
) -> HeadFit:
    """The head refitted on ``train`` + ``val`` at the C that ``selection`` chose.

    Standardised with the moments of both splits, warm-started from ``selection``'s head,
    converged to ``REFIT_GRAD_TOL``.
    The result keeps ``selection``'s C, sweep and ``selection`` (their scores are the
    held-out ones) and records the refit in ``refit``; ``time_s`` is the selection's plus
    the refit's.
    """
    start = time.perf_counter()
    train_chunks, n_train, d = _as_chunks(train, chunk_size, in_memory_bytes)
    val_chunks, n_val, _ = _as_chunks(val, chunk_size, in_memory_bytes)
    if n_val == 0:
        raise ValueError("No validation features to refit the head on: without a "
                         "validation split the head is already fitted on every image.")
    n = n_train + n_val

    def both() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return itertools.chain(train_chunks(), val_chunks())

    with _threads(n * d * num_classes):
        fit = _fit(both, None, n=n, d=d, num_classes=num_classes, Cs=[selection.C],
                   class_weights=class_weights, label_smoothing=label_smoothing,
                   max_iter=max_iter, in_memory_bytes=in_memory_bytes,
                   init=(selection.weight, selection.bias), grad_tol=REFIT_GRAD_TOL)
    row = fit.sweep[0]
    refit = {"images": n, "train_images": n_train, "val_images": n_val, "grad_tol": REFIT_GRAD_TOL,
             "iterations": row["iterations"], "train_accuracy": row["train_accuracy"],
             "train_loss": row["train_loss"], "time_s": round(time.perf_counter() - start, 4)}
    log.info("Head refit on train + val (%d images) at C=%g: train accuracy %.4f, %.2f s.",
             n, selection.C, row["train_accuracy"], refit["time_s"])
    return HeadFit(weight=fit.weight, bias=fit.bias, C=selection.C,
                   time_s=selection.time_s + refit["time_s"], sweep=selection.sweep,
                   selection=selection.selection, refit=refit)


def _length(data) -> int:
    return len(data[1]) if isinstance(data, tuple) else len(data)


def _fit(train_chunks: Chunks, val_chunks: Chunks | None, *, n: int, d: int, num_classes: int,
         Cs: Sequence[float], class_weights, label_smoothing: float, max_iter: int,
         in_memory_bytes: int, init: tuple[torch.Tensor, torch.Tensor] | None = None,
         grad_tol: float = GRAD_TOL) -> HeadFit:
    """Sweep ``Cs`` in order, warm-starting each fit from the last (the first from
    ``init``, a raw-feature head, if given); keep the best on val (without val, the first)."""
    mean, std = _moments(train_chunks, d)
    in_memory = n * d * 4 <= in_memory_bytes
    train_std = _standardised(train_chunks, mean, std, in_memory=in_memory)
    val_std = None if val_chunks is None else _standardised(val_chunks, mean, std, in_memory=in_memory)

    cw = class_weights.float() if class_weights is not None else torch.ones(num_classes)
    # The weighted mean's denominator, as F.cross_entropy(weight=...) computes it.
    weight_sum = sum(cw[y].sum().item() for _, y in train_chunks())

    w = torch.zeros(num_classes, d)  # (C, D)
    b = torch.zeros(num_classes)  # (C,)
    if init is not None:
        # The raw-feature head in this standardisation: W x + b = (W s) (x - m) / s + (b + W m).
        w, b = init[0].float() * std, init[1].float() + init[0].float() @ mean
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    sweep: list[dict] = []
    best: tuple[float, float, float, torch.Tensor, torch.Tensor] | None = None
    for C in Cs:
        t0 = time.perf_counter()
        iterations, evals = _minimise(w, b, train_std, l2=1.0 / (2.0 * C * n), class_weights=cw,
                                      weight_sum=weight_sum, label_smoothing=label_smoothing,
                                      max_iter=max_iter, grad_tol=grad_tol)
        row = {"C": C, "iterations": iterations, "evaluations": evals}
        row["train_accuracy"], row["train_loss"] = _evaluate(train_std, w.detach(), b.detach())
        if val_std is not None:
            row["val_accuracy"], row["val_loss"] = _evaluate(val_std, w.detach(), b.detach())
        row["time_s"] = round(time.perf_counter() - t0, 4)
        sweep.append(row)
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"The L-BFGS head fit diverged at C={C:g}.")
        score = (row.get("val_accuracy", 0.0), -row.get("val_loss", 0.0))
        if best is None or score > best[:2]:
            best = (*score, C, w.detach().clone(), b.detach().clone())

    assert best is not None
    _, _, best_c, w_std, b_std = best
    # Fold the standardisation in: W (x - m) / s + b = (W / s) x + (b - (W / s) m).
    weight = w_std / std
    bias = b_std - weight @ mean
    return HeadFit(weight=weight, bias=bias, C=best_c, time_s=0.0, sweep=sweep)


__all__ = ["CV_FOLDS", "CV_SCORING", "CV_SEED", "DEFAULT_CS", "FALLBACK_C", "HeadFit",
           "check_linear_head", "cv_fold_count", "cv_folds", "fit_logistic_head",
           "refit_logistic_head"]

"""``--head-fit lbfgs``: the linear head as a regularised logistic regression.

The way CLIP (Radford et al., 2021) and DINOv2 (Oquab et al., 2023) evaluate frozen
features: multinomial logistic regression fitted to convergence with L-BFGS, once per
value of a log-spaced grid of the inverse regularisation strength ``C``, and the ``C``
that is best on the validation split is kept. No learning rate, no epochs, no schedule.

The objective, for the C of the sweep and N training samples, is scikit-learn's
``LogisticRegression`` divided by ``C * N``::

    mean_i w[y_i] * CE(W x_i + b, y_i) / mean_i w[y_i]  +  ||W||^2 / (2 C N)

on standardised features (per-dimension mean 0, std 1, from the training split), which
keeps L-BFGS well conditioned whatever the backbone's feature scale; the bias is not
penalised. The fitted ``(W, b)`` are then folded back to act on raw features, so the
result is an ordinary ``nn.Linear`` head and checkpoints, evaluation and export need not
know how it was trained.

``refit_logistic_head`` then fits the chosen C once more on train + val: the selection
used val as held-out data, the final head learns from every labelled image (as
scikit-learn's ``LogisticRegressionCV(refit=True)`` does after its cross-validation). The
objective is per sample, so the same C means the same trade-off on more samples.

Features are read in chunks from the memory-mapped cache (``FeatureDataset.chunks``);
splits that fit in ``in_memory_bytes`` are loaded once, larger ones are streamed on every
L-BFGS evaluation, so the fit never needs all features in memory at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

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
# Stop when no gradient component exceeds this: scikit-learn's default tol for lbfgs.
GRAD_TOL = 1e-4
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
              label_smoothing: float, max_iter: int) -> tuple[int, int]:
    """L-BFGS on the full (chunked) training objective, in place on ``w`` and ``b``."""
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=GRAD_TOL, tolerance_change=1e-9,
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
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    max_iter: int = 300,
    chunk_size: int = 16384,
    in_memory_bytes: int = 1 << 30,
) -> HeadFit:
    """Fit the head on ``train`` for every C in ``Cs``; keep the best on ``val``.

    ``train`` and ``val`` are ``FeatureDataset``s or ``(X (N, D), y (N,))`` pairs. The
    sweep runs from the strongest regularisation to the weakest, each fit warm-started
    from the previous one. Best = highest val accuracy, ties to the lower val loss.
    Without ``val``, ``FALLBACK_C`` is used alone.
    """
    start = time.perf_counter()
    train_chunks, n, d = _as_chunks(train, chunk_size, in_memory_bytes)
    if n == 0:
        raise ValueError("No training features to fit the head on.")
    val_chunks = None
    if val is not None and _length(val) > 0:
        val_chunks = _as_chunks(val, chunk_size, in_memory_bytes)[0]
    if val_chunks is None:
        log.warning("No validation split to choose the regularisation on: --head-fit lbfgs "
                    "uses C=%g.", FALLBACK_C)
    Cs = sorted(float(c) for c in Cs) if val_chunks is not None else [FALLBACK_C]
    with _threads(n * d * num_classes):
        fit = _fit(train_chunks, val_chunks, n=n, d=d, num_classes=num_classes, Cs=Cs,
                   class_weights=class_weights, label_smoothing=label_smoothing,
                   max_iter=max_iter, in_memory_bytes=in_memory_bytes)
    fit.time_s = time.perf_counter() - start
    chosen = fit.best_row()
    log.info("Head fit L-BFGS: C=%g chosen from %d values (%s); train accuracy %.4f%s, %.2f s.",
             fit.C, len(Cs), ", ".join(f"{c:g}" for c in Cs), chosen["train_accuracy"],
             f", val accuracy {chosen['val_accuracy']:.4f}" if "val_accuracy" in chosen else "",
             fit.time_s)
    return fit


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
    """The head refitted on ``train`` + ``val`` at the C that ``selection`` chose on val.

    Standardised with the moments of both splits, warm-started from ``selection``'s head.
    The result keeps ``selection``'s C and sweep (its val scores are the held-out ones)
    and records the refit in ``refit``; ``time_s`` is the selection's plus the refit's.
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
                   init=(selection.weight, selection.bias))
    row = fit.sweep[0]
    refit = {"images": n, "train_images": n_train, "val_images": n_val,
             "iterations": row["iterations"], "train_accuracy": row["train_accuracy"],
             "train_loss": row["train_loss"], "time_s": round(time.perf_counter() - start, 4)}
    log.info("Head refit on train + val (%d images) at C=%g: train accuracy %.4f, %.2f s.",
             n, selection.C, row["train_accuracy"], refit["time_s"])
    return HeadFit(weight=fit.weight, bias=fit.bias, C=selection.C,
                   time_s=selection.time_s + refit["time_s"], sweep=selection.sweep, refit=refit)


def _length(data) -> int:
    return len(data[1]) if isinstance(data, tuple) else len(data)


def _fit(train_chunks: Chunks, val_chunks: Chunks | None, *, n: int, d: int, num_classes: int,
         Cs: Sequence[float], class_weights, label_smoothing: float, max_iter: int,
         in_memory_bytes: int, init: tuple[torch.Tensor, torch.Tensor] | None = None) -> HeadFit:
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
                                      max_iter=max_iter)
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


__all__ = ["DEFAULT_CS", "FALLBACK_C", "HeadFit", "check_linear_head", "fit_logistic_head",
           "refit_logistic_head"]

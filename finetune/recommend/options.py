"""The options a recommendation weighs: image sizes worth trying, and for each size every
strategy with its forecast accuracy, its wall time here and its command; then the choice.

* **Image size.** Candidates are the backbone's pretrained size, 128 px and the data's
  median side rounded up to a multiple of 32 (at least 64), none above the pretrained
  size. The penultimate probe is measured at each on the same sample; the smallest size
  whose probe is within one binomial standard error of the best wins: a larger input
  costs time roughly with its area and must earn it.
* **Without a budget**, the strategy the grid decides runs, unless an option at least
  ``CHEAP_RATIO`` times cheaper has a forecast within the decided one's held-out error
  of it: then that one, and the reasons say so. A gain the forecast cannot tell from
  its own error does not buy 10x the time. What it costs, measured on the recommender
  benchmark (benchmarks/recommend/results/forecast.md): 0.3 points of mean regret and
  one cell 16 points below its best; within half the error the grid's worst case stays
  (4.4) but the rule almost never fires, and the time stays.
* **With a budget**, the option with the best forecast whose time fits what is left of
  the budget after measuring; epochs may be cut to half of the planned ones to fit, and
  64 px is a candidate size too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models import Backbone
from .forecast import Forecast, forecast
from .signals import Sample, forward_pass, load_subsample, ridge_loo_accuracy

MIN_SIZE = 64
SMALL_SIZE = 128
CHEAP_RATIO = 10.0  # how much cheaper an option must be to replace the decided strategy
CHEAP_MARGIN = 1.0  # ... and how close its forecast, as a share of the held-out error
MIN_EPOCH_SHARE = 0.5  # a budget may cut a strategy's planned epochs to this share


def candidate_sizes(pretrained: int, amount: dict, *, budget: bool = False) -> list[int]:
    """The pretrained size, 128 and the data's median side rounded up to 32 (floor 64),
    ascending, never above the pretrained size; with a ``budget``, 64 too: a linear head
    there extracts its features in a quarter of 128 px's time, the option left when a
    short budget on a slow machine fits nothing larger."""
    side = min(amount.get("median_width") or pretrained, amount.get("median_height") or pretrained)
    native = max(MIN_SIZE, 32 * math.ceil(side / 32)) if math.isfinite(side) else pretrained
    sizes = {pretrained, SMALL_SIZE, native} | ({MIN_SIZE} if budget else set())
    return sorted(s for s in sizes if MIN_SIZE <= s <= pretrained)


@dataclass(frozen=True)
class SizeProbe:
    image_size: int
    probe_accuracy: float
    images: int
    load_ms: float  # decoding and resizing one image

    @property
    def stderr(self) -> float:
        p = self.probe_accuracy
        return math.sqrt(max(p * (1 - p), 1e-4) / max(1, self.images))


def probe_at(model: Backbone, samples: list[Sample], image_size: int, *, num_classes: int,
             batch_size: int) -> SizeProbe:
    """The penultimate ridge probe (leave-one-out) at ``image_size``: one bare forward pass."""
    start = time.perf_counter()
    images = load_subsample(samples, model, image_size)
    load_ms = 1000 * (time.perf_counter() - start) / max(1, len(images.labels))
    was_training = model.training
    model.eval()
    try:
        result = forward_pass(model, images, batch_size=batch_size, stages=False, layers=set())
    finally:
        model.train(was_training)
    return probe_of(image_size, result.penultimate, images.labels, num_classes=num_classes,
                    load_ms=load_ms)


def probe_of(image_size: int, features: np.ndarray, labels: np.ndarray, *, num_classes: int,
             load_ms: float) -> SizeProbe:
    """The penultimate ridge probe (leave-one-out) of ``features`` taken at ``image_size``."""
    accuracy, _ = ridge_loo_accuracy(features, labels, num_classes=num_classes)
    return SizeProbe(image_size, accuracy, len(labels), load_ms)


def choose_size(probes: list[SizeProbe], forward_ms: dict[int, float] | None = None) -> tuple[int, str]:
    """The smallest size whose probe is within one standard error of the best, and why
    (with how much faster its inference is, given ``forward_ms`` per size)."""
    best = max(probes, key=lambda p: (p.probe_accuracy, -p.image_size))
    chosen = min((p for p in probes if p.probe_accuracy >= best.probe_accuracy - best.stderr),
                 key=lambda p: p.image_size)
    listed = ", ".join(f"{p.image_size} px {p.probe_accuracy:.3f}" for p in probes)
    if chosen is best:
        why = f"the probe is best at {best.image_size} px ({listed})"
    else:
        faster = ""
        if forward_ms and forward_ms.get(chosen.image_size):
            faster = f", {forward_ms[best.image_size] / forward_ms[chosen.image_size]:.1f}x faster"
        why = (f"{chosen.image_size} px: probe {chosen.probe_accuracy:.3f} vs {best.probe_accuracy:.3f} "
               f"at {best.image_size} px, within one standard error ({best.stderr:.3f}){faster} ({listed})")
    return chosen.image_size, why


@dataclass
class Option:
    strategy: str
    unfreeze: int | None
    image_size: int
    epochs: int | None
    forecast: Forecast
    seconds: float
    command: str
    plan: Any = field(repr=False, default=None)  # the Plan the command runs

    @property
    def label(self) -> str:
        return self.strategy + (f" --unfreeze {self.unfreeze}" if self.unfreeze is not None else "")

    def to_json(self) -> dict[str, Any]:
        f = self.forecast
        return {"strategy": self.strategy, "unfreeze": self.unfreeze, "image_size": self.image_size,
                "epochs": self.epochs, "accuracy": round(f.accuracy, 4),
                "interval": [round(f.low, 4), round(f.high, 4)], "forecast_mae": f.mae,
                "minutes": round(self.seconds / 60, 2), "command": self.command}


def forecast_for(strategy: str, unfreeze: int | None, signals: dict, stats: dict,
                 probe: float) -> Forecast:
    """The forecast with the probe measured at the option's own image size."""
    return forecast(strategy, unfreeze, signals={**signals, "probe_accuracy": probe}, stats=stats)


def choose(options: list[Option], decided: Option, *, budget_s: float | None,
           spent_s: float) -> tuple[Option, list[str]]:
    """The option to run and the reasons (module docstring)."""
    if budget_s is None:
        error = CHEAP_MARGIN * decided.forecast.mae
        cheap = [o for o in options
                 if o.seconds * CHEAP_RATIO <= decided.seconds
                 and o.forecast.accuracy >= decided.forecast.accuracy - error]
        if not cheap:
            return decided, []
        pick = min(cheap, key=lambda o: o.seconds)
        return pick, [f"{pick.label} at {pick.image_size} px instead of {decided.label}: forecast "
                      f"{pick.forecast.accuracy:.1%} vs {decided.forecast.accuracy:.1%}, inside the "
                      f"forecast's error ({error:.1%}), in {decided.seconds / max(pick.seconds, 1e-9):.0f}x "
                      f"less time ({pick.seconds / 60:.1f} vs {decided.seconds / 60:.1f} min)"]
    left = budget_s - spent_s
    fitting = [o for o in options if o.seconds <= left]
    if not fitting:
        pick = min(options, key=lambda o: o.seconds)
        return pick, [f"budget {budget_s / 60:g} min: {left / 60:.1f} min left after measuring and "
                      f"no option fits; the quickest, {pick.label} at {pick.image_size} px "
                      f"({pick.seconds / 60:.1f} min), runs and stops at the budget"]
    pick = max(fitting, key=lambda o: (round(o.forecast.accuracy, 3), -o.seconds))
    return pick, [f"budget {budget_s / 60:g} min ({left / 60:.1f} min left after measuring): "
                  f"{pick.label} at {pick.image_size} px has the best forecast of the "
                  f"{len(fitting)} option(s) that fit ({pick.forecast.accuracy:.1%}, "
                  f"about {pick.seconds / 60:.1f} min)"]


def epochs_to_fit(seconds_at: Any, planned: int, left_s: float) -> int | None:
    """The most epochs, at least ``MIN_EPOCH_SHARE`` of ``planned`` (and 3), whose time
    ``seconds_at(epochs)`` fits in ``left_s``; None when even that many do not."""
    low = max(3, math.ceil(MIN_EPOCH_SHARE * planned))
    per_epoch = seconds_at(1) - seconds_at(0)
    if per_epoch <= 0:
        return planned
    fits = int(np.floor((left_s - seconds_at(0)) / per_epoch))
    return min(planned, fits) if fits >= low else None


__all__ = ["CHEAP_RATIO", "Option", "SizeProbe", "candidate_sizes", "choose", "choose_size",
           "epochs_to_fit", "forecast_for", "probe_at", "probe_of"]

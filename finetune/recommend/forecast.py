"""The accuracy forecast: what each strategy should score on the test split, from the
probe and two more signals.

The probe (a ridge classifier's leave-one-out accuracy on the frozen penultimate
features) already predicts a linear head; what a strategy gains over it is modelled per
strategy as a linear function of the headroom the probe leaves, the images per class
(log2) and the later stages' shift after early AdaBN, fit on the tasks of
benchmarks/recommend (``forecast.py`` there writes ``forecast_coefficients.py`` and
reports the error on tasks left out of the fit). The interval is the 10th-90th
percentile of those held-out errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .forecast_coefficients import ARMS

# The benchmark trained partial and surgical with 1 to 3 stages; these arms stand for K.
_PARTIAL_ARMS = {1: "partial-1"}
_SURGICAL_ARMS = {1: "surgical-1"}


@dataclass(frozen=True)
class Forecast:
    accuracy: float
    low: float
    high: float
    mae: float  # the held-out mean absolute error of this strategy's forecast
    arm: str  # the benchmark arm whose fit it uses


def arm_of(strategy: str, unfreeze: int | None) -> str:
    """The fitted benchmark arm nearest to ``strategy --unfreeze K``."""
    if strategy == "partial":
        return _PARTIAL_ARMS.get(unfreeze or 2, "partial-2")
    if strategy == "surgical":
        return _SURGICAL_ARMS.get(unfreeze or 1, "surgical-1")
    return strategy


def features(signals: dict, stats: dict) -> list[float]:
    """The regressors, in ``forecast_coefficients.FEATURES`` order."""
    return [1.0, 1.0 - signals["probe_accuracy"], math.log2(max(1.0, stats["per_class_median"])),
            signals["shift_later_after_early_adabn"] or 0.0]


def forecast(strategy: str, unfreeze: int | None, *, signals: dict, stats: dict) -> Forecast:
    """Expected test accuracy of ``strategy`` with its interval, clipped to [chance, 1]."""
    arm = arm_of(strategy, unfreeze)
    fit = ARMS[arm]
    gain = sum(c * x for c, x in zip(fit["coef"], features(signals, stats), strict=True))
    floor = signals.get("chance", 0.0)

    def clip(value: float) -> float:
        return min(1.0, max(floor, value))

    mean = signals["probe_accuracy"] + gain
    return Forecast(clip(mean), clip(mean + fit["interval"][0]), clip(mean + fit["interval"][1]),
                    fit["mae"], arm)


__all__ = ["Forecast", "arm_of", "features", "forecast"]

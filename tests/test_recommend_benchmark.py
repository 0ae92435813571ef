"""`decide` with the shipped Thresholds, on the signals the benchmark measured, picks the
arms the committed reports scored. A change to the decision or to a default that moves a
user's recommendation on any of those cells fails here; the benchmark's own checks (its
scoring, its frozen rule sets, `regret.py --check`) live in benchmarks/recommend/."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from finetune.recommend import Decision, Thresholds, decide

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "recommend" / "results"


def _arm(d: Decision) -> str:
    """The benchmark's name for the run a decision asks for: partial and surgical runs
    train 1 to 3 stages there."""
    if d.strategy in ("partial", "surgical"):
        return f"{d.strategy}-{min(3, max(1, d.unfreeze or 1))}"
    return d.strategy


def test_the_shipped_thresholds_pick_what_the_benchmark_scored():
    committed = json.loads((RESULTS / "regret.json").read_text())["picks"]["recommender (current defaults)"]
    picks = {}
    for cell in committed:
        signals = json.loads((RESULTS / "signals" / f"{cell}.json").read_text())
        picks[cell] = _arm(decide(signals["similarity"], signals["stats"], Thresholds()))
    assert picks == committed
    # Every branch a user can get is among them, not one arm everywhere.
    assert len(picks) >= 90 and {"linear", "lp-ft", "full"} <= set(picks.values())
    assert Counter(a.split("-")[0] for a in picks.values())["partial"] >= 5
    assert any(a.startswith("surgical-") for a in picks.values())

"""The decision: place the data on the strategy grid from the measured signals.

``decide`` is a pure function of the signals, the counted amount and the ``Thresholds``,
so the benchmark (benchmarks/recommend/) re-decides every task under other thresholds
without measuring anything again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Thresholds:
    """Where the decision's lines are drawn. Starting values come from the reasons in
    the comments and the pilot tasks of docs/recommend.md; the benchmark recalibrates
    them leave-one-task-out (benchmarks/recommend/regret.py), never on the scored task."""

    # Amount: median images per class (all of the data) below this is "little". Up to 100
    # per class the large-data branches (partial, surgical) lost to lp-ft; set by the
    # leave-one-task-out calibration (benchmarks/recommend/REPORT.md).
    little_per_class: float = 200.0
    # Little + different and below this per class: a linear head instead of lp-ft. 0 = never:
    # even at 5 per class lp-ft beat a linear head on most tasks (benchmarks/recommend/REPORT.md).
    very_little_per_class: float = 0.0
    # Little + similar: when the frozen features still misclassify more than this share of
    # the images (and more than `headroom`), lp-ft (a gentle fine-tune from the probe's head)
    # instead of a linear head; 1.0 = never, 0 = whenever the probe leaves headroom. Linear
    # heads on unsaturated features lost 2-6 points to lp-ft (benchmarks/recommend/REPORT.md).
    little_similar_lpft_error: float = 0.0
    # Similarity score = probe_weight * kappa + (1 - probe_weight) * exp(-shift / shift_scale),
    # kappa = (probe accuracy - chance) / (1 - chance), shift = the later stages' BN shift
    # left after early AdaBN (symmetric KL). Equal weights: neither signal is trusted alone
    # (digits probe at 91 % yet sit far from ImageNet's statistics).
    probe_weight: float = 0.5
    # Pilot at 96 px: clean photo crops 0.2, blurred / noisy copies 0.35, digits and
    # glyphs 1.0; a scale of 1.0 maps these to 0.8, 0.7 and 0.37.
    shift_scale: float = 1.0
    # At or above: "similar" (pilot: photos 0.9, digits 0.63). A line at 0.5 lost 8.75 points
    # on photos-rotation held out at 400 per class (benchmarks/recommend/REPORT.md).
    similar_score: float = 0.7
    # The line instead of `similar_score` where the later stages' shift stays at or above
    # `semantic_hot` after early AdaBN: there a middling score comes from stages that have
    # drifted from the checkpoint, not from features that fail to separate the classes.
    # None = the same line everywhere: 0.5 here lost 0.33 points on average on the held-out
    # cells where it differs from the defaults (benchmarks/recommend/REPORT.md).
    similar_score_shifted: float | None = None
    similar_kappa_no_bn: float = 0.8  # no BatchNorm: kappa alone decides
    # Probe error at or below this: the frozen features already separate the classes,
    # so no fine-tuning can gain more than this; `linear` whatever the amount. 0: linear
    # heads on probes at 98-99.5 % still lost up to 3 points to lp-ft
    # (benchmarks/recommend/REPORT.md).
    headroom: float = 0.0
    # Probe accuracies within this of the best count as "stopped rising" with depth.
    plateau: float = 0.01
    # Input-level (pixel) shift, the case for surgical fine-tuning (Lee et al. 2022):
    # early AdaBN removes at least `pixel_shift` of the later stages' shift, that is at
    # least `pixel_share` of it, and what remains is below `semantic_hot`.
    pixel_shift: float = 0.3
    pixel_share: float = 0.4
    semantic_hot: float = 0.6  # also: a stage whose remaining shift exceeds this must train
    # Large + different: features that give kappa >= this get lp-ft (a linear head first,
    # then every layer fine-tuned from it: Kumar et al. 2022); below it, plain full
    # fine-tuning from a random head. 0 = always lp-ft: `full` lost 15 points to lp-ft at
    # kappa 0.43 (benchmarks/recommend/REPORT.md).
    lpft_kappa: float = 0.0
    # `partial` that would train more than this share of the stages becomes `full`.
    full_share: float = 0.5

    def to_json(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, float | None]) -> Thresholds:
        unknown = set(obj) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown threshold(s) {sorted(unknown)}; valid: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}.")
        return cls(**{k: None if v is None else float(v) for k, v in obj.items()})


@dataclass
class Decision:
    strategy: str  # linear | partial | full | lp-ft | surgical
    unfreeze: int | None  # partial: last K stages; surgical: first K stages
    amount: str  # little | large
    similarity: str  # similar | different
    score: float  # the similarity score
    line: float  # the score at or above which the data counts as similar (similarity_line)
    input_level: bool  # early AdaBN removes most of the shift: pixels, not semantics
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def similarity_score(signals: dict, thr: Thresholds) -> float:
    if not signals["has_batchnorm"]:
        return float(signals["kappa"])
    shift = signals["shift_later_after_early_adabn"]
    return thr.probe_weight * signals["kappa"] + (1 - thr.probe_weight) * math.exp(-shift / thr.shift_scale)


def similarity_line(signals: dict, thr: Thresholds) -> tuple[float, str]:
    """The score at or above which the data counts as similar, and why, where the line is
    not the usual one (``similar_score_shifted``); otherwise an empty reason."""
    if not signals["has_batchnorm"]:
        return thr.similar_kappa_no_bn, ""
    after = signals["shift_later_after_early_adabn"]
    if thr.similar_score_shifted is not None and after >= thr.semantic_hot:
        return thr.similar_score_shifted, (f"the later stages' shift stays at {after:.2f} >= "
                                           f"{thr.semantic_hot:g} after early AdaBN")
    return thr.similar_score, ""


def _is_input_level(signals: dict, thr: Thresholds) -> bool:
    if not signals["has_batchnorm"] or signals["shift_pixel"] is None:
        return False
    pixel, later = signals["shift_pixel"], signals["shift_later"]
    remaining = signals["shift_later_after_early_adabn"]
    return pixel >= thr.pixel_shift and pixel >= thr.pixel_share * later and remaining < thr.semantic_hot


def _partial_k(signals: dict, thr: Thresholds) -> tuple[int, str]:
    """How many last stages train: those after the depth where probe accuracy stops rising,
    and every trailing stage whose shift stays above ``semantic_hot`` after early AdaBN."""
    stages = signals["stages"]
    probes = [s["probe_accuracy"] for s in stages]
    top = max(p for p in probes if p is not None)
    plateau_at = min(i for i, p in enumerate(probes) if p is not None and p >= top - thr.plateau)
    k_probe = len(stages) - 1 - plateau_at
    k_shift = 0
    for s in reversed(stages):
        after = s["shift_after_early_adabn"]
        if after is None or after < thr.semantic_hot:
            break
        k_shift += 1
    k = max(1, k_probe, k_shift)
    if k_probe:
        why = (f"probe accuracy stops rising at {stages[plateau_at]['name']} "
               f"({probes[plateau_at]:.2f}, best {top:.2f}): the {k_probe} stage(s) after it add no "
               f"label information and are the ones to adapt")
    else:
        why = f"probe accuracy rises up to the last stage ({top:.2f}): adapting that one is enough"
    if k_shift:
        why += f"; the last {k_shift} stage(s) keep a shift above {thr.semantic_hot:g} after early AdaBN"
    return k, why


def decide(signals: dict, amount: dict, thr: Thresholds | None = None) -> Decision:
    """The grid cell and the strategy, from the signals alone (no model, no images)."""
    thr = thr or Thresholds()
    num_stages = len(signals["stages"])
    little = amount["per_class_median"] < thr.little_per_class
    score = similarity_score(signals, thr)
    line, line_why = similarity_line(signals, thr)
    similar = score >= line
    input_level = _is_input_level(signals, thr)
    d = Decision(strategy="linear", unfreeze=None, amount="little" if little else "large",
                 similarity="similar" if similar else "different", score=score, line=line,
                 input_level=input_level)
    d.reasons.append(
        f"amount: median {amount['per_class_median']:g} images per class "
        f"{'<' if little else '>='} {thr.little_per_class:g} -> {d.amount}")
    d.reasons.append(f"similarity: score {score:.2f} {'>=' if similar else '<'} {line:g} -> {d.similarity}"
                     + (f" (the line is {line:g}: {line_why})" if line_why else ""))
    error = 1.0 - signals["probe_accuracy"]
    if error <= thr.headroom:
        d.reasons.append(f"the frozen features already classify {signals['probe_accuracy']:.1%} of the "
                         f"images (error {error:.1%} <= {thr.headroom:.0%}): fine-tuning has nothing to gain")
        return d
    if little:
        if similar:
            if (error > thr.little_similar_lpft_error
                    and amount["per_class_median"] >= thr.very_little_per_class):
                d.strategy = "lp-ft"
                d.reasons.append(
                    f"little + similar, but the frozen features miss {error:.1%} of the images "
                    f"(> {thr.little_similar_lpft_error:.0%}): lp-ft, a linear head first, then a "
                    f"gentle fine-tune that starts from it")
                return d
            d.reasons.append("little + similar: a new head on frozen features")
            return d
        best = signals["best_stage_name"]
        at = f" at {signals['image_size']} px" if signals.get("image_size") else ""
        d.warnings.append(
            f"Little data far from the pretraining data: expect about {signals['probe_accuracy']:.0%} "
            f"accuracy (the frozen penultimate features{at}, leave-one-out; "
            f"chance {signals['chance']:.0%})"
            + (f"; {best}'s features probe at {signals['best_stage_accuracy']:.0%}, so the earlier "
               f"layers hold more of what this task needs" if best != signals["stages"][-1]["name"] else "")
            + ". More labelled images are the "
            f"surest gain: the learning curve rises {100 * signals['learning_curve_slope']:+.1f} points "
            f"per doubling of the data.")
        if amount["per_class_median"] < thr.very_little_per_class:
            d.reasons.append(f"little + different, under {thr.very_little_per_class:g} images per class: "
                             f"any fine-tuning memorises them; a linear head on frozen features")
            return d
        d.strategy = "lp-ft"
        d.reasons.append("little + different: lp-ft (a linear head first, then gentle full fine-tuning) "
                         "with strong augmentation")
        return d
    if input_level:
        early = signals["early_stages"]
        raw = [s["shift"] or 0.0 for s in signals["stages"][:early]]
        d.strategy, d.unfreeze = "surgical", max(1, raw.index(max(raw)) + 1)
        d.reasons.append(
            f"input-level shift: re-estimating the first {early} stages' BN statistics removes "
            f"{signals['shift_pixel']:.2f} of the later stages' {signals['shift_later']:.2f}; tune the "
            f"first {d.unfreeze} stage(s), where it enters (surgical fine-tuning, Lee et al. 2022)")
        return d
    if similar:
        k, why = _partial_k(signals, thr)
        if k > thr.full_share * num_stages:
            d.strategy = "full"
            d.reasons.append(f"large + similar, but {why}: {k} of {num_stages} stages is more than "
                             f"{thr.full_share:.0%} of them -> full")
            return d
        d.strategy, d.unfreeze = "partial", k
        d.reasons.append(f"large + similar: partial, {why}")
        return d
    if signals["kappa"] >= thr.lpft_kappa:
        d.strategy = "lp-ft"
        line = f" >= {thr.lpft_kappa:g}" if thr.lpft_kappa > 0 else ""
        d.reasons.append(f"large + different: lp-ft, a linear head first, then every layer fine-tuned from "
                         f"it, so a random head does not distort the features (kappa "
                         f"{signals['kappa']:.2f}{line}; Kumar et al. 2022)")
        return d
    d.strategy = "full"
    d.reasons.append(f"large + different (kappa {signals['kappa']:.2f} < {thr.lpft_kappa:g}): fine-tune everything")
    return d

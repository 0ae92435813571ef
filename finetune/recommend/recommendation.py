"""``recommend``: measure the data with the checkpoint, decide, plan, and say why.

The grid (docs/design.md): amount (little / large) x similarity to the pretraining data
(similar / different). Amount is counted; similarity is measured (``signals``):

* how far the data's activations sit from the BatchNorm statistics stored in the
  checkpoint, per stage, and how much of that shift is left once the first stages'
  statistics are re-estimated on the data (AdaBN): what is left is semantic shift;
* how well a linear classifier separates the classes on frozen features of each stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..data import DataSplits, discover, resolve_data
from ..io import atomic_write_json
from ..models import Backbone, create_backbone
from .decide import Decision, Thresholds, decide
from .evidence import evidence
from .options import (
    Option,
    SizeProbe,
    candidate_sizes,
    choose,
    choose_size,
    epochs_to_fit,
    forecast_for,
    probe_at,
    probe_of,
)
from .plan import Plan, plan_hyperparameters
from .result import Recommendation
from .signals import amount_stats, measure, stratified_subsample
from .timing import Speed, measure_speed

log = logging.getLogger("finetune")
# With a budget, further image sizes are measured only while measuring has used less than
# this share of it (the smallest size first).
MEASURE_SHARE = 0.15
# Forward-pass equivalents that measuring costs per sampled image, counted at the
# smallest size: the hooked pass, AdaBN's estimate and its pass, decoding (about 4), and
# one bare pass at each larger size (about 3 for 224 px after 128).
_PASSES_PER_IMAGE = 8.0
# Below this many sampled images per class, a budget's recommendation says its probes
# are guesses (leave-one-out on 2-4 images per class swings by a class at a time).
MIN_PER_CLASS = 5

# The pooled penultimate features of every train and val image at an image size, and
# their paths, in any order. `finetune run --strategy auto` passes its own cached
# extraction (training.feature_cache), so that a head on cached features at the size
# chosen finds train and val already extracted.
FeatureSource = Callable[[int], tuple[np.ndarray, list[str]]]


# --------------------------------------------------------------------------- entry points
def recommend(
    data: str | Path | DataSplits,
    backbone: str,
    *,
    budget_minutes: float | None = None,
    seed: int = 0,
    max_images: int = 500,
    image_size: int | None = None,
    weights: str = "pretrained",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    batch_size: int = 32,
    thresholds: Thresholds | None = None,
    model: Backbone | None = None,
    data_label: str | None = None,
    features: FeatureSource | None = None,
) -> Recommendation:
    """Measure ``data`` with ``backbone``'s pretrained checkpoint and recommend a strategy,
    an image size and epochs, with a forecast of every option's accuracy and time here.

    ``data`` is what ``finetune run --data`` takes (a folder, a CSV, ``builtin:NAME``) or
    a ``DataSplits``. It is split exactly as ``finetune run`` would split it (same seed and
    fractions), and the probes never see the test split. ``model`` reuses an already
    built backbone with its pretrained weights (any head). ``image_size`` fixes the size;
    without it the size is chosen (``options``). ``budget_minutes`` counts this call's own
    measuring time too. ``features``: where the probe at each larger size takes its
    features when the sample is all of train + val (``FeatureSource``).
    """
    start = time.perf_counter()
    thr = thresholds or Thresholds()
    splits, label = _splits(data, data_label, seed=seed, val_fraction=val_fraction,
                            test_fraction=test_fraction)
    model = _pretrained(backbone, weights, model)
    default_size = model.pretrained_cfg.image_size
    amount = _amount(splits, seed=seed)
    sizes = [image_size] if image_size else candidate_sizes(default_size, amount, budget=bool(budget_minutes))
    signals, probes, speeds = _measure_sizes(model, splits, sizes, start=start,
                                             max_images=max_images, batch_size=batch_size,
                                             budget_minutes=budget_minutes, seed=seed,
                                             features=features)
    sizes = [p.image_size for p in probes]
    size, size_reason = ((image_size, None) if image_size
                         else choose_size(probes, {at: v.forward_ms for at, v in speeds.items()}))
    signals["speed"] = {str(s): v.to_json() for s, v in speeds.items()}
    signals["probe_by_size"] = {str(p.image_size): p.probe_accuracy for p in probes}
    amount["grey_fraction"] = signals["grey_fraction"]
    decision = decide(signals, amount, thr)

    def option(d: Decision, at: int, epochs: int | None = None) -> Option:
        plan = plan_hyperparameters(d, signals, amount, model=model, image_size=at,
                                    batch_size=batch_size, speed=speeds[at], epochs=epochs,
                                    size_reason=size_reason if at == size else None)
        probe = signals["probe_by_size"][str(at)]
        return Option(d.strategy, d.unfreeze, at, plan.hyperparameters.get("epochs", {}).get("value"),
                      forecast_for(d.strategy, d.unfreeze, signals, amount, probe),
                      60 * plan.estimated_minutes,
                      build_command(label, backbone, plan, image_size=at, default_size=default_size,
                                    weights=weights), plan)

    table = [option(d, s) for s in sizes for d in _alternatives(decision, model.default_unfreeze)]
    # The grid's decision is one of the table's rows (its strategy at the chosen size): the
    # same object, so that the row is marked chosen when the choice keeps it.
    decided = next(o for o in table if o.image_size == size and o.strategy == decision.strategy
                   and o.unfreeze == decision.unfreeze)
    spent = time.perf_counter() - start
    budget_s = None if budget_minutes is None else 60 * budget_minutes
    if budget_s is not None:
        table += _cut_to_fit(table, option, decision, model.default_unfreeze, budget_s - spent)
    chosen, why = choose(table, decided, budget_s=budget_s, spent_s=spent)
    plan = chosen.plan
    return Recommendation(
        strategy=chosen.strategy,
        cell={"similarity": decision.similarity, "amount": decision.amount},
        stats=amount,
        similarity=_similarity(decision, signals),
        hyperparameters=plan.hyperparameters,
        command=chosen.command,
        evidence=evidence(signals, amount, decision, plan, thr),
        thresholds=thr.to_json(),
        reasons=decision.reasons + why,
        warnings=decision.warnings + _skipped_warning(signals) + _thin_sample_warning(signals, budget_minutes),
        backbone=getattr(model, "variant", backbone),
        data=label,
        estimated_minutes=plan.estimated_minutes,
        seconds=time.perf_counter() - start,
        forecast=[o.to_json() | {"chosen": o is chosen, "decided": _same(o, decided)} for o in table],
        budget_minutes=budget_minutes,
    )


def _measure_sizes(model: Backbone, splits: DataSplits, sizes: list[int], *, start: float,
                   max_images: int, batch_size: int, budget_minutes: float | None,
                   seed: int, features: FeatureSource | None
                   ) -> tuple[dict, list[SizeProbe], dict[int, Speed]]:
    """The depth signals at the smallest size, and the probe and the speed at each size.

    The signals (the hooked pass, AdaBN's estimate and its pass) are measured once, at the
    smallest candidate, where they cost least; their pass's penultimate features are that
    size's probe. Each larger size costs one bare pass for its probe, through ``features``
    when the sample is all of train + val. With a budget, the
    sample is what the budget affords, and no further size is measured once measuring has
    used ``MEASURE_SHARE`` of it."""
    num_classes = len(splits.classes)
    speeds = {sizes[0]: measure_speed(model, sizes[0], batch_size=batch_size, load_ms=0.0)}
    if budget_minutes:
        max_images = _affordable_images(max_images, speeds[sizes[0]],
                                        MEASURE_SHARE * 60 * budget_minutes - (time.perf_counter() - start),
                                        num_classes=num_classes)
    sample = stratified_subsample(splits.train + splits.val, max_images=max_images,
                                  num_classes=num_classes, seed=seed)
    signals = measure(model, sample, num_classes=num_classes, image_size=sizes[0],
                      max_images=max_images, batch_size=batch_size, seed=seed)
    probes = [SizeProbe(sizes[0], signals["probe_accuracy"], signals["subsample"],
                        signals["load_ms_per_image"])]
    speeds[sizes[0]] = dataclasses.replace(speeds[sizes[0]], load_ms=probes[0].load_ms)
    log.info("Signals and probe at %d px: %.3f on %d images (%.0f s so far).", sizes[0],
             probes[0].probe_accuracy, probes[0].images, time.perf_counter() - start)
    for at in sizes[1:]:
        if budget_minutes and time.perf_counter() - start > MEASURE_SHARE * 60 * budget_minutes:
            log.info("Budget: %d px not measured (measuring has used %.0f%% of the budget).", at,
                     100 * MEASURE_SHARE)
            break
        if features is not None and len(sample) == len(splits.train) + len(splits.val):
            probe, speeds[at] = _probe_from(features, sample, at, model, num_classes=num_classes,
                                            batch_size=batch_size)
            probes.append(probe)
        else:
            probes.append(probe_at(model, sample, at, num_classes=num_classes, batch_size=batch_size))
            speeds[at] = measure_speed(model, at, batch_size=batch_size, load_ms=probes[-1].load_ms)
        log.info("Probe at %d px: %.3f on %d images (%.0f s so far).", at, probes[-1].probe_accuracy,
                 probes[-1].images, time.perf_counter() - start)
    return signals, probes, speeds


def _probe_from(features: FeatureSource, sample: list, at: int, model: Backbone, *,
                num_classes: int, batch_size: int) -> tuple[SizeProbe, Speed]:
    """The probe at ``at`` on ``sample``'s rows of ``features(at)``; the decoding time per
    image is what the extraction took beyond the timed inference."""
    begin = time.perf_counter()
    feats, paths = features(at)
    per_image_ms = 1000 * (time.perf_counter() - begin) / max(1, len(paths))
    row = {path: i for i, path in enumerate(paths)}
    missing = [path for path, _ in sample if path not in row]
    if missing:
        raise ValueError(f"The feature source has no features for {len(missing)} sampled "
                         f"image(s), e.g. {missing[0]}.")
    x = feats[[row[path] for path, _ in sample]]
    labels = np.asarray([label for _, label in sample])
    speed = measure_speed(model, at, batch_size=batch_size, load_ms=0.0)
    speed = dataclasses.replace(speed, load_ms=max(0.0, per_image_ms - speed.forward_ms))
    return probe_of(at, x, labels, num_classes=num_classes, load_ms=speed.load_ms), speed


def _affordable_images(max_images: int, speed: Speed, seconds: float, *, num_classes: int) -> int:
    """The sample that ``seconds`` of measuring afford (``MEASURE_SHARE`` of the budget, less
    what building the model and timing it took): measuring costs about
    ``_PASSES_PER_IMAGE`` forward passes per image at the smallest size; at least two
    images per class."""
    per_image_s = _PASSES_PER_IMAGE * speed.forward_ms / 1000
    affordable = int(max(0.0, seconds) / max(per_image_s, 1e-6))
    return max(2 * num_classes, min(max_images, affordable))


def _alternatives(decision: Decision, default_unfreeze: int) -> list[Decision]:
    """Every strategy of the table, as decisions: the decided one with its reasons, the
    others with a reason that says they are the table's alternatives."""
    out = []
    for name, k in (("linear", None), ("partial", default_unfreeze), ("lp-ft", None), ("full", None),
                    ("surgical", 1)):
        if name == decision.strategy:
            out.append(decision)
            continue
        out.append(dataclasses.replace(decision, strategy=name, unfreeze=k,
                                       reasons=[f"the forecast table's {name} option"]))
    return out


def _cut_to_fit(table: list[Option], option, decision: Decision, default_unfreeze: int,
                left_s: float) -> list[Option]:
    """Options whose planned epochs do not fit in ``left_s``, cut to the epochs that do
    (at least ``options.MIN_EPOCH_SHARE`` of the plan)."""
    decisions = {(d.strategy, d.unfreeze): d for d in _alternatives(decision, default_unfreeze)}
    cut = []
    for o in table:
        if o.seconds <= left_s or o.epochs is None or o.strategy == "linear":
            continue
        d = decisions[(o.strategy, o.unfreeze)]
        epochs = epochs_to_fit(lambda e, d=d, at=o.image_size: option(d, at, e).seconds, o.epochs, left_s)
        if epochs is not None:
            cut.append(option(d, o.image_size, epochs))
    return cut


def _same(a: Option, b: Option) -> bool:
    return (a.strategy, a.unfreeze, a.image_size, a.epochs) == (b.strategy, b.unfreeze, b.image_size, b.epochs)


def _splits(data: str | Path | DataSplits, data_label: str | None, *, seed: int,
            val_fraction: float, test_fraction: float) -> tuple[DataSplits, str]:
    """The splits ``finetune run`` would make of ``data``, and the name the command uses."""
    if isinstance(data, DataSplits):
        return data, data_label or "DATA"
    # verify=False: a recommendation reads a subsample; files that fail to decode
    # there are skipped and counted. `finetune run` verifies every file.
    splits = discover(resolve_data(str(data)), val_fraction=val_fraction,
                      test_fraction=test_fraction, seed=seed, verify=False)
    return splits, data_label or str(data)


def _pretrained(backbone: str, weights: str, model: Backbone | None) -> Backbone:
    """``model``, or ``backbone`` built with the checkpoint whose statistics are measured."""
    if weights == "none":
        raise ValueError("The recommender measures the pretrained checkpoint (its BatchNorm "
                         "statistics and features); --weights none has neither. Use "
                         "'pretrained' or a weights file.")
    if model is not None:
        return model
    explicit = None if weights == "pretrained" else weights
    return create_backbone(backbone, pretrained=explicit is None, weights=explicit)


def _amount(splits: DataSplits, *, seed: int) -> dict:
    """How much data trains: counts and sizes over train and val (what `linear` refits
    on and the probes sample; the test images never train), and the split sizes."""
    amount = amount_stats(splits.train + splits.val, splits.classes, seed=seed)
    amount["train_per_class_median"] = float(_median(splits.counts("train")))
    amount["train_images"] = len(splits.train)
    amount["val_images"] = len(splits.val)
    amount["test_images"] = len(splits.test)
    return amount


def _similarity(decision: Decision, signals: dict) -> dict:
    """The similarity score and its line, then every measured signal but the bookkeeping."""
    return {
        "score": round(decision.score, 4),
        "threshold": decision.line,
        "input_level_shift": decision.input_level,
        **{k: v for k, v in signals.items() if k not in ("grey_fraction", "skipped", "seconds")},
    }


def _skipped_warning(signals: dict) -> list[str]:
    """A warning when undecodable files left the probes fewer images than sampled."""
    skipped = signals["skipped"]
    if not skipped:
        return []
    return [f"{len(skipped)} sampled image(s) could not be decoded and were skipped."]


def _thin_sample_warning(signals: dict, budget_minutes: float | None) -> list[str]:
    """A warning when the budget left measuring fewer than ``MIN_PER_CLASS`` images per
    class: the probes, and every forecast built on them, are then close to guesses."""
    per_class = signals["subsample_per_class_median"]
    if budget_minutes is None or per_class >= MIN_PER_CLASS:
        return []
    return [f"The budget ({budget_minutes:.2g} min left) afforded measuring only {per_class:g} "
            f"image(s) per class: the probes, and the forecast built on them, are guesses. A "
            f"budget of a few minutes measures enough to choose."]


def _median(values: list[int]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2 if n else 0.0


def build_command(data: str, backbone: str, plan: Plan, *, image_size: int, default_size: int,
                  weights: str = "pretrained") -> str:
    """The ``finetune run`` line that runs ``plan`` (every value explicit)."""
    hp = {k: v["value"] for k, v in plan.hyperparameters.items()}
    parts = ["finetune", "run", "--data", data, "--backbone", backbone, "--strategy", plan.strategy]
    if weights != "pretrained":
        parts += ["--weights", weights]
    for key in ("unfreeze", "lp_epochs", "epochs", "lr", "augment"):
        if hp.get(key) is not None:
            value = hp[key]
            parts += [f"--{key.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    if image_size != default_size:
        parts += ["--image-size", str(image_size)]
    return shlex.join(parts)


def apply_to_config(cfg: RunConfig, rec: Recommendation) -> RunConfig:
    """``cfg`` with the recommendation filled in wherever the user kept the default:
    a flag the user gave (any value other than RunConfig's default) wins."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    changes: dict[str, Any] = {}
    for key, value in rec.run_flags().items():
        if key == "strategy" or getattr(cfg, key) == defaults[key]:
            changes[key] = value
    return cfg.replace(**changes)


def resolve_auto(cfg: RunConfig, splits: DataSplits, model: Backbone, run_dir: Path, *,
                 resume: bool = False, write: bool = True, budget_minutes: float | None = None,
                 features: FeatureSource | None = None) -> tuple[RunConfig, Recommendation]:
    """``--strategy auto``: the recommendation (reused from the run folder on --resume,
    so the run continues the strategy its checkpoints were made with), applied to ``cfg``
    and saved as ``run_dir/recommendation.json``. ``budget_minutes``: what is left of the
    run's budget, the recommender's own measuring included. ``features``: the run's own
    extraction, for the probes at larger sizes (``recommend``)."""
    saved = Path(run_dir) / "recommendation.json"
    if resume and saved.is_file():
        rec = Recommendation.from_json(json.loads(saved.read_text()))
        log.info("Strategy auto: reusing %s (%s).", saved, rec.strategy)
    else:
        # recommend() probes train + val only: choosing a strategy is model selection.
        rec = recommend(splits, cfg.backbone, seed=cfg.seed, image_size=cfg.image_size,
                        batch_size=cfg.batch_size, model=model, data_label=cfg.data,
                        weights=cfg.weights, budget_minutes=budget_minutes, features=features)
        log.info("Strategy auto: %s (%s data, %s to the pretraining data). %s", rec.strategy,
                 rec.cell["amount"], rec.cell["similarity"], " ".join(rec.reasons))
        if write:
            atomic_write_json(saved, rec.to_json())
    return apply_to_config(cfg, rec), rec


__all__ = ["FeatureSource", "apply_to_config", "build_command", "recommend", "resolve_auto"]

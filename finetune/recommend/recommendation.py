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
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data import DataSplits, discover, resolve_data
from ..io import atomic_write_json
from ..models import Backbone, create_backbone
from .decide import Decision, Thresholds, decide
from .evidence import evidence
from .plan import Plan, plan_hyperparameters
from .result import Recommendation
from .signals import amount_stats, measure

log = logging.getLogger("finetune")


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
) -> Recommendation:
    """Measure ``data`` with ``backbone``'s pretrained checkpoint and recommend a strategy.

    ``data`` is what ``finetune run --data`` takes (a folder, a CSV, ``builtin:NAME``) or
    a ``DataSplits``. It is split exactly as ``finetune run`` would split it (same seed and
    fractions), and the probes never see the test split. ``model`` reuses an already
    built backbone with its pretrained weights (any head).
    """
    start = time.perf_counter()
    thr = thresholds or Thresholds()
    splits, label = _splits(data, data_label, seed=seed, val_fraction=val_fraction,
                            test_fraction=test_fraction)
    model = _pretrained(backbone, weights, model)
    size = image_size or model.pretrained_cfg.image_size

    amount = _amount(splits, seed=seed)
    signals = measure(model, splits.train + splits.val, num_classes=len(splits.classes),
                      image_size=size, max_images=max_images, batch_size=batch_size, seed=seed)
    amount["grey_fraction"] = signals["grey_fraction"]
    decision = decide(signals, amount, thr)
    plan = plan_hyperparameters(decision, signals, amount, model=model, image_size=size,
                                batch_size=batch_size, budget_minutes=budget_minutes)
    command = build_command(label, backbone, plan, image_size=size,
                            default_size=model.pretrained_cfg.image_size, weights=weights)
    return Recommendation(
        strategy=plan.strategy,
        cell={"similarity": decision.similarity, "amount": decision.amount},
        stats=amount,
        similarity=_similarity(decision, signals),
        hyperparameters=plan.hyperparameters,
        command=command,
        evidence=evidence(signals, amount, decision, plan, thr),
        thresholds=thr.to_json(),
        reasons=decision.reasons + plan.reasons,
        warnings=decision.warnings + plan.warnings + _skipped_warning(signals),
        backbone=getattr(model, "variant", backbone),
        data=label,
        estimated_minutes=plan.estimated_minutes,
        seconds=time.perf_counter() - start,
    )


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
                 resume: bool = False, write: bool = True) -> tuple[RunConfig, Recommendation]:
    """``--strategy auto``: the recommendation (reused from the run folder on --resume,
    so the run continues the strategy its checkpoints were made with), applied to ``cfg``
    and saved as ``run_dir/recommendation.json``."""
    saved = Path(run_dir) / "recommendation.json"
    if resume and saved.is_file():
        rec = Recommendation.from_json(json.loads(saved.read_text()))
        log.info("Strategy auto: reusing %s (%s).", saved, rec.strategy)
    else:
        # recommend() probes train + val only: choosing a strategy is model selection.
        rec = recommend(splits, cfg.backbone, seed=cfg.seed, image_size=cfg.image_size,
                        batch_size=cfg.batch_size, model=model, data_label=cfg.data,
                        weights=cfg.weights)
        log.info("Strategy auto: %s (%s data, %s to the pretraining data). %s", rec.strategy,
                 rec.cell["amount"], rec.cell["similarity"], " ".join(rec.reasons))
        if write:
            atomic_write_json(saved, rec.to_json())
    return apply_to_config(cfg, rec), rec


__all__ = ["apply_to_config", "build_command", "recommend", "resolve_auto"]

"""``finetune run``: configuration in, run folder out (its layout: finetune/run_folder.py).

Prepare (data, splits, backbone, the strategy's phases), train each phase on Lightning,
then evaluate the best-on-validation weights and write metrics and the report.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import RunConfig, save_config
from ..data import DataSplits, FinetuneDataModule, discover, load_splits, resolve_data, save_splits
from ..evaluation import classification_metrics, write_report
from ..io import atomic_write_json
from ..models import Backbone, load_state_dict_file, load_weights
from ..recommend import resolve_auto
from ..run_folder import RunError, build_model, check_run_dir, default_run_dir, load_run_model
from ..strategies import Phase, plan
from .checkpointing import check_resume_data, resume_start, saved_history
from .distributed import global_rank
from .feature_cache import feature_splits
from .features import predict_probs
from .head_fit import HeadFit, check_linear_head, fit_logistic_head
from .module import FinetuneModule, count_trainable
from .trainer import build_trainer, eval_batch_size_for, num_workers, quiet_lightning, select_device

log = logging.getLogger("finetune")

# Above this max/min ratio of class counts, auto mode weights the loss by class.
IMBALANCE_THRESHOLD = 3.0


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # empty on DDP ranks other than 0, which evaluate and write nothing
    is_global_zero: bool = True


def class_weights_for(cfg: RunConfig, counts: list[int]) -> torch.Tensor | None:
    """sklearn's "balanced" weights n / (C * count_c), when asked or when imbalance is high."""
    present = [c for c in counts if c > 0]
    ratio = max(present) / min(present)
    if cfg.class_weights == "off" or (cfg.class_weights == "auto" and ratio <= IMBALANCE_THRESHOLD):
        return None
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    weights = counts_t.sum() / (len(counts) * counts_t)
    log.info("Class imbalance %.1f:1 -> class-weighted loss (weights %.2f..%.2f).",
             ratio, weights.min().item(), weights.max().item())
    return weights


def _fit_head_lbfgs(module: FinetuneModule, cached: dict[str, Dataset], cfg: RunConfig,
                    phase: Phase, ckpt_dir: Path, *, has_val: bool,
                    class_weights: torch.Tensor | None) -> HeadFit:
    """``--head-fit lbfgs``: the head as a logistic regression, C chosen on val; then
    best.ckpt / last.ckpt written by Lightning as a trained phase would write them."""
    model = module.model
    check_linear_head(model.get_classifier())
    fit = fit_logistic_head(cached["train"], cached["val"] if has_val else None,
                            num_classes=len(module.classes), class_weights=class_weights,
                            label_smoothing=cfg.label_smoothing)
    fit.apply_to(model.get_classifier())
    chosen = fit.best_row()
    module.history = [{"epoch": 0, "phase": phase.name, "lr": None, "C": fit.C,
                       **{k: chosen[k] for k in ("train_loss", "train_accuracy", "val_loss",
                                                 "val_accuracy") if k in chosen}}]
    with quiet_lightning():
        trainer, _ = build_trainer(cfg, phase, ckpt_dir, has_val=has_val, progress=False)
        # Nothing to fit step by step: attach the module as fit() would, so that Lightning
        # (its CheckpointIO, rank-0-only saving) writes the checkpoints in the usual format.
        trainer.strategy.connect(module)
        module.trainer = trainer
        for name in ("best.ckpt", "last.ckpt"):
            trainer.save_checkpoint(ckpt_dir / name)
    return fit


# ---------------------------------------------------------------------- the run
def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> RunResult:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Under DDP every rank runs this function; only global rank 0 writes the run folder,
    # evaluates and reports. The others split the data identically (same seed) and train.
    rank0 = global_rank() == 0
    progress = progress and rank0
    spawn = cfg.distributed == "ddp_spawn"
    run_dir = Path(cfg.output) if cfg.output else default_run_dir(cfg)
    if rank0:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    data_path = resolve_data(cfg.data)

    splits_path = run_dir / "splits.json"
    if resume and splits_path.is_file():
        splits = load_splits(splits_path)
        check_resume_data(splits, data_path)  # classes changed: explained, never re-indexed
    else:
        splits = discover(data_path, val_fraction=cfg.val_fraction,
                          test_fraction=cfg.test_fraction, seed=cfg.seed)
    classes = splits.classes
    log.info("Data %s: %d classes; train %d, val %d, test %d images; %d files skipped.",
             data_path, len(classes), len(splits.train), len(splits.val), len(splits.test),
             len(splits.skipped))
    if not splits.train:
        raise RunError(f"No training images in '{data_path}'.")

    model = build_model(cfg, len(classes))
    weights_source = model.weights_source  # loading the best checkpoint later overwrites it
    log.info("Backbone %s: weights from %s.", model.variant, weights_source)
    recommended = cfg.strategy == "auto"
    if recommended:
        # The recommender measures the checkpoint on train + val and picks the strategy;
        # flags the user gave win. recommendation.json goes to the run folder.
        cfg, _ = resolve_auto(cfg, splits, model, run_dir, resume=resume, write=rank0)
    phases = plan(cfg, model)
    image_size = cfg.image_size or model.pretrained_cfg.image_size
    _check_image_size(model, image_size)

    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_splits(splits, splits_path)
        save_config(cfg, run_dir / "config.yaml")

    class_weights = class_weights_for(cfg, splits.counts("train"))
    device = select_device(cfg)
    if device.type == "cuda":
        # NHWC lets cuDNN use tensor-core kernels without layout transposes (bf16 mixed).
        model = model.to(memory_format=torch.channels_last)
    workers = num_workers(cfg)
    has_val = bool(splits.val)

    history: list[dict] = []
    cached: dict[str, Dataset] | None = None
    cache_hits: dict[str, bool] = {}
    head_fits: list[dict] = []
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's; Lightning's after a fit
    extraction_s = 0.0
    images_trained = 0
    start = time.perf_counter()
    module: FinetuneModule | None = None
    ckpt_dirs = [run_dir / "checkpoints" if i == len(phases) - 1 else run_dir / "checkpoints" / p.name
                 for i, p in enumerate(phases)]
    # A resume continues the latest phase with a checkpoint; earlier phases finished (lp-ft's
    # probe is not redone: the later checkpoint holds the whole model).
    first_phase = resume_start(ckpt_dirs) if resume else 0
    for i, phase in enumerate(phases):
        ckpt_dir = ckpt_dirs[i]
        if i < first_phase:
            log.info("Phase '%s' finished before the interruption; not redone.", phase.name)
            history.extend(saved_history(ckpt_dir))
            continue
        dm = FinetuneDataModule(
            splits, model.pretrained_cfg, image_size=image_size, augment=phase.augment,
            batch_size=cfg.batch_size, eval_batch_size=eval_batch_size_for(cfg.batch_size, device),
            num_workers=workers, seed=cfg.seed, hflip=cfg.hflip,
            normalize_on_device=device.type == "cuda",
            # A head on cached features never reads the images again: nothing to cache.
            image_cache=cfg.image_cache and not phase.feature_cache,
            image_cache_dir=cfg.image_cache_dir,
        )
        dm.setup("fit")
        if phase.feature_cache:
            if cached is None:
                cached, extraction_s, cache_hits = feature_splits(model, dm, cfg, device, progress)
            # ddp_spawn pickles the loaders into new processes, which a torch.Generator
            # cannot enter; there Lightning's DistributedSampler shuffles from the seed anyway.
            generator = None if spawn else torch.Generator().manual_seed(cfg.seed)
            train_loader = DataLoader(cached["train"], batch_size=cfg.batch_size, shuffle=True,
                                      generator=generator)
            val_loader = DataLoader(cached["val"], batch_size=1024)
        else:
            train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()

        module = FinetuneModule(model, phase, cfg, classes=classes, class_weights=class_weights)
        if phase.feature_cache and cfg.head_fit == "lbfgs":
            fit = _fit_head_lbfgs(module, cached, cfg, phase, ckpt_dir, has_val=has_val,
                                  class_weights=class_weights)
            head_fits.append({"phase": phase.name, "method": "lbfgs", "C": fit.C,
                              "time_s": round(fit.time_s, 3), "sweep": fit.sweep})
            images_trained += len(cached["train"])  # each through the backbone once
            history.extend(module.history)
            continue
        log.info("%s", phase.describe(model))
        if cfg.compile and not phase.feature_cache:
            # In place (nn.Module.compile): parameter names, and so checkpoints and
            # exports, stay those of the plain model. Compiled once, on first use.
            model.compile()
        ckpt_path = ckpt_dir / "last.ckpt"
        resume_from = str(ckpt_path) if resume and ckpt_path.is_file() else None
        if resume_from:
            log.info("Resuming phase '%s' from %s.", phase.name, ckpt_path)
        rows_before = len(saved_history(ckpt_dir)) if resume_from else 0
        with quiet_lightning():
            trainer, checkpoint = build_trainer(cfg, phase, ckpt_dir, has_val=has_val, progress=progress)
            if spawn and not phase.feature_cache:
                # Each spawned process builds its own loaders (their samplers hold a generator).
                trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
            else:
                trainer.fit(module, train_loader, val_loader if has_val else None,
                            ckpt_path=resume_from)
        if spawn:
            # The fit ran in child processes: its history comes back through last.ckpt.
            module.history = saved_history(ckpt_dir)
            epochs = len(module.history) - rows_before
            images_trained += epochs * len(train_loader.dataset)
        else:
            # Each DDP rank counted its own shard; the shards are equal (DistributedSampler).
            images_trained += module.images_seen * trainer.world_size
        world_size = trainer.world_size
        history.extend(module.history)
        best = checkpoint.best_model_path if has_val and checkpoint.best_model_path else None
        if best:
            # Evaluate (and start the next phase from) the weights that were best on val.
            load_weights(model, load_state_dict_file(best), f"checkpoint {best}")
    train_time = time.perf_counter() - start

    assert module is not None
    if not rank0:
        return RunResult(run_dir=run_dir, metrics={}, is_global_zero=False)
    metrics = _evaluate(module, model, cfg, splits, dm, cached, device, progress)
    metrics.update(
        backbone=model.variant,
        strategy=cfg.strategy,
        num_classes=len(classes),
        classes=classes,
        trainable_params=count_trainable(model),
        total_params=sum(p.numel() for p in model.parameters()),
        train_time_s=round(train_time, 3),
        feature_extraction_s=round(extraction_s, 3),
        images_per_s=round(images_trained / train_time, 2) if train_time > 0 else 0.0,
        image_size=image_size,
        weights_source=weights_source,
        phases=[{"name": p.name, "epochs": p.epochs, "lr": p.lr, "unfreeze": p.unfreeze,
                 "augment": p.augment, "feature_cache": p.feature_cache} for p in phases],
        data={"path": str(data_path), "train_counts": splits.counts("train")},
        split_sizes={"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        class_weighted_loss=class_weights is not None,
        skipped_files=list(splits.skipped),
    )
    if recommended:
        metrics["recommended_by"] = "auto"
    if cache_hits:
        metrics["feature_cache"] = {"hits": cache_hits, "extraction_s": round(extraction_s, 3)}
    if head_fits:
        metrics["head_fit"] = head_fits[-1] if len(head_fits) == 1 else head_fits
    if cfg.distributed != "auto" or cfg.num_nodes > 1:
        metrics["distributed"] = {"strategy": cfg.distributed, "num_nodes": cfg.num_nodes,
                                  "world_size": world_size}
    metrics = _ordered(metrics)
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir, metrics, history, classes, config=cfg.to_dict())
    return RunResult(run_dir=run_dir, metrics=metrics)


def _evaluate(module, model, cfg, splits: DataSplits, dm, cached, device, progress) -> dict:
    """Val and test metrics of the final (best-on-val) weights."""
    out: dict[str, dict] = {}
    for split in ("val", "test"):
        samples = getattr(splits, split)
        if not samples:
            out[split] = None
            continue
        if cached is not None and module.on_features:
            loader = DataLoader(cached[split], batch_size=1024)
        else:
            loader = dm.eval_dataloader(split)
        probs, labels = predict_probs(module, loader, device=device, desc=f"evaluate {split}",
                                      progress=progress)
        m = classification_metrics(labels.numpy(), probs.numpy(), splits.classes)
        if split == "val":
            m = {k: m[k] for k in ("accuracy", "macro_f1", "loss", "num_samples")}
        out[split] = m
    return out


def _ordered(metrics: dict) -> dict:
    """DESIGN.md's keys first, in its order; extras after."""
    first = ["backbone", "strategy", "num_classes", "trainable_params", "total_params",
             "train_time_s", "images_per_s", "val", "test", "skipped_files"]
    return {**{k: metrics[k] for k in first}, **{k: v for k, v in metrics.items() if k not in first}}


def _check_image_size(model: Backbone, image_size: int) -> None:
    minimum = 32
    if image_size < minimum:
        raise RunError(
            f"--image-size {image_size} is too small for '{model.variant}' (it downsamples "
            f"32x); use at least {minimum}, ideally its pretrained size "
            f"{model.pretrained_cfg.image_size}."
        )


# ---------------------------------------------------------------------- evaluate
def evaluate_run(run_dir: Path, data: str | None = None, *, progress: bool = True) -> dict:
    """Re-evaluate a run's model on its test split, or on every image of ``data``."""
    model, cfg, splits = load_run_model(run_dir)
    if data is not None:
        new = discover(resolve_data(data), val_fraction=0.0, test_fraction=0.0, seed=cfg.seed)
        unknown = sorted(set(new.classes) - set(splits.classes))
        if unknown:
            raise RunError(
                f"'{data}' has classes the run never saw: {', '.join(unknown)}. The run knows "
                f"{', '.join(splits.classes)}; evaluate on folders named after those."
            )
        index = {c: i for i, c in enumerate(splits.classes)}
        samples = [(p, index[new.classes[y]]) for p, y in new.train]
        splits = DataSplits(classes=splits.classes, train=[], val=[], test=samples,
                            skipped=new.skipped, source=new.source)
    image_size = cfg.image_size or model.pretrained_cfg.image_size
    device = select_device(cfg)
    dm = FinetuneDataModule(splits, model.pretrained_cfg, image_size=image_size, augment="none",
                            batch_size=cfg.batch_size,
                            eval_batch_size=eval_batch_size_for(cfg.batch_size, device),
                            num_workers=num_workers(cfg))
    dm.setup("test")
    probs, labels = predict_probs(model, dm.eval_dataloader("test"), device=device,
                                  desc="evaluate", progress=progress)
    metrics = classification_metrics(labels.numpy(), probs.numpy(), splits.classes)
    metrics["num_samples"] = int(len(labels))
    metrics["skipped_files"] = list(splits.skipped)
    metrics["data"] = data or "test split"
    return metrics


__all__ = ["RunResult", "evaluate_run", "run"]

"""``finetune run``: configuration in, run folder out (its layout: finetune/run_folder.py).

    result = run(resolve_config(data="my_images", strategy="lp-ft"))

The run is three steps, each a function below:

1. ``prepare``: the data split, the backbone with its weights, ``auto`` resolved into a
   strategy, the strategy's phases; the run folder gets ``config.yaml`` and ``splits.json``.
2. ``train_phase``, once per phase: a head on cached features (fitted with AdamW epochs
   or L-BFGS), or stages of the backbone on Lightning; each phase starts from the weights
   that were best on validation in the one before.
3. ``finish``: validation and test metrics of the best weights, ``metrics.json`` and the
   report.

Under DDP every rank runs all three; only global rank 0 writes the run folder, evaluates
and reports. The other ranks split the data identically (same seed) and train.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from ..config import RunConfig, save_config
from ..data import DataSplits, FinetuneDataModule, discover, load_splits, resolve_data, save_splits
from ..data.datamodule import epoch_loader
from ..evaluation import classification_metrics, write_report
from ..evaluation.gallery import TestPredictions
from ..io import atomic_write_json, writing
from ..models import Backbone, load_state_dict_file, load_weights
from ..recommend import FeatureSource, resolve_auto
from ..run_folder import (
    CHECKPOINTS,
    CONFIG,
    METRICS,
    SPLITS,
    RunError,
    build_model,
    check_run_dir,
    default_run_dir,
    lock_run_dir,
)
from ..strategies import Phase, check_strategy, plan
from ..strategies.linear import head_fit_for
from .checkpointing import check_resume_data, resume_start, saved_history
from .distributed import global_rank
from .feature_cache import feature_splits
from .features import predict_probs
from .head_fit import check_linear_head, fit_logistic_head, refit_logistic_head
from .interrupt import (
    RunInterrupted,
    after_requeue,
    at_evaluation,
    at_phase,
    interruptible,
    within_fit,
)
from .lr_finder import LrFindResult, find_lr, saved_lrs, write_result
from .module import FinetuneModule, count_trainable
from .tracking import RunTracking, check_trackers
from .trainer import (
    build_trainer,
    early_stop_in,
    eval_batch_size_for,
    num_workers,
    quiet_lightning,
    select_device,
)

log = logging.getLogger("finetune")

# --budget: the share of the budget kept for evaluating val and test after training.
EVAL_RESERVE = 0.05
# Above this max/min ratio of class counts, class_weights=auto weights the loss by class.
IMBALANCE_THRESHOLD = 3.0
# Below this input size the 32x-downsampling backbones have no spatial extent left.
MIN_IMAGE_SIZE = 32
# docs/design.md's metrics.json keys, in its order; the extras follow.
_METRICS_FIRST = ("backbone", "strategy", "num_classes", "trainable_params", "total_params",
                  "train_time_s", "images_per_s", "val", "test", "skipped_files")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # empty on DDP ranks other than 0, which evaluate and write nothing
    is_global_zero: bool = True


@dataclass
class Prepared:
    """What ``prepare`` settled before any training: fixed for the rest of the run."""

    cfg: RunConfig  # with ``auto`` resolved into the recommended strategy
    run_dir: Path
    data_path: Path
    splits: DataSplits
    model: Backbone
    weights_source: str  # where the pretrained weights came from, before any checkpoint
    phases: list[Phase]
    image_size: int
    class_weights: torch.Tensor | None
    device: torch.device
    rank0: bool
    recommended: bool  # the strategy came from ``auto``
    lock: FileLock | None = None  # the run folder's, held by rank 0 until ``run`` returns
    deadline: float | None = None  # --budget: the time.monotonic() by which training stops

    def checkpoint_dir(self, index: int) -> Path:
        """The final phase's checkpoints in ``checkpoints/``, earlier ones in a sub-folder."""
        root = self.run_dir / CHECKPOINTS
        return root if index == len(self.phases) - 1 else root / self.phases[index].name


@dataclass
class Progress:
    """What the phases accumulate for ``metrics.json``."""

    world_size: int
    history: list[dict] = field(default_factory=list)  # one row per epoch, every phase
    head_fits: list[dict] = field(default_factory=list)  # L-BFGS fits of cached-feature heads
    # The val metrics of a head refit on train + val: those of its selection fit, which
    # had not seen val (the refit head's own val scores would be training scores).
    selection_val: dict | None = None
    images_trained: int = 0
    features: dict[str, Dataset] | None = None  # pooled features per split, once computed
    extraction_s: float = 0.0
    cache_hits: dict[str, bool] = field(default_factory=dict)
    module: FinetuneModule | None = None  # the last phase's module
    datamodule: FinetuneDataModule | None = None
    test_probs: torch.Tensor | None = None  # (N, C) of the evaluated weights: the top losses
    tracking: RunTracking | None = None  # the run's loggers, shared by its phases
    early_stops: list[dict] = field(default_factory=list)  # phases EarlyStopping ended
    budget_stops: list[str] = field(default_factory=list)  # phases --budget's max_time ended


# ---------------------------------------------------------------------- the run
def run(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, started: float | None = None) -> RunResult:
    """Train ``cfg`` into its run folder and evaluate it; ``resume`` continues the latest
    checkpoint there, ``overwrite`` replaces an earlier run. ``started`` is the
    ``time.monotonic()`` that ``--budget`` counts from (default: this call); the CLI passes
    its process's start, so that starting Python and importing torch count too."""
    started = time.monotonic() if started is None else started
    check_strategy(cfg.strategy)  # a misspelt recipe fails here, before anything is written
    check_trackers(cfg)  # so does a logger whose package is missing
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.output) if cfg.output else default_run_dir(cfg)
    resume, overwrite = after_requeue(run_dir, resume=resume, overwrite=overwrite)
    # A signal from here on ends the run as RunInterrupted, naming where and how to go on.
    with interruptible(run_dir):
        prep = prepare(cfg, resume=resume, overwrite=overwrite, started=started)
        try:
            return _train_and_finish(prep, resume=resume, progress=progress)
        finally:
            if prep.lock is not None:
                prep.lock.release()


def _train_and_finish(prep: Prepared, *, resume: bool, progress: bool) -> RunResult:
    """Steps 2 and 3 of ``run``, while the run folder's lock is held."""
    progress = progress and prep.rank0
    # One run in each tracker, whichever phases and processes it takes (training/tracking.py).
    tracking = RunTracking.create(prep.cfg, prep.run_dir, resume=resume, write=prep.rank0)
    state = Progress(world_size=int(os.environ.get("WORLD_SIZE", 1)), tracking=tracking)  # torchrun's
    start = time.perf_counter()
    # A resume continues the latest phase with a checkpoint; earlier phases finished (lp-ft's
    # probe is not redone: the later checkpoint holds the whole model).
    ckpt_dirs = [prep.checkpoint_dir(i) for i in range(len(prep.phases))]
    first_phase = resume_start(ckpt_dirs) if resume else 0
    if resume and prep.cfg.lr_find:  # phases keep the rates they found before the interruption
        found = saved_lrs(prep.run_dir)
        prep.phases[:] = [dataclasses.replace(p, lr=found.get(p.name, p.lr)) for p in prep.phases]
    try:
        for i, phase in enumerate(prep.phases):
            if i < first_phase:
                log.info("Phase '%s' finished before the interruption; not redone.", phase.name)
                state.history.extend(saved_history(ckpt_dirs[i]))
                _after_phase(prep, phase, ckpt_dirs[i], state)
                continue
            at_phase(phase.name, i, len(prep.phases))
            train_phase(prep, phase, ckpt_dirs[i], state, resume=resume, progress=progress)
        train_time = time.perf_counter() - start
        if not prep.rank0:
            tracking.close("success")
            return RunResult(run_dir=prep.run_dir, metrics={}, is_global_zero=False)
        at_evaluation()
        metrics = finish(prep, state, train_time, progress=progress)
    except BaseException as err:
        # MLflow's run statuses: a signal that stopped the run (--resume continues it) is not
        # a failure of the run.
        tracking.close("KILLED" if isinstance(err, RunInterrupted) else "failed")
        raise
    tracking.close("success")
    return RunResult(run_dir=prep.run_dir, metrics=metrics)


def _after_phase(prep: Prepared, phase: Phase, ckpt_dir: Path, state: Progress) -> None:
    """The trackers' axes past a finished phase; its early stop, if it had one (rank 0:
    the others log and report nothing)."""
    if not prep.rank0:
        return
    state.tracking.advance_past(ckpt_dir)
    stop = early_stop_in(ckpt_dir, phase) if prep.cfg.patience and prep.splits.val else None
    if stop is not None:
        state.early_stops.append(stop)
        log.info("Phase '%s' stopped early at epoch %d of %d: %s.", phase.name,
                 stop["stopped_epoch"], stop["max_epochs"], stop["reason"])


# ---------------------------------------------------------------------- 1. prepare
def prepare(cfg: RunConfig, *, resume: bool, overwrite: bool,
            started: float | None = None) -> Prepared:
    """Lock and check the run folder, split the data, build the backbone, resolve ``auto``,
    plan the phases, and write ``config.yaml`` and ``splits.json`` (rank 0)."""
    run_dir = Path(cfg.output) if cfg.output else default_run_dir(cfg)
    # Before anything is written: a second run on the folder is refused here, at once.
    lock = lock_run_dir(run_dir) if global_rank() == 0 else None
    try:
        return _prepare(cfg, run_dir, lock, resume=resume, overwrite=overwrite,
                        started=time.monotonic() if started is None else started)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _prepare(cfg: RunConfig, run_dir: Path, lock: FileLock | None, *, resume: bool,
             overwrite: bool, started: float) -> Prepared:
    rank0 = global_rank() == 0
    deadline = started + 60 * cfg.budget * (1 - EVAL_RESERVE) if cfg.budget else None
    if rank0:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    data_path = resolve_data(cfg.data)
    splits = _splits(cfg, data_path, run_dir / SPLITS, resume=resume)
    if cfg.patience and not splits.val:
        raise RunError(f"--patience {cfg.patience} stops on validation loss, but '{data_path}' "
                       f"gives no validation images: set val_fraction above 0 (or add a val/ "
                       f"folder), or leave --patience out.")

    model = build_model(cfg, len(splits.classes))
    weights_source = model.weights_source  # loading the best checkpoint later overwrites it
    log.info("Backbone %s: weights from %s.", model.variant, weights_source)
    recommended = cfg.strategy == "auto"
    if recommended:
        # The recommender measures the checkpoint on train + val and picks the strategy;
        # flags the user gave win. recommendation.json goes to the run folder.
        cfg, _ = resolve_auto(cfg, splits, model, run_dir, resume=resume, write=rank0,
                              budget_minutes=_time_left(deadline) / 60 if deadline else None,
                              features=_train_val_features(cfg, splits, model))
    phases = plan(cfg, model)
    image_size = cfg.image_size or model.pretrained_cfg.image_size
    _check_image_size(model, image_size)

    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_splits(splits, run_dir / SPLITS)
        save_config(cfg, run_dir / CONFIG)
    class_weights = class_weights_for(cfg, splits.counts("train"))
    device = select_device(cfg)
    if device.type == "cuda":
        # NHWC lets cuDNN use tensor-core kernels without layout transposes (bf16 mixed).
        model = model.to(memory_format=torch.channels_last)
    return Prepared(cfg=cfg, run_dir=run_dir, data_path=data_path, splits=splits, model=model,
                    weights_source=weights_source, phases=phases, image_size=image_size,
                    class_weights=class_weights, device=device, rank0=rank0,
                    recommended=recommended, lock=lock, deadline=deadline)


def _train_val_features(cfg: RunConfig, splits: DataSplits, model: Backbone) -> FeatureSource | None:
    """For ``--strategy auto``: the recommender's probes at larger sizes extract train and
    val through this run's feature cache, so that a head on cached features (linear,
    lp-ft's probe) at the size chosen finds them there. CPU only: a GPU run's features
    (bf16) are other cache entries, and the recommender's passes run on the CPU."""
    if select_device(cfg).type != "cpu":
        return None
    cpu = torch.device("cpu")

    def train_val(image_size: int) -> tuple[np.ndarray, list[str]]:
        dm = _make_datamodule(cfg, splits, model, image_size, cpu, augment="none", image_cache=False)
        feats, _, _ = feature_splits(model, dm, cfg, cpu, progress=False, names=("train", "val"))
        arrays = [np.concatenate([f.numpy() for f, _ in feats[s].chunks()]) for s in ("train", "val")
                  if len(feats[s])]
        return np.concatenate(arrays), [path for path, _ in splits.train + splits.val]

    return train_val


def _splits(cfg: RunConfig, data_path: Path, splits_path: Path, *, resume: bool) -> DataSplits:
    """The split saved in the run folder on ``--resume``, else a fresh seeded one."""
    if resume and splits_path.is_file():
        splits = load_splits(splits_path)
        check_resume_data(splits, data_path)  # classes changed: explained, never re-indexed
    else:
        splits = discover(data_path, val_fraction=cfg.val_fraction,
                          test_fraction=cfg.test_fraction, seed=cfg.seed)
    log.info("Data %s: %d classes; train %d, val %d, test %d images; %d files skipped.",
             data_path, len(splits.classes), len(splits.train), len(splits.val),
             len(splits.test), len(splits.skipped))
    if not splits.train:
        raise RunError(f"No training images in '{data_path}'.")
    return splits


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


def _check_image_size(model: Backbone, image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise RunError(
            f"--image-size {image_size} is too small for '{model.variant}' (it downsamples "
            f"32x); use at least {MIN_IMAGE_SIZE}, ideally its pretrained size "
            f"{model.pretrained_cfg.image_size}."
        )


# ---------------------------------------------------------------------- 2. train
def train_phase(prep: Prepared, phase: Phase, ckpt_dir: Path, state: Progress, *,
                resume: bool, progress: bool) -> None:
    """Train one phase into ``ckpt_dir`` and leave the model at its best-on-val weights."""
    cfg, model = prep.cfg, prep.model
    phase_data(prep, phase, state, progress=progress)
    if cfg.lr_find and phase.feature_cache and head_fit_for(cfg) == "lbfgs":
        log.warning("--lr find: phase '%s' fits its head by L-BFGS, which has no learning "
                    "rate to find (--head-fit sgd trains it at one).", phase.name)
    elif cfg.lr_find:
        phase = _at_found_lr(prep, phase, state, resume=resume, progress=progress)
    module = FinetuneModule(model, phase, cfg, classes=prep.splits.classes,
                            class_weights=prep.class_weights)
    state.module = module
    if phase.feature_cache and head_fit_for(cfg) == "lbfgs":
        _fit_head_lbfgs(prep, phase, ckpt_dir, state)
        return
    log.info("%s", phase.describe(model))
    if cfg.compile and not phase.feature_cache:
        # In place (nn.Module.compile): parameter names, and so checkpoints and
        # exports, stay those of the plain model. Compiled once, on first use.
        model.compile()
    best = _fit(prep, phase, ckpt_dir, state, resume=resume, progress=progress)
    if best:
        # Evaluate (and start the next phase from) the weights that were best on val.
        load_weights(model, load_state_dict_file(best), f"checkpoint {best}")


def phase_data(prep: Prepared, phase: Phase, state: Progress, *, progress: bool) -> None:
    """The phase's datamodule and, for a cached-feature phase, the features (once a run)."""
    state.datamodule = _datamodule(prep, phase)
    if phase.feature_cache and state.features is None:
        state.features, state.extraction_s, state.cache_hits = feature_splits(
            prep.model, state.datamodule, prep.cfg, prep.device, progress)


def find_phase_lr(prep: Prepared, phase: Phase, state: Progress, *,
                  progress: bool = True) -> LrFindResult:
    """Lightning's range test of ``phase`` on the batches it trains on (after ``phase_data``)."""
    cfg = prep.cfg
    if state.world_size > 1 or cfg.distributed != "auto" or cfg.num_nodes > 1:
        raise RunError("--lr find sweeps on one device: run `finetune lr-find` with the same "
                       "flags on one machine first, then this run with --lr <its suggestion>.")
    train, _ = _loaders(prep, phase, state)
    return find_lr(prep.model, phase, cfg, train, classes=prep.splits.classes,
                   class_weights=prep.class_weights, progress=progress)


def _at_found_lr(prep: Prepared, phase: Phase, state: Progress, *, resume: bool,
                 progress: bool) -> Phase:
    """``--lr find``: ``phase`` at the range test's rate, found now or, on a resume, read
    back from the run folder's lr_find.json; ``prep.phases`` records it for metrics.json."""
    lr = saved_lrs(prep.run_dir).get(phase.name) if resume else None
    if lr is None:
        result = find_phase_lr(prep, phase, state, progress=progress)
        if prep.rank0:
            write_result(prep.run_dir, result)
        log.info("Phase '%s': lr %g, %s.", phase.name, result.suggestion, result.reason)
        lr = result.suggestion
    found = dataclasses.replace(phase, lr=lr)
    prep.phases[prep.phases.index(phase)] = found
    return found


def _datamodule(prep: Prepared, phase: Phase) -> FinetuneDataModule:
    # A head on cached features never reads the images again: nothing to cache.
    return _make_datamodule(prep.cfg, prep.splits, prep.model, prep.image_size, prep.device,
                            augment=phase.augment,
                            image_cache=prep.cfg.image_cache and not phase.feature_cache)


def _make_datamodule(cfg: RunConfig, splits: DataSplits, model: Backbone, image_size: int,
                     device: torch.device, *, augment: str, image_cache: bool) -> FinetuneDataModule:
    """The run's datamodule at ``image_size``, set up: the one construction that the
    phases and the recommender's feature extraction share, so that both preprocess alike
    (and meet in the feature cache)."""
    dm = FinetuneDataModule(
        splits, model.pretrained_cfg, image_size=image_size, augment=augment,
        batch_size=cfg.batch_size, eval_batch_size=eval_batch_size_for(cfg.batch_size, device),
        num_workers=num_workers(cfg), seed=cfg.seed, hflip=cfg.hflip,
        normalize_on_device=device.type == "cuda",
        image_cache=image_cache, image_cache_dir=cfg.image_cache_dir,
    )
    dm.setup("fit")
    return dm


def _loaders(prep: Prepared, phase: Phase, state: Progress) -> tuple[DataLoader, DataLoader]:
    """Batches of cached features for a head-only phase, else augmented images."""
    if not phase.feature_cache:
        return state.datamodule.train_dataloader(), state.datamodule.val_dataloader()
    # ddp_spawn pickles the loaders into new processes, which a torch.Generator cannot
    # enter; there Lightning's DistributedSampler shuffles from the seed anyway.
    spawn = prep.cfg.distributed == "ddp_spawn"
    generator = None if spawn else torch.Generator().manual_seed(prep.cfg.seed)
    # Shuffled by (seed, epoch): a resumed epoch gets the uninterrupted run's order.
    train = epoch_loader(state.features["train"], batch_size=prep.cfg.batch_size,
                         seed=prep.cfg.seed, generator=generator)
    return train, DataLoader(state.features["val"], batch_size=1024)


def _fit(prep: Prepared, phase: Phase, ckpt_dir: Path, state: Progress, *, resume: bool,
         progress: bool) -> str | None:
    """Lightning's fit of one phase (resumed from its last.ckpt where there is one);
    returns the best-on-val checkpoint, if validation ran."""
    module, has_val = state.module, bool(prep.splits.val)
    spawn = prep.cfg.distributed == "ddp_spawn"
    train_loader, val_loader = _loaders(prep, phase, state)
    ckpt_path = ckpt_dir / "last.ckpt"
    resume_from = str(ckpt_path) if resume and ckpt_path.is_file() else None
    if resume_from:
        log.info("Resuming phase '%s' from %s.", phase.name, ckpt_path)
    if resume_from and prep.cfg.patience and early_stop_in(ckpt_dir, phase):
        # EarlyStopping ended the phase before the interruption; a fit would train on.
        module.history = saved_history(ckpt_dir)
        state.history.extend(module.history)
        _after_phase(prep, phase, ckpt_dir, state)
        return str(ckpt_dir / "best.ckpt")
    rows_before = len(saved_history(ckpt_dir)) if resume_from else 0
    with quiet_lightning():
        trainer, checkpoint = build_trainer(prep.cfg, phase, ckpt_dir, has_val=has_val,
                                            progress=progress, loggers=state.tracking.loggers,
                                            max_time=_time_left(prep.deadline))
        with within_fit(trainer):  # a signal stops the fit at the end of a batch
            if spawn and not phase.feature_cache:
                # Each spawned process builds its own loaders (their samplers hold a generator).
                trainer.fit(module, datamodule=state.datamodule, ckpt_path=resume_from)
            else:
                trainer.fit(module, train_loader, val_loader if has_val else None,
                            ckpt_path=resume_from)
    if spawn:
        # The fit ran in child processes: its history comes back through last.ckpt.
        module.history = saved_history(ckpt_dir)
        epochs = len(module.history) - rows_before
        state.images_trained += epochs * len(train_loader.dataset)
    else:
        # Each DDP rank counted its own shard; the shards are equal (DistributedSampler).
        state.images_trained += module.images_seen * trainer.world_size
    state.world_size = trainer.world_size
    state.history.extend(module.history)
    if prep.deadline is not None and _time_left(prep.deadline) <= 1.0 and trainer.current_epoch < phase.epochs:
        log.warning("Phase '%s' stopped at the --budget after %d of %d epochs; its best-on-val "
                    "weights are kept.", phase.name, trainer.current_epoch, phase.epochs)
        state.budget_stops.append(phase.name)
    _after_phase(prep, phase, ckpt_dir, state)
    return checkpoint.best_model_path if has_val and checkpoint.best_model_path else None


def _time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (--budget), at least 0; None without a budget."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _fit_head_lbfgs(prep: Prepared, phase: Phase, ckpt_dir: Path, state: Progress) -> None:
    """``--head-fit lbfgs``: the head as a logistic regression, C chosen on val; when it
    ends the run, C chosen by cross-validation over train + val instead, and the head
    refit on train + val (``head_refit``) after its val metrics are taken; then best.ckpt /
    last.ckpt written by Lightning as a trained phase would write them."""
    module, features, has_val = state.module, state.features, bool(prep.splits.val)
    classifier = module.model.get_classifier()
    check_linear_head(classifier)
    fit_args = dict(num_classes=len(module.classes), class_weights=prep.class_weights,
                    label_smoothing=prep.cfg.label_smoothing)
    # A later phase chooses its checkpoint on val: only the run's last phase may learn from it.
    refit = has_val and prep.cfg.head_refit and phase is prep.phases[-1]
    fit = fit_logistic_head(features["train"], features["val"] if has_val else None,
                            select="cv" if refit else "val", **fit_args)
    fit.apply_to(classifier)
    chosen = fit.best_row()
    if refit:
        state.selection_val, _ = _scores(prep, module, DataLoader(features["val"], batch_size=1024),
                                         "val", progress=False)
        fit = refit_logistic_head(fit, features["train"], features["val"], **fit_args)
        fit.apply_to(classifier)
        state.images_trained += len(features["val"])
    module.history = [{"epoch": 0, "phase": phase.name, "lr": None, "C": fit.C,
                       **{k: chosen[k] for k in ("train_loss", "train_accuracy", "val_loss",
                                                 "val_accuracy") if k in chosen}}]
    state.tracking.log_row(module.history[0])
    state.tracking.advance(0, 1)
    with quiet_lightning():
        trainer, _ = build_trainer(prep.cfg, phase, ckpt_dir, has_val=has_val, progress=False)
        # Nothing to fit step by step: attach the module as fit() would, so that Lightning
        # (its CheckpointIO, rank-0-only saving) writes the checkpoints in the usual format.
        trainer.strategy.connect(module)
        module.trainer = trainer
        with within_fit(trainer):  # both files, or a signal waits for them
            for name in ("best.ckpt", "last.ckpt"):
                trainer.save_checkpoint(ckpt_dir / name)
    record = {"phase": phase.name, "method": "lbfgs", "C": fit.C, "selection": fit.selection,
              "time_s": round(fit.time_s, 3), "sweep": fit.sweep}
    if fit.refit is not None:
        record["refit"] = {**fit.refit, "val_metrics": "of the fit on train alone, before the refit"}
    state.head_fits.append(record)
    state.images_trained += len(features["train"])  # each through the backbone once
    state.history.extend(module.history)


# ---------------------------------------------------------------------- 3. finish
def finish(prep: Prepared, state: Progress, train_time: float, *, progress: bool) -> dict:
    """Evaluate the best weights on val and test; write ``metrics.json`` and the report."""
    metrics = _evaluate(prep, state, progress=progress)
    metrics.update(_run_facts(prep, state, train_time))
    metrics = {**{k: metrics[k] for k in _METRICS_FIRST},
               **{k: v for k, v in metrics.items() if k not in _METRICS_FIRST}}
    fix = ("free space, then rerun the command with --resume: the checkpoints are complete "
           "and only the evaluation is redone")
    state.tracking.log_final(metrics)
    with writing(prep.run_dir / METRICS, fix):
        atomic_write_json(prep.run_dir / METRICS, metrics)
        write_report(prep.run_dir, metrics, state.history, prep.splits.classes,
                     config=prep.cfg.to_dict(), test_predictions=_test_predictions(prep, state))
    return metrics


def _test_predictions(prep: Prepared, state: Progress) -> TestPredictions | None:
    """The whole model (also after a head trained on cached features) and its test
    probabilities, for the report's gallery of top losses; None without a test split."""
    if state.test_probs is None:
        return None
    return TestPredictions(prep.model, prep.splits.test, state.test_probs.numpy(), prep.image_size)


def _evaluate(prep: Prepared, state: Progress, *, progress: bool) -> dict:
    """Val and test metrics of the final (best-on-val) weights."""
    out: dict[str, dict | None] = {}
    for split in ("val", "test"):
        if not getattr(prep.splits, split):
            out[split] = None
            continue
        if split == "val" and state.selection_val is not None:
            out[split] = state.selection_val  # the final head was refit on val
            continue
        if state.features is not None and state.module.on_features:
            loader = DataLoader(state.features[split], batch_size=1024)
        else:
            loader = state.datamodule.eval_dataloader(split)
        out[split], probs = _scores(prep, state.module, loader, split, progress=progress)
        if split == "test":
            state.test_probs = probs
    return out


def _scores(prep: Prepared, module: FinetuneModule, loader: DataLoader, split: str, *,
            progress: bool) -> tuple[dict, torch.Tensor]:
    """``module``'s metrics on ``loader`` (val: the summary metrics.json keeps; test: all of
    them) and its probabilities."""
    probs, labels = predict_probs(module, loader, device=prep.device, desc=f"evaluate {split}",
                                  progress=progress)
    m = classification_metrics(labels.numpy(), probs.numpy(), prep.splits.classes)
    if split == "val":
        m = {k: m[k] for k in ("accuracy", "macro_f1", "loss", "num_samples")}
    return m, probs


def _run_facts(prep: Prepared, state: Progress, train_time: float) -> dict:
    """Everything in ``metrics.json`` besides the evaluation: what ran, how long, on what."""
    cfg, model, splits = prep.cfg, prep.model, prep.splits
    facts = dict(
        backbone=model.variant,
        strategy=cfg.strategy,
        num_classes=len(splits.classes),
        classes=splits.classes,
        trainable_params=count_trainable(model),
        total_params=sum(p.numel() for p in model.parameters()),
        train_time_s=round(train_time, 3),
        feature_extraction_s=round(state.extraction_s, 3),
        images_per_s=round(state.images_trained / train_time, 2) if train_time > 0 else 0.0,
        image_size=prep.image_size,
        weights_source=prep.weights_source,
        phases=[{"name": p.name, "epochs": p.epochs, "lr": p.lr, "unfreeze": p.unfreeze,
                 "augment": p.augment, "feature_cache": p.feature_cache} for p in prep.phases],
        data={"path": str(prep.data_path), "train_counts": splits.counts("train")},
        split_sizes={"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        class_weighted_loss=prep.class_weights is not None,
        skipped_files=list(splits.skipped),
    )
    if prep.recommended:
        facts["recommended_by"] = "auto"
    if cfg.budget:
        # The budget, and the phases that its max_time stopped (their best-on-val weights kept).
        facts["budget"] = {"minutes": cfg.budget, "stopped_at_budget": state.budget_stops}
    if state.cache_hits:
        facts["feature_cache"] = {"hits": state.cache_hits,
                                  "extraction_s": round(state.extraction_s, 3)}
    if state.early_stops:
        facts["early_stopping"] = state.early_stops
    if state.head_fits:
        facts["head_fit"] = state.head_fits[-1] if len(state.head_fits) == 1 else state.head_fits
        for fit in state.head_fits:  # the report's phase list says how the head was fitted
            refit = fit.get("refit")
            note = f"lbfgs, C={fit['C']:g}" + (
                f", refit on train + val ({refit['images']} images)" if refit else "")
            for p in facts["phases"]:
                if p["name"] == fit["phase"]:
                    p["head_fit"] = note
    if cfg.distributed != "auto" or cfg.num_nodes > 1:
        facts["distributed"] = {"strategy": cfg.distributed, "num_nodes": cfg.num_nodes,
                                "world_size": state.world_size}
    return facts


__all__ = ["IMBALANCE_THRESHOLD", "Prepared", "Progress", "RunResult", "class_weights_for",
           "find_phase_lr", "finish", "phase_data", "prepare", "run", "train_phase"]

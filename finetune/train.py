"""One ``finetune run``: data, backbone, phases on Lightning, evaluation, the run folder.

    DIR/config.yaml    resolved configuration, enough to rerun (``--recipe DIR/config.yaml``)
    DIR/splits.json    which file went to train / val / test (reused on --resume)
    DIR/checkpoints/   best.ckpt and last.ckpt of the final phase; earlier phases in
                       checkpoints/<phase>/
    DIR/metrics.json   DESIGN.md's shape
    DIR/report/        confusion matrix, learning curves, per-class table, summary.md
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .checkpointing import AtomicCheckpointIO, check_resume_data, resume_start, saved_history
from .config import RunConfig, save_config
from .data import DataSplits, FinetuneDataModule, discover, load_splits, save_splits
from .data.builtin import BUILTIN_DATASETS, build_dataset
from .data.transforms import preprocess_spec
from .distributed import global_rank, local_rank
from .evaluation import classification_metrics
from .feature_cache import backbone_fingerprint, cached_features
from .features import predict_probs
from .head_fit import HeadFit, check_linear_head, fit_logistic_head
from .io import atomic_write_json
from .models import Backbone, create_backbone, load_state_dict_file, load_weights
from .module import FinetuneModule, count_trainable
from .report import write_report
from .strategies import Phase, plan

log = logging.getLogger("finetune")

BUILTIN_PREFIX = "builtin:"
# Above this max/min ratio of class counts, auto mode weights the loss by class.
IMBALANCE_THRESHOLD = 3.0


class RunError(ValueError):
    """A problem with the run folder or its inputs that the user can fix."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # empty on DDP ranks other than 0, which evaluate and write nothing
    is_global_zero: bool = True


# ---------------------------------------------------------------------- inputs
def resolve_data(data: str) -> Path:
    """A path, or ``builtin:<name>`` built offline into ./datasets/<name>."""
    if data.startswith(BUILTIN_PREFIX):
        name = data[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_DATASETS:
            raise RunError(
                f"Unknown built-in dataset '{name}'. Choose one of: {', '.join(BUILTIN_DATASETS)}."
            )
        return build_dataset(name, root="datasets")
    return Path(data).expanduser()


def default_run_dir(cfg: RunConfig) -> Path:
    data_name = cfg.data[len(BUILTIN_PREFIX):] if cfg.data.startswith(BUILTIN_PREFIX) else (
        Path(cfg.data).expanduser().resolve().stem or "data"
    )
    backbone = cfg.backbone.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{data_name}-{backbone}-{cfg.strategy}"


def build_model(cfg: RunConfig, num_classes: int, *, pretrained: bool | None = None) -> Backbone:
    """The backbone with a ``num_classes`` head; ``pretrained=False`` skips weight lookup."""
    weights = cfg.weights
    use_pretrained = weights == "pretrained" if pretrained is None else pretrained
    explicit = None if weights in ("pretrained", "none") or pretrained is False else weights
    return create_backbone(
        cfg.backbone, pretrained=use_pretrained and explicit is None,
        weights=explicit, num_classes=num_classes,
    )


def select_device(cfg: RunConfig) -> torch.device:
    if cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available()):
        # Under DDP each process extracts features on its own GPU, as Lightning trains on it.
        return torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def eval_batch_size_for(batch_size: int, device: torch.device) -> int:
    """Batches without gradients: twice the training batch on a GPU (fewer, fuller
    launches), the training batch on a CPU, where larger batches are slower per image
    (EfficientNet-Lite0 at 128 px, one thread: 30 ms per image in batches of 64 against
    21 ms in batches of 32; benchmarks/eval_batch.py)."""
    return 2 * batch_size if device.type == "cuda" else batch_size


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


class _ProgressBar(TQDMProgressBar):
    """One bar per training epoch; validation is short and gets none of its own."""

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.disable = True
        return bar


@contextlib.contextmanager
def quiet_lightning():
    """Keep Lightning's banners and the warnings our design makes expected out of the output.

    Frozen stages are in eval mode on purpose (the BN policy), the final phase's
    checkpoint folder holds the earlier phases' sub-folders, and tiny datasets have few
    batches: none of these needs the user's attention.
    """
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for message in (".*module\\(s\\) in eval mode.*", ".*does not have many workers.*",
                        ".*number of training batches.*", ".*exists and is not empty.*",
                        ".*LeafSpec.*"):
            warnings.filterwarnings("ignore", message=message)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def _num_workers(cfg: RunConfig) -> int:
    if cfg.num_workers is not None:
        return cfg.num_workers
    return min(4, (os.cpu_count() or 2) // 2)


def _trainer(cfg: RunConfig, phase: Phase, ckpt_dir: Path, *, has_val: bool, progress: bool):
    precision = cfg.precision or ("bf16-mixed" if select_device(cfg).type == "cuda" else "32-true")
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_loss" if has_val else None,
        mode="min",
        save_last=not has_val,
        save_top_k=1,
        enable_version_counter=False,
    )
    callbacks: list[pl.Callback] = [checkpoint]
    if has_val:
        # Lightning >= 2.6 refreshes save_last's last.ckpt only in epochs where best.ckpt
        # improved; --resume must continue from the latest epoch, so last.ckpt gets its own
        # unmonitored callback that writes it after every epoch.
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None,
                                         save_top_k=1, enable_version_counter=False))
    if progress:
        callbacks.append(_ProgressBar(leave=False))
    trainer = pl.Trainer(
        max_epochs=phase.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices if cfg.devices == "auto" else int(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=cfg.distributed,
        precision=precision,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # temp file + fsync + rename; weights_only loads
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(ckpt_dir),
        log_every_n_steps=1,
    )
    return trainer, checkpoint


def _feature_loaders(
    model: Backbone, dm: FinetuneDataModule, cfg: RunConfig, device: torch.device, progress: bool
) -> tuple[dict[str, Dataset], float, dict[str, bool]]:
    """Pooled features of every split, from the disk cache (``feature_cache``) or from one
    pass of the frozen backbone now; also which splits were cache hits."""
    start = time.perf_counter()
    preprocess = preprocess_spec(model.pretrained_cfg, dm.image_size)
    fingerprint = backbone_fingerprint(model)  # hashed once for the three splits
    cached: dict[str, Dataset] = {}
    hits: dict[str, bool] = {}
    for split in ("train", "val", "test"):
        samples = getattr(dm.splits, split)
        if not samples:
            cached[split] = TensorDataset(torch.zeros(0, model.num_features), torch.zeros(0, dtype=torch.long))
            continue
        cached[split], hits[split] = cached_features(
            model, dm.eval_dataloader(split), samples, preprocess=preprocess, device=device,
            cache_dir=cfg.feature_cache_dir, fingerprint=fingerprint, desc=f"features {split}",
            progress=progress,
        )
    return cached, time.perf_counter() - start, hits


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
        trainer, _ = _trainer(cfg, phase, ckpt_dir, has_val=has_val, progress=False)
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
        _check_run_dir(run_dir, resume=resume, overwrite=overwrite)
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
        from .recommend import resolve_auto

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
    num_workers = _num_workers(cfg)
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
            num_workers=num_workers, seed=cfg.seed, hflip=cfg.hflip,
            normalize_on_device=device.type == "cuda",
            # A head on cached features never reads the images again: nothing to cache.
            image_cache=cfg.image_cache and not phase.feature_cache,
            image_cache_dir=cfg.image_cache_dir,
        )
        dm.setup("fit")
        if phase.feature_cache:
            if cached is None:
                cached, extraction_s, cache_hits = _feature_loaders(model, dm, cfg, device, progress)
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
            trainer, checkpoint = _trainer(cfg, phase, ckpt_dir, has_val=has_val, progress=progress)
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


def _check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    has_ckpt = any((run_dir / "checkpoints").rglob("last.ckpt")) if run_dir.exists() else False
    if resume:
        if not has_ckpt:
            raise RunError(
                f"Nothing to resume in '{run_dir}': no checkpoint was written there yet. "
                f"Run without --resume to start it."
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(
                f"Run folder '{run_dir}' already holds a run. Use --resume to continue it, "
                f"--output for another folder, or --overwrite to replace it."
            )
        import shutil

        shutil.rmtree(run_dir)


def _check_image_size(model: Backbone, image_size: int) -> None:
    minimum = 32
    if image_size < minimum:
        raise RunError(
            f"--image-size {image_size} is too small for '{model.variant}' (it downsamples "
            f"32x); use at least {minimum}, ideally its pretrained size "
            f"{model.pretrained_cfg.image_size}."
        )


# ---------------------------------------------------------------------- evaluate
def load_run_model(run_dir: Path) -> tuple[Backbone, RunConfig, DataSplits]:
    """The trained model of a run folder (best checkpoint), its config and splits."""
    from .config import RunConfig, load_recipe

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"'{run_dir}' is not a run folder (no config.yaml). Pass the folder "
                       f"that `finetune run` wrote.")
    cfg = RunConfig.from_mapping(load_recipe(run_dir / "config.yaml"), where=str(run_dir / "config.yaml"))
    splits = load_splits(run_dir / "splits.json")
    ckpts = [run_dir / "checkpoints" / n for n in ("best.ckpt", "last.ckpt")]
    ckpt = next((c for c in ckpts if c.is_file()), None)
    if ckpt is None:
        raise RunError(f"No checkpoint in '{run_dir / 'checkpoints'}': the run did not finish "
                       f"a phase. Use `finetune run --resume` to continue it.")
    model = build_model(cfg, len(splits.classes), pretrained=False)
    load_weights(model, load_state_dict_file(ckpt), f"checkpoint {ckpt}")
    model.eval()
    return model, cfg, splits


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
                            num_workers=_num_workers(cfg))
    dm.setup("test")
    probs, labels = predict_probs(model, dm.eval_dataloader("test"), device=device,
                                  desc="evaluate", progress=progress)
    metrics = classification_metrics(labels.numpy(), probs.numpy(), splits.classes)
    metrics["num_samples"] = int(len(labels))
    metrics["skipped_files"] = list(splits.skipped)
    metrics["data"] = data or "test split"
    return metrics


__all__ = ["RunError", "RunResult", "build_model", "evaluate_run", "load_run_model", "run"]

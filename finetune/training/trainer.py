"""The Lightning Trainer of one phase, and the hardware choices around it."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import Logger

from ..config import RunConfig
from ..strategies import Phase
from .checkpointing import AtomicCheckpointIO, load_checkpoint
from .distributed import local_rank
from .interrupt import TrackEpochs
from .output import EpochLines, interactive


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


def num_workers(cfg: RunConfig) -> int:
    """``--num-workers``, or half the CPU cores, at most 4."""
    if cfg.num_workers is not None:
        return cfg.num_workers
    return min(4, (os.cpu_count() or 2) // 2)


def build_trainer(cfg: RunConfig, phase: Phase, ckpt_dir: Path, *, has_val: bool,
                  progress: bool, loggers: Sequence[Logger] = (), max_time: float | None = None
                  ) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Trainer of ``phase`` and its best-on-validation checkpoint callback.

    ``progress``: bars on a terminal, one line per epoch (``EpochLines``) elsewhere.
    ``loggers``: the run's trackers (training/tracking.py), with the learning rate of
    every parameter group logged each step. ``cfg.patience``: Lightning's EarlyStopping on
    val loss, its count saved in the checkpoints (a resume continues it).
    """
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
    callbacks: list[pl.Callback] = [checkpoint, TrackEpochs()]  # TrackEpochs: for an interruption's message
    if has_val:
        # Lightning >= 2.6 refreshes save_last's last.ckpt only in epochs where best.ckpt
        # improved; --resume must continue from the latest epoch, so last.ckpt gets its own
        # unmonitored callback that writes it after every epoch.
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None,
                                         save_top_k=1, enable_version_counter=False))
    if cfg.patience and has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience))
    bars = progress and interactive()
    if bars:
        callbacks.append(_ProgressBar(leave=False))
    elif progress:
        callbacks.append(EpochLines(phase.name))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = pl.Trainer(
        max_epochs=phase.epochs,
        # --budget: Lightning's Timer stops the fit after this many seconds (checked each step)
        max_time=None if max_time is None else timedelta(seconds=max(1.0, max_time)),
        accelerator=cfg.accelerator,
        devices=cfg.devices if cfg.devices == "auto" else int(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy=cfg.distributed,
        precision=precision,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # temp file + fsync + rename; weights_only loads
        logger=list(loggers) or False,
        enable_progress_bar=bars,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(ckpt_dir),
        log_every_n_steps=1,
    )
    return trainer, checkpoint


def early_stop_facts(state: Mapping, history: Sequence[Mapping], *, phase: str,
                     max_epochs: int) -> dict | None:
    """What ``metrics.json`` says of a phase that EarlyStopping ended (None if it ran all its
    epochs): from the callback's ``state_dict`` (live, or saved in a checkpoint) and the
    phase's history rows. Epochs are counted from 1, as the progress lines count them."""
    if not state.get("stopped_epoch") or state["wait_count"] < state["patience"]:
        return None  # ran to max_epochs (stopped_epoch stays 0)
    rows = [r for r in history if r.get("phase") == phase and r.get("val_loss") is not None]
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    best_loss = rows[best]["val_loss"]
    stopped = int(state["stopped_epoch"]) + 1
    return {"phase": phase, "stopped_epoch": stopped, "max_epochs": max_epochs,
            "best_epoch": best + 1, "best_val_loss": round(best_loss, 6),
            "reason": f"val_loss did not improve for {int(state['patience'])} epochs after "
                      f"epoch {best + 1} (best {best_loss:.3f})"}


def early_stop_in(ckpt_dir: Path, phase: Phase) -> dict | None:
    """``early_stop_facts`` of the phase whose ``last.ckpt`` is in ``ckpt_dir``: the
    EarlyStopping state saved there after the phase's last epoch."""
    path = Path(ckpt_dir) / "last.ckpt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    state = next((v for k, v in ckpt.get("callbacks", {}).items()
                  if k.startswith("EarlyStopping")), None)
    if state is None:
        return None
    return early_stop_facts(state, ckpt.get("finetune", {}).get("history", []),
                            phase=phase.name, max_epochs=phase.epochs)

"""The Lightning Trainer of one phase, and the hardware choices around it."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

from ..config import RunConfig
from ..strategies import Phase
from .checkpointing import AtomicCheckpointIO
from .distributed import local_rank
from .interrupt import TrackEpochs


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
                  progress: bool) -> tuple[pl.Trainer, ModelCheckpoint]:
    """The Trainer of ``phase`` and its best-on-validation checkpoint callback."""
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

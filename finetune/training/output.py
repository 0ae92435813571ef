"""Output that suits where it goes: progress bars on a terminal, one line per epoch elsewhere.

A progress bar redraws itself with carriage returns; in a log file or a CI console every
redraw stays, and one 20-epoch run writes tens of kilobytes of them. So bars are drawn
only where someone watches them (a terminal, a notebook), and ``EpochLines`` says what
a bar would have said once per epoch everywhere else.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import pytorch_lightning as pl

log = logging.getLogger("finetune")


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is watched live: a terminal or a Jupyter kernel."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


class EpochLines(pl.Callback):
    """One line per training epoch, through the ``finetune`` logger:

        finetune epoch 3/20: train loss 0.412, val loss 0.398, val accuracy 0.875 (4.2 s)
    """

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = dict(trainer.callback_metrics)
        if "val_loss" not in metrics:
            # Without validation the module logs the epoch's mean after this hook runs
            # (Lightning calls callbacks' hooks before the module's): the last step's loss.
            metrics.pop("train_loss_epoch", None)
        labels = (("train_loss_epoch", "train loss"), ("train_loss", "last batch loss"),
                  ("val_loss", "val loss"), ("val_accuracy", "val accuracy"))
        if "train_loss_epoch" in metrics:
            metrics.pop("train_loss", None)
        parts = [f"{label} {float(metrics[key]):.4g}" for key, label in labels if key in metrics]
        log.info("%s epoch %d/%d: %s (%.1f s)", self.phase, trainer.current_epoch + 1,
                 trainer.max_epochs, ", ".join(parts) or "no metrics",
                 time.perf_counter() - self._start)


__all__ = ["EpochLines", "interactive"]

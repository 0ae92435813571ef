"""Lightning's learning-rate range test for one phase, its ratios kept.

    result = find_lr(model, phase, cfg, train_loader, classes=classes)
    result.suggestion  # the head's rate; the stages keep lr * backbone_lr_scale * layer_decay^k

``Tuner.lr_find`` raises the rate exponentially from ``MIN_LR`` to ``MAX_LR`` over
``steps`` batches, records the smoothed training loss and stops once it exceeds four
times its best; then it restores the weights, buffers and optimizer from the checkpoint
it saved first, so nothing the sweep trained survives it. The suggestion is the rate
where the smoothed loss falls fastest per decade of the rate (``_steepest`` says why not
Lightning's own ``suggestion()``, which is recorded too).

Lightning gives every parameter group the same rate. A phase's groups differ on purpose
(``Phase.param_groups``: the head at ``lr``, the last trainable stage ten times less, each
earlier one ``layer_decay`` times less again), so ``_SweepModule`` puts the ratios back
before every batch: the sweep runs the optimizer the phase will train with, the head's
rate on the x axis. The sweep runs on its own module and ``Trainer`` (no checkpoints, no
loggers) around the same backbone; a cached-feature phase sweeps on the feature loader.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.tuner import Tuner
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..evaluation.figures import png_bytes
from ..io import atomic_write_bytes, atomic_write_json
from ..models import Backbone
from ..strategies import Phase
from .module import FinetuneModule
from .trainer import quiet_lightning, select_device

log = logging.getLogger("finetune")

LR_FIND_DIR = "lr_find"  # <run folder>/lr_find/<phase>.png
LR_FIND_JSON = "lr_find.json"
# The head's rates swept: from far below any strategy's default to where every head
# diverges, so the steepest descent lies inside.
MIN_LR, MAX_LR = 1e-6, 1.0
EARLY_STOP = 4.0  # the sweep ends once the smoothed loss exceeds this many times its best
SKIP_BEGIN = 10  # Lightning's suggestion ignores the sweep's first steps


@dataclass(frozen=True)
class LrFindResult:
    phase: str
    suggestion: float  # the head's rate the phase trains with (the default when none is found)
    default_lr: float
    min_lr: float
    max_lr: float
    found: bool  # False: too few finite points for a suggestion; the default is kept
    reason: str
    lrs: list[float]  # the head's rate at each step of the sweep
    losses: list[float]  # the smoothed training loss at each step (NaN where it diverged)
    lightning_suggestion: float | None = None  # LRFinder.suggestion(): d loss / d lr

    def to_json(self) -> dict:
        return {"phase": self.phase, "suggested_lr": self.suggestion,
                "default_lr": self.default_lr, "range": [self.min_lr, self.max_lr],
                "steps": len(self.lrs), "found": self.found, "reason": self.reason,
                "lightning_suggestion": self.lightning_suggestion,
                "lrs": self.lrs, "losses": [None if not math.isfinite(v) else v
                                            for v in self.losses]}


class _SweepModule(FinetuneModule):
    """The phase's module for the sweep: its groups keep the phase's ratios to the head's
    rate, and a diverged loss ends the sweep instead of the run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        groups = self.phase.param_groups(self.model, self.cfg)
        self._ratios = [g["lr"] / self.phase.lr for g in groups]

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Lightning's scheduler has just set every group to the swept rate (its first
        # group is the head's, ratio 1); each group gets its share of it back.
        groups = self.trainer.optimizers[0].param_groups
        head_lr = groups[0]["lr"]
        for group, ratio in zip(groups, self._ratios, strict=True):
            group["lr"] = head_lr * ratio

    def training_step(self, batch, batch_idx):
        try:
            return super().training_step(batch, batch_idx)
        except FloatingPointError:
            # Past the divergence point: Lightning records NaN for a step without output
            # and leaves it out of the suggestion.
            self.trainer.should_stop = True
            return None


def find_lr(model: Backbone, phase: Phase, cfg: RunConfig, train_loader: DataLoader, *,
            classes: list[str], class_weights: torch.Tensor | None = None,
            steps: int | None = None, progress: bool = True) -> LrFindResult:
    """Sweep the head's rate of ``phase`` on ``train_loader``; the model's weights, buffers,
    ``requires_grad`` and modes are as before when it returns. ``progress``: Lightning's
    bar of the sweep, on a terminal only."""
    steps = steps or cfg.lr_find_steps
    was_training, where = model.training, next(model.parameters()).device
    requires_grad = [p.requires_grad for p in model.parameters()]  # the sweep's phase freezes
    module = _SweepModule(model, phase, cfg, classes=classes, class_weights=class_weights)
    device = select_device(cfg)
    precision = cfg.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    with tempfile.TemporaryDirectory(prefix="lr_find-") as tmp, quiet_lightning(), \
            _bar_unless(progress and sys.stderr.isatty()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")  # none is needed
        trainer = pl.Trainer(
            accelerator=cfg.accelerator, devices=1, precision=precision,
            max_epochs=math.ceil(steps / max(1, len(train_loader))) + 1,
            logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=False, default_root_dir=tmp, num_sanity_val_steps=0,
        )
        finder = Tuner(trainer).lr_find(module, train_dataloaders=train_loader,
                                        min_lr=MIN_LR, max_lr=MAX_LR, num_training=steps,
                                        early_stop_threshold=EARLY_STOP, update_attr=False)
    model.to(where).train(was_training)
    for p, flag in zip(model.parameters(), requires_grad, strict=True):
        p.requires_grad_(flag)
    lrs = [float(v) for v in finder.results["lr"]]
    losses = [float(v) for v in finder.results["loss"]]
    lightning = finder.suggestion(skip_begin=SKIP_BEGIN)  # d loss / d lr: see _steepest
    i = _steepest(lrs, losses)
    if i is None:
        stopped = (f"the loss rose past {EARLY_STOP:g}x its best after {len(lrs)} of {steps} "
                   f"steps" if len(lrs) < steps else f"{steps} steps are too few")
        reason = (f"no suggestion: {stopped} (Lightning skips the first {SKIP_BEGIN}); the "
                  f"default {phase.lr:g} is kept")
        return LrFindResult(phase.name, phase.lr, phase.lr, MIN_LR, MAX_LR, False, reason,
                            lrs, losses, lightning)
    reason = (f"steepest descent of the smoothed loss against log10(lr) at {lrs[i]:.2g} "
              f"(loss {losses[i]:.3f}, step {i + 1} of {len(lrs)})")
    return LrFindResult(phase.name, lrs[i], phase.lr, MIN_LR, MAX_LR, True, reason,
                        lrs, losses, lightning)


def _steepest(lrs: list[float], losses: list[float]) -> int | None:
    """The step where the smoothed loss falls fastest per decade of the rate, skipping the
    first ``SKIP_BEGIN`` steps and the last one as Lightning does; None below two points.

    Lightning's own ``suggestion()`` takes the gradient against the rate itself: on the
    exponential sweep the steps between small rates are tiny, so the noise of the loss
    there makes the steepest slopes: for a linear head on the built-in photos it picks
    2.4e-5, where the smoothed loss has not begun to fall (1.97, against 1.46 at 1e-3 and
    0.86 at 1.8e-2). Against log10(lr) the steps are equal.
    """
    idx = [i for i in range(SKIP_BEGIN, len(lrs) - 1) if math.isfinite(losses[i])]
    if len(idx) < 2:
        return None
    x = torch.log10(torch.tensor([lrs[i] for i in idx], dtype=torch.float64))
    y = torch.tensor([losses[i] for i in idx], dtype=torch.float64)
    return idx[int(torch.argmin(torch.gradient(y, spacing=[x])[0]))]


@contextlib.contextmanager
def _bar_unless(show: bool):
    """Lightning's sweep always draws a tqdm bar on stderr; elsewhere than a terminal it
    would be hundreds of carriage-return updates in a log."""
    if show:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


# ---------------------------------------------------------------------- files
def plot_curve(result: LrFindResult, path: Path) -> None:
    """The loss-vs-rate curve with the suggestion (and the default) marked, as a PNG."""
    fig = Figure(figsize=(6, 4), layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="tab:blue", label="smoothed training loss")
    ax.set_xscale("log")
    ax.axvline(result.default_lr, color="tab:gray", linestyle="--",
               label=f"strategy default {result.default_lr:.2g}")
    if result.found:
        i = min(range(len(result.lrs)), key=lambda j: abs(result.lrs[j] - result.suggestion))
        ax.plot([result.suggestion], [result.losses[i]], "o", color="tab:red", markersize=8,
                label=f"suggestion {result.suggestion:.2g}")
    ax.set_xlabel("head learning rate")
    ax.set_ylabel("loss")
    ax.set_title(f"learning-rate range test: phase '{result.phase}'")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png_bytes(fig))


def write_result(run_dir: Path, result: LrFindResult, **extra: str) -> None:
    """``lr_find/<phase>.png``, and the phase's entry in ``lr_find.json`` (added to or
    replacing the one there), with ``extra`` fields (a note, the command to run)."""
    plot_curve(result, run_dir / LR_FIND_DIR / f"{result.phase}.png")
    saved = read_saved(run_dir)
    entry = {**result.to_json(), **extra}
    saved["phases"] = [p for p in saved["phases"] if p["phase"] != result.phase] + [entry]
    atomic_write_json(run_dir / LR_FIND_JSON, saved)


def read_saved(run_dir: Path) -> dict:
    """What ``run_dir/lr_find.json`` holds, ``{"phases": [{"phase", "suggested_lr", ...}]}``,
    with no phases before the first sweep: the one reader of the file, for adding a phase
    to it and for the rates a resume trains with again. A file of another shape is an
    error that names it, not a KeyError from inside the resume."""
    path = run_dir / LR_FIND_JSON
    if not path.is_file():
        return {"phases": []}
    try:
        saved = json.loads(path.read_text())
        bad = [p for p in saved["phases"]
               if not isinstance(p["phase"], str) or not float(p["suggested_lr"]) > 0]
        if bad:
            raise ValueError(f"not a phase name and a positive rate: {bad[0]}")
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"'{path}' is not an lr_find.json as `--lr find` writes it "
                         f"({type(err).__name__}: {err}). Delete it, and `--lr find` sweeps the "
                         f"phases again.") from None
    return saved


def saved_lrs(run_dir: Path) -> dict[str, float]:
    """Each phase's rate found earlier in this run folder (a resume trains with it again)."""
    return {p["phase"]: float(p["suggested_lr"]) for p in read_saved(run_dir)["phases"]}


__all__ = ["LR_FIND_DIR", "LR_FIND_JSON", "MAX_LR", "MIN_LR", "LrFindResult", "find_lr",
           "plot_curve", "read_saved", "saved_lrs", "write_result"]

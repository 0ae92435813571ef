"""Experiment tracking: Lightning's loggers, built once per run and shared by its phases.

    tracking = RunTracking.create(cfg, run_dir)   # CSV, TensorBoard, MLflow, W&B
    trainer = build_trainer(..., loggers=tracking.loggers)
    tracking.advance(trainer.global_step, trainer.current_epoch)  # after each phase
    tracking.log_final(metrics); tracking.close("success")

One run is one run in every tool, even when its phases (lp-ft's probe, then the
fine-tuning) each have their own Trainer: the same logger instances go to every phase.

**Steps and epochs continue across phases.** Each Trainer counts its steps and epochs
from 0, so each tool's logger is wrapped in a ``ContinuedLogger`` that adds the steps
and epochs of the phases before (its offsets) to what the Trainer logs. The runner
advances the offsets after each phase by what that phase ran: its ``global_step`` and
epoch count, read back from the phase's ``last.ckpt`` for phases a resume skips. Within
a phase the axes are Lightning's own; across phases they read as one long run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, WandbLogger

from ..config import RunConfig
from ..io import atomic_write_json
from ..run_folder import RunError
from .checkpointing import load_checkpoint

# The tool each logger needs, the module that provides it, and the extra that installs it.
_EXTRAS = {
    "tensorboard": ("TensorBoard", ("tensorboard", "tensorboardX")),
    "mlflow": ("MLflow", ("mlflow",)),
    "wandb": ("Weights & Biases", ("wandb",)),
}
CSV_DIR = "logs"  # <run folder>/logs/metrics.csv and hparams.yaml
TENSORBOARD_DIR = "tensorboard"
TRACKING_IDS = "tracking.json"  # the MLflow run and W&B run a resume continues
DEFAULT_MLFLOW_STORE = "mlflow.db"  # MLflow's own default: a SQLite store in the working folder


def check_trackers(cfg: RunConfig) -> None:
    """Fail before any training when a chosen logger's package is not installed."""
    for name in cfg.loggers:
        if name not in _EXTRAS:
            continue
        tool, modules = _EXTRAS[name]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise RunError(f"--logger {name} needs {tool}: pip install 'finetune[{name}]'")
    if "mlflow" in cfg.loggers and _mlflow_uri(cfg).startswith("sqlite:"):
        if not importlib.util.find_spec("sqlalchemy") or not importlib.util.find_spec("alembic"):
            raise RunError("--logger mlflow stores runs in SQLite, which needs SQLAlchemy and "
                           "Alembic: pip install 'finetune[mlflow]' (or give --tracking-uri).")


class ContinuedLogger(Logger):
    """A tool's logger whose step and epoch axes continue across a run's phases.

    Lightning calls ``finalize`` at the end of every ``fit``; here that only saves, so the
    tool's run stays open for the next phase. ``RunTracking.close`` ends it once.
    """

    def __init__(self, tool: Logger) -> None:
        super().__init__()
        self.tool = tool
        self.step_offset = 0
        self.epoch_offset = 0

    @property
    def name(self) -> str | None:
        return self.tool.name

    @property
    def version(self) -> int | str | None:
        return self.tool.version

    @property
    def save_dir(self) -> str | None:
        return self.tool.save_dir

    @property
    def log_dir(self) -> str | None:
        return getattr(self.tool, "log_dir", None)

    @property
    def experiment(self) -> Any:
        return self.tool.experiment

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        if "epoch" in metrics:
            metrics["epoch"] = metrics["epoch"] + self.epoch_offset
        self.tool.log_metrics(metrics, None if step is None else step + self.step_offset)

    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self.tool.log_hyperparams(params, *args, **kwargs)

    def log_graph(self, model, input_array=None) -> None:
        self.tool.log_graph(model, input_array)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.tool.after_save_checkpoint(checkpoint_callback)

    def save(self) -> None:
        self.tool.save()

    def finalize(self, status: str) -> None:
        self.tool.save()


class RunTracking:
    """The loggers of one run, their step and epoch offsets, and how the run ends in them."""

    def __init__(self, loggers: list[ContinuedLogger], run_dir: Path) -> None:
        self.loggers = loggers
        self.run_dir = run_dir

    @classmethod
    def create(cls, cfg: RunConfig, run_dir: Path, *, resume: bool = False,
               write: bool = True) -> RunTracking:
        """The loggers ``cfg.loggers`` names, with the resolved configuration logged as
        hyperparameters. A resume continues the MLflow and W&B runs it started."""
        ids = _saved_ids(run_dir) if resume else {}
        tools = [_csv_logger(run_dir, resume=resume) if name == "csv" else
                 _make_logger(name, cfg, run_dir, ids) for name in cfg.loggers if name != "none"]
        tracking = cls([ContinuedLogger(t) for t in tools], run_dir)
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}
        for logger in tracking.loggers:
            if isinstance(logger.tool, MLFlowLogger) and ids.get("mlflow_run_id"):
                continue  # MLflow's params are immutable: the run keeps those it started with
            logger.log_hyperparams(params)
        if write:
            tracking._save_ids()
        return tracking

    def advance(self, steps: int, epochs: int) -> None:
        """Move the axes past a phase that ran ``steps`` optimizer steps over ``epochs`` epochs."""
        for logger in self.loggers:
            logger.step_offset += steps
            logger.epoch_offset += epochs

    def advance_past(self, ckpt_dir: Path) -> None:
        """``advance`` by a finished phase's extent, as its ``last.ckpt`` records it (a resume
        skips that phase, so no Trainer of this process counted it)."""
        if not self.loggers or not (Path(ckpt_dir) / "last.ckpt").is_file():
            return
        ckpt = load_checkpoint(Path(ckpt_dir) / "last.ckpt")
        self.advance(int(ckpt.get("global_step", 0)), int(ckpt.get("epoch", 0)) + 1)
        self._learn_csv_columns()

    def _learn_csv_columns(self) -> None:
        """Under ddp_spawn a phase logs from child processes, and this process's CSV writer
        never saw their columns: it would rewrite metrics.csv with its own alone. It learns
        them from the file's header."""
        for logger in self.loggers:
            if not isinstance(logger.tool, CSVLogger):
                continue
            path = Path(logger.tool.log_dir) / "metrics.csv"
            if not path.is_file():
                continue
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            writer = logger.tool.experiment
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))

    def log_row(self, row: dict[str, Any]) -> None:
        """One epoch's values logged without a Trainer (an L-BFGS head fit): at the current
        offsets, as an epoch of its own."""
        values = {k: float(v) for k, v in row.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        if "train_loss" in values:  # per-epoch, as the Trainer's epochs name it
            values["train_loss_epoch"] = values.pop("train_loss")
        for logger in self.loggers:
            logger.log_metrics({**values, "epoch": 0}, step=0)

    def log_final(self, metrics: dict[str, Any]) -> None:
        """The evaluation of the best weights: ``final_val_*`` and ``test_*`` scalars."""
        values: dict[str, float] = {}
        for split, prefix in (("val", "final_val_"), ("test", "test_")):
            for key, value in (metrics.get(split) or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[prefix + key] = float(value)
        for logger in self.loggers if values else ():
            logger.log_metrics(values, step=0)

    def close(self, status: str) -> None:
        """End the run in every tool: "success" or "failed"."""
        for logger in self.loggers:
            logger.tool.finalize(status)
            if isinstance(logger.tool, WandbLogger) and logger.tool._experiment is not None:
                # W&B keeps one run per process: a later run would otherwise join this one.
                logger.tool.experiment.finish(exit_code=0 if status == "success" else 1)

    def _save_ids(self) -> None:
        ids = {}
        for logger in self.loggers:
            if isinstance(logger.tool, MLFlowLogger):
                ids["mlflow_run_id"] = logger.tool.run_id
            elif isinstance(logger.tool, WandbLogger):
                ids["wandb_run_id"] = logger.tool.version
        if ids:
            atomic_write_json(self.run_dir / TRACKING_IDS, ids)


def _mlflow_uri(cfg: RunConfig) -> str:
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(DEFAULT_MLFLOW_STORE).resolve()}"


def _wandb_configured() -> bool:
    """Online only when the user set W&B up through its own environment variables."""
    return any(os.environ.get(v) for v in ("WANDB_API_KEY", "WANDB_MODE"))


def _saved_ids(run_dir: Path) -> dict[str, str]:
    path = Path(run_dir) / TRACKING_IDS
    return json.loads(path.read_text()) if path.is_file() else {}


def _csv_logger(run_dir: Path, *, resume: bool) -> Logger:
    """``RUN/logs/metrics.csv``. Lightning's CSV writer starts its file afresh, so a resume
    writes the rows from before the interruption back first (the epoch it replays may
    then appear twice, as it does in the other tools)."""
    logger = CSVLogger(save_dir=str(run_dir), name=CSV_DIR, version="")
    path = Path(logger.log_dir) / "metrics.csv"
    if not resume or not path.is_file():
        return logger
    with open(path, newline="") as f:
        rows = [{k: int(v) if v.lstrip("-").isdigit() else float(v) for k, v in row.items() if v}
                for row in csv.DictReader(f)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        writer = logger.experiment  # removes the old file
    for row in rows:
        step = row.pop("step", 0)
        writer.log_metrics(row, step)
    writer.save()
    return logger


def _make_logger(name: str, cfg: RunConfig, run_dir: Path, ids: dict[str, str]) -> Logger:
    """Lightning's logger for ``name``; its files go inside the run folder, except MLflow's
    store (shared by runs, so that they can be compared)."""
    run_name = Path(run_dir).name
    if name == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name=TENSORBOARD_DIR, version="",
                                 default_hp_metric=False)
    if name == "mlflow":
        return MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "finetune"),
                            run_name=run_name,
                            tracking_uri=_mlflow_uri(cfg), run_id=ids.get("mlflow_run_id"))
    if name == "wandb":
        wandb_id = ids.get("wandb_run_id")
        return WandbLogger(project=os.environ.get("WANDB_PROJECT", "finetune"), name=run_name,
                           save_dir=str(run_dir), offline=not _wandb_configured(),
                           id=wandb_id, resume="allow" if wandb_id else None)
    raise RunError(f"Unknown logger '{name}'.")  # config.LOGGERS and this list go together


__all__ = ["ContinuedLogger", "RunTracking", "check_trackers"]

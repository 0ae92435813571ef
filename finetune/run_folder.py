"""The run folder: what ``finetune run`` writes, and how everything else reads it back.

    DIR/config.yaml    the resolved configuration; rerun with ``--recipe DIR/config.yaml``
    DIR/splits.json    which file went to train / val / test (reused on ``--resume``)
    DIR/checkpoints/   best.ckpt and last.ckpt of the final phase; earlier phases in
                       checkpoints/<phase>/
    DIR/metrics.json   the evaluation of the best-on-validation weights (docs/design.md)
    DIR/report/        confusion matrix, learning curves, per-class table, summary.md
    DIR/model/         what ``finetune export`` wrote
    DIR/.lock          held by the ``finetune run`` that writes DIR (``lock_run_dir``)

Training writes these files; evaluation, export and prediction read them through
``load_run_model``, which needs neither the trainer nor Lightning.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from .config import RunConfig, load_recipe
from .data import BUILTIN_PREFIX, DataSplits, load_splits
from .models import Backbone, create_backbone, load_state_dict_file, load_weights

CONFIG = "config.yaml"
SPLITS = "splits.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
REPORT = "report"
MODEL = "model"
LOCK = ".lock"


class RunError(ValueError):
    """A problem with the run folder or its inputs that the user can fix."""


def default_run_dir(cfg: RunConfig) -> Path:
    """``runs/<data>-<backbone>-<strategy>``."""
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


def lock_run_dir(run_dir: Path) -> FileLock:
    """Take ``run_dir/.lock`` (creating the folder) or refuse at once: one run per folder.

    The lock is an ``flock``, which the OS drops when its process dies, so a run killed
    with SIGKILL leaves no stale lock behind. The holder writes its pid into the file for
    the error message of the next one; the file itself stays (deleting it while it is
    held would let a third run lock a new file of the same name).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    lock = FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        holder = _lock_holder(path)
        raise RunError(
            f"Run folder {run_dir} is in use by another finetune run "
            f"({f'pid {holder}' if holder else 'pid unknown'}); wait for it, or use --output "
            f"for another folder."
        ) from None
    try:
        path.write_text(f"{os.getpid()}\n")  # same inode: truncates, never replaces
    except OSError:
        pass  # the pid is only for the message above
    return lock


def _lock_holder(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; ``overwrite`` empties it first, all but the
    ``.lock`` this run holds."""
    has_ckpt = any((run_dir / CHECKPOINTS).rglob("last.ckpt")) if run_dir.exists() else False
    if resume:
        if not has_ckpt:
            raise RunError(
                f"Nothing to resume in '{run_dir}': no checkpoint was written there yet. "
                f"Run without --resume to start it."
            )
        return
    entries = [p for p in run_dir.iterdir() if p.name != LOCK] if run_dir.exists() else []
    if entries:
        if not overwrite:
            raise RunError(
                f"Run folder '{run_dir}' already holds a run. Use --resume to continue it, "
                f"--output for another folder, or --overwrite to replace it."
            )
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def load_run_model(run_dir: str | Path) -> tuple[Backbone, RunConfig, DataSplits]:
    """The trained model of a run folder (best checkpoint, eval mode), its config and splits."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG
    if not config.is_file():
        raise RunError(f"'{run_dir}' is not a run folder (no {CONFIG}). Pass the folder "
                       f"that `finetune run` wrote.")
    cfg = RunConfig.from_mapping(load_recipe(config), where=str(config))
    splits = load_splits(run_dir / SPLITS)
    ckpts = [run_dir / CHECKPOINTS / n for n in ("best.ckpt", "last.ckpt")]
    ckpt = next((c for c in ckpts if c.is_file()), None)
    if ckpt is None:
        raise RunError(f"No checkpoint in '{run_dir / CHECKPOINTS}': the run did not finish "
                       f"a phase. Use `finetune run --resume` to continue it.")
    model = build_model(cfg, len(splits.classes), pretrained=False)
    load_weights(model, load_state_dict_file(ckpt), f"checkpoint {ckpt}")
    model.eval()
    return model, cfg, splits


__all__ = ["LOCK", "RunError", "build_model", "check_run_dir", "default_run_dir", "load_run_model",
           "lock_run_dir"]

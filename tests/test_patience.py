"""Early stopping (``--patience``) on real photos: a linear head at a learning rate far too
high for 8 classes overfits within a few epochs, so its val loss stops improving long
before the 30 epochs it is given. Cached features keep each epoch to milliseconds."""

from __future__ import annotations

import json
import math

import pytest
from _faults import run_child

from finetune.config import RunConfig
from finetune.training import run
from finetune.training.checkpointing import saved_history

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, PATIENCE, BATCH = 30, 3, 16
FLAGS = {"strategy": "linear", "head-fit": "sgd", "image-size": 64, "batch-size": BATCH,
         "num-workers": 0, "epochs": EPOCHS, "lr": 0.5, "patience": PATIENCE, "logger": "none",
         "accelerator": "cpu"}


@pytest.fixture(scope="module")
def stopped(photos_dir, tmp_path_factory):
    cfg = RunConfig(data=str(photos_dir), output=str(tmp_path_factory.mktemp("patience") / "run"),
                    **{k.replace("-", "_"): v for k, v in FLAGS.items() if k != "logger"},
                    loggers=("none",))
    result = run(cfg, progress=False)
    return result, saved_history(result.run_dir / "checkpoints")


def test_patience_stops_patience_epochs_after_the_best(stopped):
    result, history = stopped
    (stop,) = result.metrics["early_stopping"]
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    assert len(history) == stop["stopped_epoch"] < EPOCHS
    assert stop["best_epoch"] == best + 1
    assert stop["stopped_epoch"] == best + 1 + PATIENCE
    # The evaluated weights are the best epoch's, not the last one's.
    assert result.metrics["val"]["loss"] == pytest.approx(history[best]["val_loss"], rel=1e-5)
    assert history[-1]["val_loss"] > history[best]["val_loss"]
    summary = (result.run_dir / "report" / "summary.md").read_text()
    assert (f"Early stopping: phase **linear** stopped at epoch {stop['stopped_epoch']} of "
            f"{EPOCHS}: val_loss did not improve for {PATIENCE} epochs after epoch {best + 1} "
            f"(best {history[best]['val_loss']:.3f})") in summary
    assert not (result.run_dir / "logs").exists()  # --logger none


def test_patience_without_validation_is_refused(cli, one_clear_line, photos_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("val_fraction: 0.0\npatience: 2\n")
    result = cli("run", "--data", photos_dir, "--recipe", recipe, "--output", tmp_path / "run",
                 "--num-workers", 0)
    one_clear_line(result, "--patience 2 stops on validation loss", "val_fraction")
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow  # two child processes
def test_resumed_run_continues_the_patience_count(stopped, photos_dir, tmp_path):
    """Killed (SIGKILL) just after the first epoch without improvement, then resumed: the
    count goes on from 1, so the run stops where the uninterrupted one stopped (a count
    reset to 0 would stop one epoch later)."""
    result, history = stopped
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    out = tmp_path / "run"
    args = ["run", "--data", str(photos_dir), "--output", str(out), "-q",
            *[a for k, v in FLAGS.items() for a in (f"--{k}", str(v))]]
    # Moments (tests/_faults.py) up to last.ckpt of epoch best + 1: the phase's start, then
    # per epoch its train steps, one val step (cached features: one batch), best.ckpt where
    # val loss improved, and last.ckpt.
    steps = math.ceil(result.metrics["split_sizes"]["train"] / BATCH)
    kill_at = 1 + sum(steps + 1 + (2 if i <= best and _improved(history, i) else 1)
                      for i in range(best + 2))
    killed = run_child(args, out, kill_at=kill_at)
    assert killed.killed, killed.stderr[-2000:]
    assert killed.moments[-1] == f"saved checkpoints/last.ckpt, epoch {best + 1}"
    resumed = run_child([*args, "--resume"], out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.moments[1] == f"train step 0, epoch {best + 2}, phase linear"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["early_stopping"] == result.metrics["early_stopping"]
    assert metrics["val"]["loss"] == pytest.approx(result.metrics["val"]["loss"], rel=1e-6)


def _improved(history, i: int) -> bool:
    return all(history[i]["val_loss"] < history[j]["val_loss"] for j in range(i))

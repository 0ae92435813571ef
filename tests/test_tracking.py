"""Experiment tracking: one real lp-ft run (two phases, two Trainers) logged to CSV,
TensorBoard and MLflow, read back with each tool's own reader.

The probe trains 1 epoch on cached features and the fine-tuning 2 epochs of the whole
backbone, on 12 training photos in batches of 4: 3 steps an epoch, 9 in all.
"""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import yaml

from finetune.config import ConfigError, RunConfig, resolve_config
from finetune.training import run
from finetune.training.checkpointing import saved_history

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS_PER_EPOCH = 3  # 12 training images, batches of 4


@pytest.fixture(scope="module")
def tracked(brick_cat_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    cfg = RunConfig(data=str(brick_cat_dir), output=str(root / "run"), strategy="lp-ft",
                    lp_epochs=1, epochs=2, image_size=64, batch_size=4, num_workers=0,
                    loggers=("csv", "tensorboard", "mlflow"),
                    tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    result = run(cfg, progress=False)
    history = saved_history(result.run_dir / "checkpoints" / "linear") + saved_history(
        result.run_dir / "checkpoints")
    return cfg, result, history


def _csv_rows(run_dir):
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_csv_holds_each_epoch_with_continuing_axes(tracked):
    cfg, result, history = tracked
    rows = _csv_rows(result.run_dir)
    epochs = [r for r in rows if "val_loss" in r]
    assert [r["epoch"] for r in epochs] == ["0", "1", "2"]  # 1 probe + 2 fine-tuning epochs
    assert [h["phase"] for h in history] == ["linear", "full", "full"]
    for row, h in zip(epochs, history, strict=True):
        assert float(row["val_loss"]) == pytest.approx(h["val_loss"], rel=1e-6)
        assert float(row["val_accuracy"]) == pytest.approx(h["val_accuracy"])
        assert float(row["train_loss_epoch"]) == pytest.approx(h["train_loss"], rel=1e-6)
    # The fine-tuning's steps follow the probe's instead of starting again at 0.
    steps = sorted({int(r["step"]) for r in rows if "train_loss" in r})
    assert steps == list(range(3 * STEPS_PER_EPOCH))
    # Learning rate per parameter group: the probe's head, then every backbone stage.
    lr_keys = {k for r in rows for k in r if k.startswith("lr-")}
    assert {"lr-AdamW/head", "lr-AdamW/blocks.6", "lr-AdamW/stem"} <= lr_keys
    final = next(r for r in rows if "test_accuracy" in r)
    assert float(final["test_accuracy"]) == pytest.approx(result.metrics["test"]["accuracy"])
    assert float(final["final_val_loss"]) == pytest.approx(result.metrics["val"]["loss"])
    hparams = yaml.safe_load((result.run_dir / "logs" / "hparams.yaml").read_text())
    assert hparams["strategy"] == "lp-ft" and hparams["loggers"] == ["csv", "tensorboard", "mlflow"]


def test_tensorboard_event_files_hold_the_same_scalars(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result, history = tracked
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    val = events.Scalars("val_loss")
    assert [e.value for e in val] == pytest.approx([h["val_loss"] for h in history], rel=1e-6)
    csv_steps = [int(r["step"]) for r in _csv_rows(result.run_dir) if "val_loss" in r]
    assert [e.step for e in val] == csv_steps
    assert len(events.Scalars("train_loss")) == 3 * STEPS_PER_EPOCH
    assert "lr-AdamW/blocks.0" in events.Tags()["scalars"]
    (test_acc,) = events.Scalars("test_accuracy")
    assert test_acc.value == pytest.approx(result.metrics["test"]["accuracy"])


def test_mlflow_store_holds_one_run_with_params_and_history(tracked):
    from mlflow.tracking import MlflowClient

    cfg, result, history = tracked
    client = MlflowClient(cfg.tracking_uri)
    run_id = json.loads((result.run_dir / "tracking.json").read_text())["mlflow_run_id"]
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["strategy"] == "lp-ft" and found.data.params["epochs"] == "2"
    val = sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)
    assert [m.value for m in val] == pytest.approx([h["val_loss"] for h in history], rel=1e-6)
    assert len(client.get_metric_history(run_id, "train_loss")) == 3 * STEPS_PER_EPOCH
    assert found.data.metrics["test_macro_f1"] == pytest.approx(result.metrics["test"]["macro_f1"])
    # Both phases went to this one run: the experiment holds no other.
    runs = client.search_runs([found.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]


def test_config_yaml_repeats_the_trackers(tracked):
    cfg, result, _ = tracked
    again = resolve_config(result.run_dir / "config.yaml")
    assert again.loggers == ("csv", "tensorboard", "mlflow")
    assert again == cfg


def test_logger_values_are_checked():
    assert RunConfig.from_mapping({"loggers": "tensorboard"}).loggers == ("tensorboard",)
    with pytest.raises(ConfigError, match="Invalid logger 'tensorbord'. Did you mean 'tensorboard'"):
        RunConfig.from_mapping({"loggers": ["csv", "tensorbord"]})
    with pytest.raises(ConfigError, match="'none' turns tracking off"):
        RunConfig(loggers=("none", "csv"))


def test_missing_extra_is_one_line_before_training(cli, one_clear_line, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    out = tmp_path / "run"
    result = cli("run", "--data", "builtin:photos", "--output", out, "--logger", "csv",
                 "--logger", "tensorboard")
    one_clear_line(result, "--logger tensorboard needs TensorBoard",
                   "pip install 'finetune[tensorboard]'")
    assert not out.exists()


def test_wandb_offline_run_is_written_in_the_run_folder(brick_cat_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    cfg = RunConfig(data=str(brick_cat_dir), output=str(tmp_path / "run"), strategy="linear",
                    head_fit="sgd", epochs=2, image_size=64, batch_size=4, num_workers=0,
                    loggers=("wandb",))
    result = run(cfg, progress=False)
    offline = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = json.loads((result.run_dir / "tracking.json").read_text())["wandb_run_id"]
    assert offline[0].name.endswith(run_id)


def test_lbfgs_head_fit_logs_its_one_epoch(brick_cat_dir, tmp_path):
    """A head fitted by L-BFGS (no Trainer.fit) still leaves its epoch in metrics.csv."""
    cfg = RunConfig(data=str(brick_cat_dir), output=str(tmp_path / "run"), strategy="linear",
                    head_fit="lbfgs", head_refit=False, image_size=64, num_workers=0)
    result = run(cfg, progress=False)
    rows = _csv_rows(result.run_dir)
    (epoch,) = [r for r in rows if "val_loss" in r]
    (history,) = saved_history(result.run_dir / "checkpoints")
    assert epoch["epoch"] == "0" and float(epoch["C"]) == pytest.approx(history["C"])
    assert float(epoch["val_loss"]) == pytest.approx(history["val_loss"], rel=1e-6)
    assert float(epoch["train_loss_epoch"]) == pytest.approx(history["train_loss"], rel=1e-6)
    (final,) = [r for r in rows if "test_accuracy" in r]
    assert float(final["test_accuracy"]) == pytest.approx(result.metrics["test"]["accuracy"])


def test_resume_keeps_the_csv_rows_and_the_mlflow_run(tracked, brick_cat_dir, tmp_path,
                                                     monkeypatch):
    """A run extended with --resume (a larger --epochs) continues its metrics.csv and its
    MLflow run instead of starting them again."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "resumed")  # the store of `tracked`, set up
    cfg = RunConfig(data=str(brick_cat_dir), output=str(tmp_path / "run"), strategy="linear",
                    head_fit="sgd", epochs=2, image_size=64, batch_size=4, num_workers=0,
                    loggers=("csv", "mlflow"), tracking_uri=tracked[0].tracking_uri)
    first = run(cfg, progress=False)
    run_id = json.loads((first.run_dir / "tracking.json").read_text())["mlflow_run_id"]
    second = run(cfg.replace(epochs=4), resume=True, progress=False)
    rows = [r for r in _csv_rows(second.run_dir) if "val_loss" in r]
    history = saved_history(second.run_dir / "checkpoints")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(
        [h["val_loss"] for h in history], rel=1e-6)
    assert json.loads((second.run_dir / "tracking.json").read_text())["mlflow_run_id"] == run_id
    client = MlflowClient(cfg.tracking_uri)
    assert len(client.get_metric_history(run_id, "val_loss")) == 4
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


@pytest.mark.slow  # two spawned processes
def test_ddp_spawn_children_and_parent_share_the_csv(photos_dir, tmp_path):
    """Under ddp_spawn the epochs are logged by child processes and the final metrics by
    the parent: metrics.csv keeps both."""
    cfg = RunConfig(data=str(photos_dir), output=str(tmp_path / "run"), strategy="linear",
                    head_fit="sgd", epochs=2, image_size=32, batch_size=16, num_workers=0,
                    accelerator="cpu", devices="2", distributed="ddp_spawn", loggers=("csv",))
    result = run(cfg, progress=False)
    rows = _csv_rows(result.run_dir)
    assert [int(r["epoch"]) for r in rows if "val_loss" in r] == [0, 1]
    final = [r for r in rows if "test_accuracy" in r]
    assert len(final) == 1
    assert float(final[0]["test_accuracy"]) == pytest.approx(result.metrics["test"]["accuracy"])

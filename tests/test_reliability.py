"""Reliability and security: each test plants a fault and checks what survives.

Crashes mid-run (kill -9, a failing checkpoint write, NaN), resumes that must rebuild the
same run, unsafe pickles and YAML, hostile image folders, and the one-line CLI errors.
docs/reliability.md maps every guarantee to the test here that proves it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _hostile import BROKEN, ODD_VALID, write_bomb, write_broken, write_odd_valid
from PIL import ImageFile

import finetune.training.runner as train_mod
from finetune.config import RunConfig
from finetune.data import DataError
from finetune.models import UnsafeCheckpointError, create_backbone
from finetune.strategies import plan
from finetune.training import evaluate_run, run
from finetune.training.checkpointing import AtomicCheckpointIO, load_checkpoint
from finetune.training.module import FinetuneModule

CLASSES = ("brick", "cat", "coffee", "rocket")


# ---------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def four_dir(photos_dir, tmp_path_factory) -> Path:
    """4 classes x 8 real photos: 6 train, 1 val, 1 test per class."""
    root = tmp_path_factory.mktemp("four") / "data"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for src in sorted((photos_dir / name).iterdir())[:8]:
            shutil.copy(src, root / name / src.name)
    return root


# The linear runs here exercise the epoch loop (checkpoints, NaN, kills, resumes): they
# train the head with AdamW (--head-fit sgd), not linear's default one-shot L-BFGS fit.
def _cfg(data, out, **kw) -> RunConfig:
    base = dict(data=str(data), output=str(out), backbone="efficientnet_lite0", image_size=64,
                batch_size=8, num_workers=0, epochs=3, head_fit="sgd")
    base.update(kw)
    return RunConfig(**base)


def _flags(data, out, **kw) -> list[str]:
    flags = {"data": data, "output": out, "image-size": 64, "batch-size": 8, "num-workers": 0,
             "head-fit": "sgd", **kw}
    return [arg for key, value in flags.items() for arg in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def base_run(four_dir, tmp_path_factory):
    """A finished linear run that the read-only tests share (copy it to change it)."""
    return run(_cfg(four_dir, tmp_path_factory.mktemp("runs") / "base"), progress=False)


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Plant:
    """Unpickling this calls open(marker, "w"): a stand-in for any command a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_pickle(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "payload": _Plant(marker)}, path)
    return path


# ---------------------------------------------------------------------- atomic checkpoints
def _half_then_raise(real_save):
    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    return save


def test_failed_serialisation_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    plugin = AtomicCheckpointIO()
    plugin.save_checkpoint({"epoch": 0, "state_dict": {"w": torch.arange(4.0)}}, path)
    before = _sha(path)
    monkeypatch.setattr(torch, "save", _half_then_raise(torch.save))
    with pytest.raises(OSError, match="No space left"):
        plugin.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(10_000)}}, path)
    assert _sha(path) == before
    assert load_checkpoint(path)["state_dict"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left


def test_failed_write_after_serialisation_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    plugin = AtomicCheckpointIO()
    plugin.save_checkpoint({"epoch": 0}, path)
    before = _sha(path)

    def fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output"):
        plugin.save_checkpoint({"epoch": 1, "big": torch.ones(100_000)}, path)
    assert _sha(path) == before and load_checkpoint(path)["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_same_moment_saved_twice_is_written_once(tmp_path, monkeypatch):
    """best.ckpt and last.ckpt of one epoch: one serialisation, a hard link; a later
    save of either name replaces it without touching the other."""
    plugin = AtomicCheckpointIO()
    saves = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (saves.append(obj["epoch"]),
                                                                  real_save(obj, f, *a, **k)))
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    epoch0 = {"epoch": 0, "global_step": 5, "state_dict": {"w": torch.zeros(3)}}
    plugin.save_checkpoint(epoch0, best)
    plugin.save_checkpoint(epoch0, last)
    assert saves == [0]
    assert best.stat().st_ino == last.stat().st_ino
    epoch1 = {"epoch": 1, "global_step": 10, "state_dict": {"w": torch.ones(3)}}
    plugin.save_checkpoint(epoch1, last)  # val did not improve: only last moves on
    assert saves == [0, 1]
    assert load_checkpoint(best)["state_dict"]["w"].tolist() == [0.0, 0.0, 0.0]
    assert load_checkpoint(last)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]
    plugin.save_checkpoint({"epoch": 1, "global_step": 11}, best)  # another moment: written
    assert saves == [0, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_run_survives_a_failed_checkpoint_write(four_dir, tmp_path, monkeypatch):
    """Inside a real run: the epoch-1 save dies half-written; epoch 0's checkpoints stay
    intact and loadable (and resumable: see the kill -9 test)."""
    out = tmp_path / "run"
    real_save = torch.save

    def flaky_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            return _half_then_raise(real_save)(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space left"):
        run(_cfg(four_dir, out), progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "last.ckpt"]  # and no temp files
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert load_checkpoint(out / "checkpoints" / "best.ckpt")["epoch"] == 0


def test_last_checkpoint_is_written_every_epoch(four_dir, tmp_path, monkeypatch):
    """Lightning 2.6 refreshes save_last only when best improves; ours is every epoch."""
    written = []
    real = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        written.append((Path(path).name, checkpoint["epoch"]))
        return real(self, checkpoint, path, storage_options)

    real_log = FinetuneModule.log

    def worsening_log(self, name, value, *args, **kwargs):
        if name == "val_loss":
            value = float(self.current_epoch)  # val loss gets worse every epoch
        return real_log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    monkeypatch.setattr(FinetuneModule, "log", worsening_log)
    run(_cfg(four_dir, tmp_path / "run"), progress=False)
    assert [e for n, e in written if n == "last.ckpt"] == [0, 1, 2]
    assert [e for n, e in written if n == "best.ckpt"] == [0]


# ---------------------------------------------------------------------- kill -9, resume
def _frozen_state_keys(model, phase) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    keys = []
    for stage in phase.frozen_stages(model):
        for module in stage.modules:
            prefix = names[id(module)]
            keys += [f"{prefix}.{k}" for k in module.state_dict()]
    return keys


@pytest.mark.slow
def test_kill_9_then_resume_continues_the_same_run(cli, brick_cat_dir, tmp_path):
    """SIGKILL a `finetune run` child after its first checkpoint, then `--resume` it with a
    larger --epochs: it continues from where it died (same phase, frozen stages, BN
    statistics, optimizer groups, schedule position) and runs to the new end."""
    out = tmp_path / "run"

    def args_for(epochs: int) -> list[str]:
        sizes = {"batch-size": 4, "image-size": 32}  # the smallest the backbone takes: fast
        return ["run", *_flags(brick_cat_dir, out, strategy="partial", epochs=epochs, **sizes), "-q"]

    args = args_for(5)
    env = {**os.environ, "FINETUNE_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "finetune", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    _, stderr = child.communicate()
    assert child.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    killed = load_checkpoint(last)  # complete: writes are atomic
    assert killed["epoch"] < 4  # killed before its 5 epochs were done
    steps_per_epoch = killed["global_step"] // (killed["epoch"] + 1)
    assert steps_per_epoch == 3  # 12 training images, batch 4

    result = cli(*args_for(6), "--resume")  # continue, and extend 5 -> 6 epochs
    assert result.exit_code == 0, result.output
    final = load_checkpoint(last)
    assert final["epoch"] == 5 and final["global_step"] == 6 * steps_per_epoch
    # Same phase and frozen stages, same optimizer groups, scheduler continued per step.
    cfg = _cfg(brick_cat_dir, out, strategy="partial")
    pretrained = create_backbone("efficientnet_lite0", pretrained=True, num_classes=2)
    phase = plan(cfg, pretrained)[0]
    for ckpt in (killed, final):
        assert ckpt["finetune"]["phase"] == "partial"
        assert ckpt["finetune"]["trainable_stages"] == [s.name for s in phase.trainable_stages(pretrained)]
        assert ckpt["lr_schedulers"][0]["last_epoch"] == ckpt["global_step"]
    groups = [[(g["name"], g["initial_lr"], g["weight_decay"], g["params"])
               for g in c["optimizer_states"][0]["param_groups"]] for c in (killed, final)]
    assert groups[0] == groups[1]
    assert [g[0] for g in groups[0]] == [g["name"] for g in phase.param_groups(pretrained, cfg)]
    assert [row["epoch"] for row in final["finetune"]["history"]] == [0, 1, 2, 3, 4, 5]
    # BN policy: every frozen parameter and BatchNorm statistic is bit-identical to the
    # pretrained weights after the kill and the resume; the trained stage did move.
    reference = pretrained.state_dict()
    frozen = _frozen_state_keys(pretrained, phase)
    assert sum(k.endswith("running_mean") for k in frozen) > 10
    for name in ("last.ckpt", "best.ckpt"):
        state = load_checkpoint(out / "checkpoints" / name)["state_dict"]
        for key in frozen:
            assert torch.equal(state[f"model.{key}"], reference[key]), key
    trained = [k for k in reference if k not in frozen and k.endswith("running_mean")]
    assert any(not torch.equal(final["state_dict"][f"model.{k}"], reference[k]) for k in trained)


def test_resume_inside_lp_ft_second_phase_skips_the_probe(brick_cat_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(_cfg(brick_cat_dir, out, strategy="lp-ft", lp_epochs=1, epochs=1, image_size=32), progress=False)
    probe = out / "checkpoints" / "linear" / "last.ckpt"
    before = (_sha(probe), probe.stat().st_mtime_ns)
    extracted, histories = [], []
    real_features, real_report = train_mod.feature_splits, train_mod.write_report
    monkeypatch.setattr(train_mod, "feature_splits",
                        lambda *a, **k: extracted.append(1) or real_features(*a, **k))
    monkeypatch.setattr(train_mod, "write_report",
                        lambda d, m, history, *a, **k: histories.append(history) or real_report(d, m, history, *a, **k))
    result = run(_cfg(brick_cat_dir, out, strategy="lp-ft", lp_epochs=1, epochs=2, image_size=32),
                 resume=True, progress=False)
    assert (_sha(probe), probe.stat().st_mtime_ns) == before  # the probe phase was not redone
    assert extracted == []  # not even its feature extraction
    final = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert final["finetune"]["phase"] == "full" and final["epoch"] == 1
    assert final["global_step"] == 2 * 1  # 12 training images, batch 8, ragged batch dropped
    assert [row["phase"] for row in histories[0]] == ["linear", "full", "full"]
    assert result.metrics["trainable_params"] == result.metrics["total_params"]


# ---------------------------------------------------------------------- NaN / Inf
def test_nan_loss_stops_the_run_naming_step_and_cause(cli, one_clear_line, four_dir, tmp_path, monkeypatch):
    real_loss = FinetuneModule._loss

    def poisoned(self, logits, y):
        loss = real_loss(self, logits, y)
        return loss * float("nan") if self.global_step == 4 else loss

    monkeypatch.setattr(FinetuneModule, "_loss", poisoned)
    out = tmp_path / "run"
    result = cli("run", *_flags(four_dir, out, epochs=3), "-q")
    one_clear_line(result, "Loss is nan at epoch 1, step 4 of phase 'linear'",
                    "learning rate (0.01) is likely too high", "--lr")
    # Epoch 0 finished before the NaN: its checkpoint is what remains, finite.
    state = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("val_fraction", [0.15, 0.0], ids=["with-val", "no-val"])
def test_diverged_weights_are_never_saved(four_dir, tmp_path, monkeypatch, val_fraction):
    """The weights turn NaN at the end of epoch 1's training; validation (or, without a
    val split, the checkpoint hook) stops the run before anything NaN is written."""

    def diverge(self, outputs, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == self.trainer.num_training_batches - 1:
            with torch.no_grad():
                self.model.get_classifier().weight.fill_(float("nan"))

    monkeypatch.setattr(FinetuneModule, "on_train_batch_end", diverge, raising=False)
    out = tmp_path / "run"
    expected = "Validation loss is nan after epoch 1" if val_fraction else "Not saving a checkpoint at epoch 1"
    with pytest.raises(FloatingPointError, match=expected):
        run(_cfg(four_dir, out, val_fraction=val_fraction), progress=False)
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = load_checkpoint(out / "checkpoints" / name)
        assert ckpt["epoch"] == 0, name
        assert torch.isfinite(ckpt["state_dict"]["model.classifier.weight"]).all()


# ---------------------------------------------------------------------- class lists
def test_resume_on_changed_classes_is_explained(base_run, four_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(four_dir, data)
    shutil.copytree(four_dir / "cat", data / "kitten")
    run_dir = _copy_run(base_run.run_dir, tmp_path / "run")
    with pytest.raises(DataError, match=r"classes in .* changed since the run started \(new: kitten\)"):
        run(_cfg(data, run_dir), resume=True, progress=False)
    shutil.rmtree(data / "kitten")
    shutil.rmtree(data / "rocket")
    with pytest.raises(ValueError, match=r"\(gone: rocket\).*trained on 4 classes"):
        run(_cfg(data, run_dir), resume=True, progress=False)
    # The class order of splits.json edited: the checkpoint's stored list catches it.
    splits = json.loads((run_dir / "splits.json").read_text())
    splits["classes"] = list(reversed(splits["classes"]))
    (run_dir / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(ValueError, match=r"trained on classes \['brick', 'cat', 'coffee', 'rocket'\], "
                                         r"but the data now has \['rocket', 'coffee', 'cat', 'brick'\]"):
        run(_cfg(four_dir, run_dir, epochs=4), resume=True, progress=False)


def test_evaluate_on_other_data_maps_labels_by_name(cli, one_clear_line, base_run, four_dir, tmp_path):
    # Two of the four classes: index 0 and 1 here are 'coffee' and 'rocket' (2 and 3 in the run).
    subset = tmp_path / "subset"
    for name in ("coffee", "rocket"):
        shutil.copytree(four_dir / name, subset / name)
    m = evaluate_run(base_run.run_dir, str(subset), progress=False)
    assert m["num_samples"] == 16
    assert m["per_class"]["coffee"]["support"] == 8 and m["per_class"]["rocket"]["support"] == 8
    assert m["per_class"]["brick"]["support"] == 0
    assert m["accuracy"] >= 0.9  # silently re-indexed labels would score near 0
    (subset / "kitten").mkdir()
    shutil.copy(next((four_dir / "cat").iterdir()), subset / "kitten" / "k.png")
    result = cli("evaluate", base_run.run_dir, "--data", subset)
    one_clear_line(result, "classes the run never saw: kitten", "brick, cat, coffee, rocket")


# ---------------------------------------------------------------------- determinism
def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "best.ckpt")["state_dict"]


def _assert_identical_runs(a, b) -> None:
    assert a.metrics["test"] == b.metrics["test"] and a.metrics["val"] == b.metrics["val"]
    wa, wb = _weights(a.run_dir), _weights(b.run_dir)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert different == []


def test_same_seed_same_linear_run(base_run, four_dir, tmp_path):
    _assert_identical_runs(base_run, run(_cfg(four_dir, tmp_path / "again"), progress=False))


@pytest.mark.slow
def test_same_seed_same_partial_run(brick_cat_dir, tmp_path):
    """Augmented images through unfrozen stages (dropout, BN updates, shuffling) twice."""
    a = run(_cfg(brick_cat_dir, tmp_path / "a", strategy="partial", epochs=2, image_size=32), progress=False)
    b = run(_cfg(brick_cat_dir, tmp_path / "b", strategy="partial", epochs=2, image_size=32), progress=False)
    _assert_identical_runs(a, b)
    # The trained stage really moved, so equality above is not two untouched copies.
    pretrained = create_backbone("efficientnet_lite0", pretrained=True, num_classes=2).state_dict()
    weights = _weights(a.run_dir)
    moved = [k for k, v in pretrained.items() if "classifier" not in k
             and not torch.equal(weights[f"model.{k}"], v)]
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)


# ---------------------------------------------------------------------- unsafe input
def test_planted_pickle_is_a_real_threat(tmp_path):
    """Control: loaded unsafely, the plant does create its file."""
    marker = tmp_path / "pwned"
    torch.load(_plant_pickle(tmp_path / "w.pth", marker), weights_only=False)
    assert marker.exists()


def test_planted_pickle_refused_via_weights(cli, one_clear_line, four_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = _plant_pickle(tmp_path / "evil.pth", marker)
    result = cli("run", *_flags(four_dir, tmp_path / "run", weights=evil), "-q")
    one_clear_line(result, f"Refusing to load '{evil}'", "arbitrary code")
    assert not marker.exists()


def test_planted_pickle_refused_in_a_run_folder(cli, one_clear_line, base_run, four_dir, tmp_path):
    marker = tmp_path / "pwned"
    run_dir = _copy_run(base_run.run_dir, tmp_path / "run")
    _plant_pickle(run_dir / "checkpoints" / "best.ckpt", marker)
    one_clear_line(cli("evaluate", run_dir), "Refusing to load", "best.ckpt")
    _plant_pickle(run_dir / "checkpoints" / "last.ckpt", marker)
    result = cli("run", *_flags(four_dir, run_dir, epochs=4), "--resume", "-q")
    one_clear_line(result, "Refusing to load checkpoint", "last.ckpt")
    assert not marker.exists()


def test_planted_pickle_refused_from_a_download(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = _plant_pickle(tmp_path / "served.pth", marker)
    monkeypatch.delenv("FINETUNE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    fetched = []
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, **kw: fetched.append(url) or shutil.copy(evil, dst))
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        create_backbone("resnet18", pretrained=True, num_classes=3)
    assert fetched == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"not safetensors at all",
                                     b"\xff" * 8 + b"{}",  # header length far beyond the file
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": [1, 2, 3]}"])
def test_malformed_safetensors_is_one_clean_line(cli, one_clear_line, four_dir, tmp_path, content):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(content)
    result = cli("run", *_flags(four_dir, tmp_path / "run", weights=bad), "-q")
    one_clear_line(result, f"'{bad}' is not a valid safetensors file")


def test_yaml_recipe_with_python_tag_is_refused(cli, one_clear_line, tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"strategy: linear\nepochs: !!python/object/apply:os.system ['touch {marker}']\n")
    one_clear_line(cli("run", "--recipe", recipe), f"Recipe '{recipe}' is not valid YAML",
                    "python/object/apply:os.system")
    assert not marker.exists()


def _call_text(text: str, start: int) -> str:
    """``name(...)`` starting at ``start``, its arguments spanning any line breaks."""
    depth, i = 0, text.index("(", start)
    while i < len(text):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            break
        i += 1
    return text[start:i + 1]


def test_every_loader_in_the_package_is_safe():
    """No unrestricted unpickling or YAML loading anywhere in finetune/ (a new call site
    must use weights_only=True, safetensors, or yaml.safe_load)."""
    package = Path(__file__).resolve().parents[1] / "finetune"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), start=1):
            code = line.split("#")[0]
            if any(bad in code for bad in ("pickle.load(", "pickle.loads(", "yaml.load(",
                                           "unsafe_load", "weights_only=False")):
                offenders.append(f"{path.relative_to(package)}:{n}: {line.strip()}")
        for start in [i for i in range(len(text)) if text.startswith("torch.load(", i)]:
            call = _call_text(text, start)
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(package)}: {call}")
    assert offenders == []


# ---------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("case", ["missing", "file", "csv-columns", "csv-missing", "one-class",
                                  "nothing-to-resume", "image-size", "backbone", "strategy"])
def test_user_errors_are_one_line(cli, one_clear_line, case, four_dir, tmp_path):
    image = next((four_dir / "cat").iterdir())
    csv = tmp_path / "m.csv"
    if case == "missing":
        args, needles = _flags(tmp_path / "nope", tmp_path / "r"), [f"'{tmp_path / 'nope'}' does not exist"]
    elif case == "file":
        args, needles = _flags(image, tmp_path / "r"), ["is a file, not a folder"]
    elif case == "csv-columns":
        csv.write_text(f"file,class\n{image},cat\n")
        args, needles = _flags(csv, tmp_path / "r"), ["unknown: file, class", "path,label"]
    elif case == "csv-missing":
        csv.write_text(f"path,label\n{image},cat\nghost.png,dog\n")
        args, needles = _flags(csv, tmp_path / "r"), ["1 file(s) that do not exist: ghost.png"]
    elif case == "one-class":
        shutil.copytree(four_dir / "cat", tmp_path / "d" / "cat")
        (tmp_path / "d" / "dog").mkdir()  # empty: excluded, leaving one class
        args, needles = _flags(tmp_path / "d", tmp_path / "r"), ["has 1 class(es) with usable images (cat)",
                                                                 "at least two"]
    elif case == "nothing-to-resume":
        args = [*_flags(four_dir, tmp_path / "r"), "--resume"]
        needles = ["Nothing to resume in", "no checkpoint was written there yet"]
    elif case == "image-size":
        args = [*_flags(four_dir, tmp_path / "r"), "--image-size", "16"]
        needles = ["--image-size 16 is too small", "at least 32"]
    elif case == "backbone":
        args, needles = ["--backbone", "efficientnet_lit0"], ["Unknown backbone", "efficientnet_lite0"]
    else:
        args, needles = ["--strategy", "parital"], ["'parital'", "partial"]
    one_clear_line(cli("run", *args, "-q"), *needles)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; "
                    "test_permission_denied_is_one_line covers the same path as root")
def test_unreadable_manifest_is_one_line(cli, one_clear_line, four_dir, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text(f"path,label\n{next((four_dir / 'cat').iterdir())},cat\n")
    csv.chmod(0)
    one_clear_line(cli("run", *_flags(csv, tmp_path / "r"), "-q"), "Permission denied")


def test_permission_denied_is_one_line(cli, one_clear_line, four_dir, tmp_path, monkeypatch):
    import finetune.data.sources as sources

    csv = tmp_path / "m.csv"
    csv.write_text(f"path,label\n{next((four_dir / 'cat').iterdir())},cat\n")

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sources, "open", denied, raising=False)
    one_clear_line(cli("run", *_flags(csv, tmp_path / "r"), "-q"),
                    f"Cannot read '{csv}': Permission denied")


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError()], ids=["cuda", "host"])
def test_out_of_memory_names_the_flag(cli, one_clear_line, four_dir, tmp_path, monkeypatch, error):
    def step(self, batch, batch_idx):
        raise error

    monkeypatch.setattr(FinetuneModule, "training_step", step)
    result = cli("run", *_flags(four_dir, tmp_path / "r", strategy="partial", epochs=1), "-q")
    one_clear_line(result, "Out of memory", "--batch-size")


# ---------------------------------------------------------------------- hostile data
def test_hostile_folder_trains_and_lists_what_it_skipped(cli, four_dir, tmp_path):
    data = tmp_path / "data"
    for name in ("brick", "cat"):
        shutil.copytree(four_dir / name, data / name)
    write_odd_valid(data / "cat")
    write_broken(data / "brick")
    write_bomb(data / "cat" / "bomb.png")
    (data / "brick" / "notes.txt").write_text("not a picture")
    (data / "empty_class").mkdir()
    out = tmp_path / "run"
    result = cli("run", *_flags(data, out, epochs=2), "-q")
    assert result.exit_code == 0, result.output
    assert "Skipped 6 unreadable files" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {*BROKEN, "bomb.png", "notes.txt"}
    assert {Path(e.split(": ", 1)[0]).name for e in metrics["skipped_files"]} == expected
    listed = (out / "report" / "skipped_files.txt").read_text().splitlines()
    assert {Path(e.split(": ", 1)[0]).name for e in listed} == expected
    assert metrics["classes"] == ["brick", "cat"]  # the empty folder is not a class
    splits = json.loads((out / "splits.json").read_text())
    used = {Path(p).name for part in ("train", "val", "test") for p, label in splits[part] if label == "cat"}
    assert set(ODD_VALID) <= used  # every odd-but-valid image is used
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on to get through
    assert sum(len(splits[p]) for p in ("train", "val", "test")) == 8 + 8 + len(ODD_VALID)

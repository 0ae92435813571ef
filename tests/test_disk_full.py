"""A full disk loses nothing: real write failures in a child process.

The child lowers ``RLIMIT_FSIZE`` and ignores ``SIGXFSZ``, so every ``write()`` past the
limit fails with EFBIG, as it would with ENOSPC on a full disk, then runs the CLI. Each
test checks the one line the user sees (which file, which fix), the exit code, that the
previous checkpoint, cache entry or export is whole, and that the same command without
the limit then works. docs/reliability.md, "A full disk".
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import finetune
from finetune.config import RunConfig
from finetune.training import run

# The child: the limit first, then the CLI, as `finetune ARGS...` would run.
_LIMITED = """
import resource, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from finetune.cli import main
main(sys.argv[2:], prog_name="finetune")
"""
FULL = "No space left while writing "


def _limited(limit: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    # os.environ holds what conftest set: offline, and the session's cache folders.
    return subprocess.run([sys.executable, "-c", _LIMITED, str(limit), *map(str, args)],
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)


def _one_line(result: subprocess.CompletedProcess) -> str:
    """The single error line of a child the limit stopped (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith(f"Error: {FULL}"), errors[0]
    assert "(EFBIG: File too large)" in errors[0], errors[0]
    return errors[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of the atomic writers (io.py, export.py)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith((".tmp-", ".")) and p.name != ".lock")


def _flags(data: Path, out: Path, **kw) -> list[str]:
    flags = {"data": data, "output": out, "backbone": "efficientnet_lite0", "image-size": 32,
             "batch-size": 4, "num-workers": 0, "accelerator": "cpu", **kw}
    return [a for k, v in flags.items() for a in (f"--{k}", str(v))]


@pytest.fixture(scope="module")
def linear_small(brick_cat_dir, tmp_path_factory) -> Path:
    """A finished linear run on the small folder (the tests copy it before changing it),
    its head trained for epochs (sgd): a resume then redoes only the evaluation."""
    out = tmp_path_factory.mktemp("runs") / "linear"
    run(RunConfig(data=str(brick_cat_dir), output=str(out), backbone="efficientnet_lite0",
                  image_size=32, batch_size=4, num_workers=0, accelerator="cpu", epochs=2,
                  head_fit="sgd"), progress=False)
    return out


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_write_past_the_limit_keeps_the_previous_one(brick_cat_dir, tmp_path, cli):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    first = cli("run", *_flags(brick_cat_dir, out, strategy="partial", epochs=1), "-q")
    assert first.exit_code == 0, first.output
    before = _sha(ckpts / "last.ckpt")

    # Epoch 1's checkpoint (35 MB) cannot be written under 1 MB; config.yaml and
    # splits.json (a few kB) can.
    resumed = _limited(1_000_000, "run", *_flags(brick_cat_dir, out, strategy="partial", epochs=2),
                       "-q", "--resume", cwd=tmp_path)
    line = _one_line(resumed)
    assert re.fullmatch(
        rf"Error: {FULL}{re.escape(str(ckpts))}/(best|last)\.ckpt \(EFBIG: File too large\): "
        rf"free space, then continue with --resume; the previous checkpoint "
        rf"{re.escape(str(ckpts / 'last.ckpt'))} is intact\.", line), line
    assert _sha(ckpts / "last.ckpt") == before
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0 and last["state_dict"]  # whole, and the epoch before the failure
    assert _leftovers(ckpts) == []

    again = cli("run", *_flags(brick_cat_dir, out, strategy="partial", epochs=2), "-q", "--resume")
    assert again.exit_code == 0, again.output
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 1


# ---------------------------------------------------------------------- feature cache
def test_feature_cache_past_the_limit_leaves_no_half_entry(brick_cat_dir, tmp_path, cli):
    out, cache = tmp_path / "run", tmp_path / "features"
    args = _flags(brick_cat_dir, out, strategy="linear", epochs=1, **{"feature-cache-dir": cache})
    # 12 training images x 1280 float32 features = 61 kB > 20 kB; the run's own files fit.
    line = _one_line(_limited(20_000, "run", *args, "-q", cwd=tmp_path))
    assert line.startswith(f"Error: {FULL}{cache}/"), line
    assert line.endswith(f"free space in {cache} or point --feature-cache-dir (or "
                         f"FINETUNE_CACHE_DIR) at a bigger disk; no part of the entry was "
                         f"kept."), line
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no entry, no temp file
    assert not (out / "checkpoints").exists()

    again = cli("run", *args, "-q", "--overwrite")
    assert again.exit_code == 0, again.output
    entries = [p.parent for p in cache.rglob("meta.json")]
    assert len(entries) == 3  # train, val, test: each complete
    assert _leftovers(cache) == []
    train = max(entries, key=lambda e: (e / "features.npy").stat().st_size)
    assert np.load(train / "features.npy", mmap_mode="r").shape == (12, 1280)


# ---------------------------------------------------------------------- image cache
def test_image_cache_past_the_limit_leaves_no_half_entry(brick_cat_dir, tmp_path, cli):
    out, cache = tmp_path / "run", tmp_path / "images"
    args = _flags(brick_cat_dir, out, strategy="partial", epochs=1, **{"image-cache-dir": cache})
    # The training images decoded at >= 114 px (RandomResizedCrop's reach) need far more.
    line = _one_line(_limited(20_000, "run", *args, "--image-cache", "-q", cwd=tmp_path))
    assert line.startswith(f"Error: {FULL}{cache}/"), line
    assert line.endswith(f"free space in {cache}, point --image-cache-dir (or "
                         f"FINETUNE_IMAGE_CACHE_DIR) at a bigger disk, or train without "
                         f"--image-cache; no part of the entry was kept."), line
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert not (out / "checkpoints").exists()

    again = cli("run", *args, "--image-cache", "-q", "--overwrite")
    assert again.exit_code == 0, again.output
    assert len(list(cache.rglob("meta.json"))) >= 1 and _leftovers(cache) == []


# ---------------------------------------------------------------------- report
def test_report_past_the_limit_is_one_line_and_resume_rewrites_it(linear_small, brick_cat_dir,
                                                                   tmp_path, cli):
    out = tmp_path / "run"
    shutil.copytree(linear_small, out)
    shutil.rmtree(out / "report")
    args = _flags(brick_cat_dir, out, strategy="linear", epochs=2, **{"head-fit": "sgd"})
    # metrics.json (3 kB) fits under 20 kB, the report's figures (40-60 kB) do not.
    line = _one_line(_limited(20_000, "run", *args, "-q", "--resume", cwd=tmp_path))
    named = re.fullmatch(
        rf"Error: {FULL}({re.escape(str(out / 'report'))}/\w+\.png) \(EFBIG: File too large\): "
        r"free space, then rerun the command with --resume: the checkpoints are complete and "
        r"only the evaluation is redone\.", line)
    assert named, line
    assert (out / "metrics.json").is_file() and _leftovers(out) == []

    again = cli("run", *args, "-q", "--resume")
    assert again.exit_code == 0, again.output
    assert (out / "report" / "summary.md").is_file()
    assert Path(named[1]).stat().st_size > 20_000  # the figure that did not fit, now whole
    assert _leftovers(out) == []


# ---------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", [
    "safetensors",
    pytest.param("onnx", marks=pytest.mark.slow),
    pytest.param("torchscript", marks=pytest.mark.slow),
])
def test_export_past_the_limit_keeps_the_previous_export(linear_small, brick_cat_dir, tmp_path, cli,
                                                         fmt):
    dest = tmp_path / "export"
    first = cli("export", linear_small, "--format", fmt, "--output", dest)
    assert first.exit_code == 0, first.output
    files = {p.name: _sha(p) for p in dest.iterdir()}

    line = _one_line(_limited(1_000_000, "export", linear_small, "--format", fmt, "--output",
                              dest, "--overwrite", cwd=tmp_path))
    assert line == (f"Error: {FULL}{dest} (EFBIG: File too large): free space in {tmp_path} "
                    f"or export with --output to another disk; the previous export in {dest} "
                    f"is intact."), line
    assert {p.name: _sha(p) for p in dest.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no .partial, no .old
    # Usable: it predicts what the run's own model predicts.
    images = sorted((brick_cat_dir / "cat").iterdir())[:2]
    expected = finetune.load(linear_small).predict_proba(images)
    assert expected.shape == (2, 2)
    np.testing.assert_allclose(finetune.load(dest).predict_proba(images), expected, atol=1e-4)

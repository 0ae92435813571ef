"""Shared fixtures. The suite never touches the network: offline mode is forced here, for
this process and every child it starts, so no test needs to set it again.

Session-scoped fixtures are built once and shared by every file that asks: a test that
changes one (a model's weights, a dataset's files) works on a copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ["FINETUNE_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: one intra-op thread per core keeps timings steady and avoids oversubscription.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _cache_dirs(tmp_path_factory):
    """Cached features (finetune/feature_cache.py) and decoded images (data/image_cache.py)
    go to the session's temporary folders, never the user's ~/.cache; child processes
    inherit them through the environment."""
    names = {"FINETUNE_CACHE_DIR": "feature-cache", "FINETUNE_IMAGE_CACHE_DIR": "image-cache"}
    before = {name: os.environ.get(name) for name in names}
    for name, folder in names.items():
        os.environ[name] = str(tmp_path_factory.mktemp(folder))
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def one_thread():
    """Small batches (tens of images at 32-64 px) are not worth splitting across cores: with
    two threads the hand-offs cost more than the work, and far more when other processes
    share the cores. Files of such tests ask for it with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cli():
    """Runs ``finetune ARGS...`` in this process (click's CliRunner) and returns click's
    Result; arguments may be paths or numbers."""
    from click.testing import CliRunner

    from finetune.cli import main

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def one_clear_line():
    """Checks a CLI Result that a user error ended: the exit code (2: click's usage error),
    no traceback, exactly one line starting with "Error", and that line names every needle."""

    def check(result, *needles, exit_code=2):
        assert result.exit_code == exit_code, result.output
        assert "Traceback" not in result.output
        errors = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
        assert len(errors) == 1, result.output
        for needle in needles:
            assert needle in errors[0], errors[0]

    return check


# ---------------------------------------------------------------------------- models
@pytest.fixture
def images() -> torch.Tensor:
    """Two 64 px noise images, the same in every test: (B, C, H, W) = (2, 3, 64, 64)."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME, for tests of where pretrained weights are found; torch's hub
    cache is its hub/ folder. torch.hub.get_dir() prefers a folder set by
    torch.hub.set_dir() over $TORCH_HOME and reads both at call time, so that is cleared too."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    return tmp_path


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0 with its packaged ImageNet weights (the package's default
    backbone, offline), in eval mode."""
    from finetune.models import create_backbone

    return create_backbone("efficientnet_lite0", pretrained=True).eval()


# ---------------------------------------------------------------------------- runs
@pytest.fixture(scope="session")
def linear_run(photos_dir, tmp_path_factory):
    """One finished ``finetune run``: a linear head on EfficientNet-Lite0's packaged
    weights, the photos at 96 px, 15 epochs on cached features (seconds). The tests that
    read a run folder share it; a test that changes a run copies the folder first, and one
    that reruns it reads its config.yaml."""
    from finetune.config import RunConfig
    from finetune.training import run

    cfg = RunConfig(data=str(photos_dir), output=str(tmp_path_factory.mktemp("runs") / "linear"),
                    backbone="efficientnet_lite0", image_size=96, batch_size=16, num_workers=0, epochs=15)
    return run(cfg, progress=False)


# ---------------------------------------------------------------------------- datasets
@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
    """The built-in natural-photo dataset, small: real crops of scikit-image's photos."""
    from finetune.data.builtin import build_dataset

    return build_dataset("photos", root=tmp_path_factory.mktemp("datasets"), per_class=16, size=96)


@pytest.fixture(scope="session")
def brick_cat_dir(photos_dir, tmp_path_factory) -> Path:
    """2 classes x 8 real photos (12 train, 2 val, 2 test at the default split): runs of a
    few seconds for the tests that start, kill and resume real runs. Read-only."""
    root = tmp_path_factory.mktemp("brick-cat") / "data"
    for name in ("brick", "cat"):
        (root / name).mkdir(parents=True)
        for src in sorted((photos_dir / name).iterdir())[:8]:
            shutil.copy(src, root / name / src.name)
    return root


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """Handwritten digits, 30 per class at 64 px: data far from ImageNet."""
    from finetune.data.builtin import build_dataset

    return build_dataset("digits", root=tmp_path_factory.mktemp("datasets"), per_class=30, size=64)

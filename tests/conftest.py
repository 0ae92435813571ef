"""Shared fixtures. The suite never touches the network: offline mode is forced here."""

from __future__ import annotations

import os

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


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
    """The built-in natural-photo dataset, small: real crops of scikit-image's photos."""
    from finetune.data.builtin import build_dataset

    return build_dataset("photos", root=tmp_path_factory.mktemp("datasets"), per_class=16, size=96)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    from finetune.data.builtin import build_dataset

    return build_dataset("digits", root=tmp_path_factory.mktemp("datasets"), per_class=30, size=64)

"""The benchmark's tasks (tasks.py) and run plan (oracle.py): sizes that nest, corruptions
that change only the pixels, a build that is not reused under another layout, and the jobs
still to run.

    pytest benchmarks/recommend        # outside the package's suite (tests/)
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _images(split_dir: Path) -> dict[str, list[bytes]]:
    from PIL import Image

    return {c.name: [Image.open(f).tobytes() for f in sorted(c.glob("*.png"), key=lambda p: int(p.stem))]
            for c in sorted(split_dir.iterdir())}


def test_sizes_above_the_pool_nest_and_leave_the_smaller_sizes_unchanged(tmp_path, monkeypatch):
    """A size above the pool (here 40 over a pool of 20, as 200 over 100) keeps the pool's
    val and train images and adds new ones from a second stream; test images are the same
    at every size, no image is in two splits, and the smaller sizes are the images that a
    build without the large size writes."""
    import tasks

    monkeypatch.setattr(tasks, "POOL", 20)
    monkeypatch.setattr(tasks, "LARGEST", 40)
    monkeypatch.setattr(tasks, "TEST_PER_CLASS", 4)
    small = tasks.build_task("grey-crops", tmp_path / "a", sizes=(5, 20))
    both = tasks.build_task("grey-crops", tmp_path / "b", sizes=(5, 20, 40))
    for size in (5, 20):
        assert tasks.pixel_digest(small[size]) == tasks.pixel_digest(both[size])
    split = {(size, name): _images(both[size] / name) for size in (20, 40) for name in ("train", "val", "test")}
    for cls, test in split[20, "test"].items():
        assert split[40, "test"][cls] == test
        assert split[40, "train"][cls][:20] == split[20, "train"][cls] and len(split[40, "train"][cls]) == 40
        assert split[40, "val"][cls][:5] == split[20, "val"][cls] and len(split[40, "val"][cls]) == 10
        large = split[40, "train"][cls] + split[40, "val"][cls] + test
        assert len(set(large)) == len(large)  # the second stream repeats no image
    with pytest.raises(ValueError, match="raise tasks.LARGEST"):
        tasks.task_sizes("grey-crops", (80,))


def test_corrupted_sources_keep_their_classes_and_change_only_the_pixels():
    """The early-shift line's held-out tasks: the corruption of another source keeps its
    classes and image count; pixelate leaves 8 x 8-pixel blocks (96 / 12) of one colour; dither leaves each
    channel at 0 or 255, and the clean photos it starts from are not already so."""
    import numpy as np
    import tasks

    clean = tasks.TASKS["textures"](3, 0)
    built = {name: tasks.TASKS[name](3, 0) for name in ("textures-pixelate", "grey-crops-pixelate", "photos-dither")}
    for arrays in built.values():
        assert len(arrays) == 8 and all(len(v) == 3 and v[0].shape == (96, 96, 3) for v in arrays.values())
    pixelated = built["textures-pixelate"]
    assert sorted(pixelated) == sorted(clean)
    for images in pixelated.values():
        blocks = images[0].reshape(12, 8, 12, 8, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()
    photos = tasks.TASKS["photos"](3, 0)
    assert sorted(built["photos-dither"]) == sorted(photos)
    for images in built["photos-dither"].values():
        assert set(np.unique(images[0])) <= {0, 255}
    assert all(len(np.unique(v[0])) > 2 for v in photos.values())


def test_plan_lists_the_runs_not_done_cell_by_cell(monkeypatch, tmp_path):
    """`oracle.py --plan`: one TASK:SEED:ARM job per arm of each cell (the recommender's
    extra picks included), cells in task then seed order, finished runs left out."""
    import oracle

    monkeypatch.setattr(oracle, "build_task", lambda task, root, sizes: {s: tmp_path / task for s in sizes})
    monkeypatch.setattr(oracle, "cell_arms", lambda args, task, size, path: ["full", "linear"]
                        + (["partial-3"] if task == "fonts" else []))
    args = oracle.argparse.Namespace(tasks=["fonts", "photos"], sizes=[200], seeds=[0, 1], lrs="default", root="")
    done = {("fonts", 200, "linear", 0, "0.01"), ("photos", 200, "full", 1, "0.001")}
    assert oracle.plan(args, done) == [
        "fonts:0:full", "fonts:0:partial-3", "fonts:1:full", "fonts:1:linear", "fonts:1:partial-3",
        "photos:0:full", "photos:0:linear", "photos:1:linear"]


def test_a_build_under_another_layout_is_not_reused(tmp_path, monkeypatch):
    """Changing LARGEST re-draws the sizes above the pool, so the finished build's marker
    must not let the old images through."""
    import tasks

    monkeypatch.setattr(tasks, "POOL", 20)
    monkeypatch.setattr(tasks, "TEST_PER_CLASS", 4)
    monkeypatch.setattr(tasks, "LARGEST", 40)
    before = tasks.pixel_digest(tasks.build_task("grey-crops", tmp_path, sizes=(30,))[30])
    monkeypatch.setattr(tasks, "LARGEST", 60)
    after = tasks.pixel_digest(tasks.build_task("grey-crops", tmp_path, sizes=(30,))[30])
    assert before != after

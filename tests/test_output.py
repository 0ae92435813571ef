"""Output that suits where it goes: with stdout in a file (as in CI), no carriage-return
progress at all, one line per training epoch instead."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from finetune.training.output import interactive

EPOCH_LINE = re.compile(r"^linear epoch (\d+)/3: train loss [\d.e-]+, val loss [\d.e-]+, "
                        r"val accuracy [\d.]+ \(\d+\.\d s\)$")


def test_run_to_a_file_writes_one_line_per_epoch(brick_cat_dir, tmp_path):
    log = tmp_path / "log.txt"
    # A fresh feature cache, so that the features are extracted (a bar on a terminal) too.
    env = {**os.environ, "FINETUNE_CACHE_DIR": str(tmp_path / "cache")}
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "finetune", "run", "--data", str(brick_cat_dir), "--output",
             str(tmp_path / "run"), "--strategy", "linear", "--head-fit", "sgd", "--epochs", "3",
             "--image-size", "64", "--batch-size", "4", "--num-workers", "0",
             "--accelerator", "cpu", "--logger", "none"],
            stdout=out, stderr=subprocess.STDOUT, env=env, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    epochs = [m for m in map(EPOCH_LINE.match, text.splitlines()) if m]
    assert [int(m.group(1)) for m in epochs] == [1, 2, 3], text
    assert "features train" in text  # the extraction ran, without a bar
    assert len(text.encode()) < 5000


def test_interactive_only_for_a_terminal():
    assert not interactive(io.StringIO())
    with open(os.devnull, "w") as null:
        assert not interactive(null)

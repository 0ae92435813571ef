"""One run per folder: ``RUN_DIR/.lock`` (finetune/run_folder.py ``lock_run_dir``).

Two ``finetune run`` processes on one folder, a ``--resume`` while the run still trains,
and a ``--resume`` after the run was killed with SIGKILL (the OS drops its flock).
docs/reliability.md, "One run per folder".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.run_folder import LOCK, RunError, check_run_dir, lock_run_dir
from finetune.training.checkpointing import load_checkpoint

IN_USE = "is in use by another finetune run"


# ---------------------------------------------------------------------- in process
def test_second_lock_on_a_folder_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "run"
    held = lock_run_dir(run_dir)  # creates the folder
    try:
        start = time.monotonic()
        with pytest.raises(RunError) as err:
            lock_run_dir(run_dir)
        assert time.monotonic() - start < 1.0  # timeout 0: no waiting
        assert str(err.value) == (
            f"Run folder {run_dir} is in use by another finetune run (pid {os.getpid()}); "
            f"wait for it, or use --output for another folder."
        )
    finally:
        held.release()
    lock_run_dir(run_dir).release()  # free again once released


def test_lock_file_alone_is_not_a_run_and_overwrite_keeps_it(tmp_path):
    run_dir = tmp_path / "run"
    held = lock_run_dir(run_dir)
    try:
        check_run_dir(run_dir, resume=False, overwrite=False)  # only .lock: an empty folder
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
        (run_dir / "config.yaml").write_text("seed: 0\n")
        with pytest.raises(RunError, match="already holds a run"):
            check_run_dir(run_dir, resume=False, overwrite=False)
        lock_inode = (run_dir / LOCK).stat().st_ino
        check_run_dir(run_dir, resume=False, overwrite=True)
        assert [p.name for p in run_dir.iterdir()] == [LOCK]
        assert (run_dir / LOCK).stat().st_ino == lock_inode  # the held file, not a new one
        with pytest.raises(RunError, match=IN_USE):
            lock_run_dir(run_dir)  # still held after --overwrite emptied the folder
    finally:
        held.release()


# ---------------------------------------------------------------------- real processes
def _args(data: Path, out: Path, *, epochs: int) -> list[str]:
    flags = {"data": data, "output": out, "backbone": "efficientnet_lite0", "strategy": "partial",
             "epochs": epochs, "image-size": 32, "batch-size": 4, "num-workers": 0,
             "accelerator": "cpu"}
    return ["run", *[a for k, v in flags.items() for a in (f"--{k}", str(v))], "-q"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "finetune", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _env() -> dict[str, str]:
    # os.environ holds what conftest set: offline, and the session's cache folders. One
    # thread each: two runs share the cores.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error")]


def _wait_for(path: Path, child: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared; the run exited {child.poll()}"


@pytest.mark.slow
def test_two_runs_started_together_one_runs_one_is_refused(brick_cat_dir, tmp_path):
    out = tmp_path / "run"
    # Long enough that the second process reaches the lock while the first holds it.
    args = _args(brick_cat_dir, out, epochs=5)
    children = [_start(args, tmp_path), _start(args, tmp_path)]
    results = [(c, *c.communicate(timeout=600)) for c in children]
    assert sorted(c.returncode for c in children) == [0, 2], [r[2][-2000:] for r in results]
    (winner, w_out, w_err), = [r for r in results if r[0].returncode == 0]
    (loser, l_out, l_err), = [r for r in results if r[0].returncode == 2]
    assert "Traceback" not in l_err
    assert _error_lines(l_err) == [
        f"Error: Run folder {out} is in use by another finetune run (pid {winner.pid}); "
        f"wait for it, or use --output for another folder."
    ]
    assert "test accuracy" in w_out and l_out == ""
    # The winner's run is whole: the loser wrote nothing into it.
    assert (out / "metrics.json").is_file()
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 4
    assert (out / LOCK).read_text().strip() == str(winner.pid)


@pytest.mark.slow
def test_resume_while_the_run_trains_is_refused(brick_cat_dir, tmp_path):
    out = tmp_path / "run"
    first = _start(_args(brick_cat_dir, out, epochs=50), tmp_path)
    try:
        _wait_for(out / "checkpoints" / "last.ckpt", first)
        resume = subprocess.run([sys.executable, "-m", "finetune",
                                 *_args(brick_cat_dir, out, epochs=50), "--resume"],
                                cwd=tmp_path, env=_env(), capture_output=True,
                                text=True, timeout=300)
        assert first.poll() is None  # still training: the refusal was about the lock
    finally:
        first.kill()
        first.communicate()
    assert resume.returncode == 2, resume.stderr[-2000:]
    assert _error_lines(resume.stderr) == [
        f"Error: Run folder {out} is in use by another finetune run (pid {first.pid}); "
        f"wait for it, or use --output for another folder."
    ]


@pytest.mark.slow
def test_resume_after_kill_9_is_not_blocked_by_the_stale_lock(brick_cat_dir, tmp_path):
    out = tmp_path / "run"
    args = _args(brick_cat_dir, out, epochs=3)
    first = _start(args, tmp_path)
    _wait_for(out / "checkpoints" / "last.ckpt", first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert (out / LOCK).read_text().strip() == str(first.pid)  # the dead run's file stays
    killed_epoch = load_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"]
    assert killed_epoch < 2

    resume = subprocess.run([sys.executable, "-m", "finetune", *args, "--resume"], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert "test accuracy" in resume.stdout
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert (out / "metrics.json").is_file()

"""Signals during a run: SIGTERM and Ctrl-C stop it with one line and 128 + the signal's
number, keep the resumable checkpoint and write no metrics.json; SLURM's requeue signal
asks for a requeue, and the restarted job resumes by itself (finetune/training/interrupt.py).

The slow tests send real signals to ``python -m finetune run`` in a subprocess."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from finetune.training import RunInterrupted
from finetune.training.checkpointing import load_checkpoint
from finetune.training.interrupt import (
    after_requeue,
    at_epoch,
    at_evaluation,
    at_phase,
    continue_with,
    interruptible,
)

# One thread per process: the runs share two cores with the test process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "FINETUNE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
ENV = {k: v for k, v in ENV.items() if not k.startswith("SLURM_")}


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """Two classes of six 32 px photos: one training step per epoch."""
    from finetune.data.builtin import build_dataset

    photos = build_dataset("photos", root=tmp_path_factory.mktemp("photos"), per_class=6, size=32)
    root = tmp_path_factory.mktemp("two") / "two"
    for name in sorted(p.name for p in photos.iterdir() if p.is_dir())[:2]:
        shutil.copytree(photos / name, root / name)
    return root


def _command(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "finetune", "run", "--data", str(data), "--backbone",
            "efficientnet_lite0", "--strategy", "full", "--image-size", "32", "--epochs",
            str(epochs), "--batch-size", "8", "--num-workers", "0", "--accelerator", "cpu",
            "--output", str(out), "--quiet"]


def _start(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(child: subprocess.Popen, out: Path, timeout: float = 120) -> Path:
    """The first last.ckpt (atomic: once it exists, it is whole)."""
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + timeout
    while not last.is_file():
        if child.poll() is not None:
            pytest.fail(f"run ended before its first checkpoint: {child.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("no checkpoint within the timeout")
        time.sleep(0.1)
    return last


def _run_until_checkpoint(data: Path, tmp_path: Path) -> tuple[Path, subprocess.Popen, Path]:
    """A 20-epoch run into ``tmp_path/run``, once its first last.ckpt is written:
    ``(out, child, last)``."""
    out = tmp_path / "run"
    child = _start(_command(data, out, epochs=20), tmp_path)
    return out, child, _wait_for_checkpoint(child, out)


def _stopped_by(signum: int, exit_code: int, data: Path,
                tmp_path: Path) -> tuple[Path, Path, str, str]:
    """A 20-epoch run sent ``signum`` after its first checkpoint, checked for what every
    stop shares: ``exit_code``, the one line naming the signal, phase and epoch, and no
    metrics.json. Returns ``(out, last, line, stderr)``."""
    out, child, last = _run_until_checkpoint(data, tmp_path)
    code, stderr = _interrupt(child, signum)
    assert code == exit_code, stderr[-3000:]
    line = _the_line(stderr)
    name = signal.Signals(signum).name
    assert line.startswith(f"Run interrupted by {name} in phase 'full', epoch ")
    assert not (out / "metrics.json").exists()
    return out, last, line, stderr


def _interrupt(child: subprocess.Popen, signum: int) -> tuple[int, str]:
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=120)
    return child.returncode, stderr


def _the_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if "interrupted" in ln]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------- in process
def test_signal_outside_training_raises_at_once_and_handlers_come_back(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RunInterrupted) as caught, interruptible(tmp_path / "run"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises out of the sleep
    stop = caught.value
    assert (stop.signum, stop.exit_code, stop.rank0) == (signal.SIGTERM, 143, True)
    assert str(stop) == ("Run interrupted by SIGTERM before training; nothing was written yet; "
                         "run the same command again")
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_message_names_phase_epoch_and_the_command(tmp_path):
    run_dir = tmp_path / "my run"
    (run_dir / "checkpoints" / "probe").mkdir(parents=True)
    assert continue_with(run_dir) == ("no checkpoint yet; run the same command again with "
                                      "--overwrite")
    (run_dir / "config.yaml").write_text("strategy: lp-ft\n")
    with pytest.raises(RunInterrupted) as caught, interruptible(run_dir):
        at_phase("probe", 0, 2)
        at_epoch(1, 5)
        at_phase("ft", 1, 2)
        at_epoch(3, 8)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
    assert caught.value.exit_code == 130
    assert str(caught.value) == (
        "Run interrupted by SIGINT in phase 'ft' (2 of 2), epoch 3 of 8; no checkpoint yet; "
        f"start it again with: finetune run --recipe '{run_dir}/config.yaml' --output "
        f"'{run_dir}' --overwrite")
    (run_dir / "checkpoints" / "probe" / "last.ckpt").write_bytes(b"")
    assert continue_with(run_dir) == (f"continue with: finetune run --recipe '{run_dir}/config.yaml'"
                                      f" --output '{run_dir}' --resume")
    with pytest.raises(RunInterrupted, match="by SIGTERM during evaluation; continue with"), \
            interruptible(run_dir):
        at_evaluation()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)


def test_outside_the_main_thread_nothing_is_installed(tmp_path):
    seen = {}

    def body():
        with interruptible(tmp_path):
            seen["inside"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen["inside"] is before


def test_a_restarted_slurm_job_resumes_its_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert after_requeue(run_dir, resume=False, overwrite=True) == (False, True)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert after_requeue(run_dir, resume=False, overwrite=False) == (False, False)  # absent
    run_dir.mkdir()
    (run_dir / ".lock").write_text("")
    assert after_requeue(run_dir, resume=False, overwrite=False) == (False, False)  # empty
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("")
    # Stopped before its first checkpoint: its own config and splits, started again.
    assert after_requeue(run_dir, resume=False, overwrite=False) == (False, True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    # An --overwrite in the job script must not wipe what the first attempt trained.
    assert after_requeue(run_dir, resume=False, overwrite=True) == (True, False)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert after_requeue(run_dir, resume=False, overwrite=False) == (False, False)


# ---------------------------------------------------------------------- real signals
@pytest.mark.slow
def test_sigterm_stops_with_143_then_the_printed_command_resumes(two_classes, tmp_path):
    out, last, line, _ = _stopped_by(signal.SIGTERM, 143, two_classes, tmp_path)
    assert line.endswith(f"continue with: finetune run --recipe {out}/config.yaml --output {out} "
                         "--resume")
    killed = load_checkpoint(last)
    assert killed["epoch"] < 19 and len(killed["finetune"]["history"]) == killed["epoch"] + 1
    # The printed command, one epoch further than the checkpoint.
    resume = shlex.split(line.split("continue with: ", 1)[1])
    assert resume[:2] == ["finetune", "run"]
    epochs = killed["epoch"] + 2
    done = subprocess.run([sys.executable, "-m", *resume, "--epochs", str(epochs), "--quiet"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "metrics.json").is_file()
    history = load_checkpoint(last)["finetune"]["history"]
    assert len(history) == epochs
    assert history[:-1] == killed["finetune"]["history"]


@pytest.mark.slow
def test_ctrl_c_stops_with_130_and_keeps_the_checkpoint(two_classes, tmp_path):
    out, last, line, stderr = _stopped_by(signal.SIGINT, 130, two_classes, tmp_path)
    assert "Detected KeyboardInterrupt" not in stderr  # Lightning's exit(1) path never ran
    assert line.endswith(f"--output {out} --resume")
    assert 0 <= load_checkpoint(last)["epoch"] < 19
    assert not list(out.rglob(".*.tmp"))  # no half-written checkpoint left behind


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(two_classes, tmp_path):
    _, child, last = _run_until_checkpoint(two_classes, tmp_path)
    child.send_signal(signal.SIGINT)
    time.sleep(0.1)  # the first is waiting for the end of the batch
    code, stderr = _interrupt(child, signal.SIGINT)
    assert code == 130, stderr[-3000:]
    assert "interrupted" not in stderr and "Traceback" not in stderr  # no cleanup, no line
    assert load_checkpoint(last)["epoch"] < 19  # atomic writes: still whole


@pytest.mark.slow
def test_slurm_requeue_signal_requeues_and_the_restarted_job_resumes(two_classes, tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\n')
    scontrol.chmod(0o755)
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "finetune", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_NNODES": "1", "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    out = tmp_path / "run"
    cmd = _command(two_classes, out, epochs=4)
    child = _start(cmd, tmp_path, env)
    last = _wait_for_checkpoint(child, out)
    code, stderr = _interrupt(child, signal.SIGUSR1)
    assert code == 128 + signal.SIGUSR1, stderr[-3000:]
    assert "(SLURM requeue of job 4242 requested)" in _the_line(stderr)
    assert calls.read_text().splitlines() == ["requeue 4242"]
    assert not list(out.rglob("hpc_ckpt_*"))  # Lightning's own requeue handler stayed out
    stopped = load_checkpoint(last)["epoch"]
    assert stopped < 3 and not (out / "metrics.json").exists()
    # SLURM restarts the same script: the same command, no --resume.
    again = subprocess.run(cmd, cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"SLURM restart 1 of this job: resuming from the checkpoint in {out}" in again.stderr
    assert (out / "metrics.json").is_file()
    history = load_checkpoint(last)["finetune"]["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]

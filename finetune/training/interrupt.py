"""Signals during a run: Ctrl-C, ``kill``, SLURM's preemption, turned into one exception.

    with interruptible(run_dir):      # installed by ``run``; restores the handlers after
        at_phase("full", 0, 1)        # where the run is, for the message
        with within_fit(trainer):     # Lightning stops at the end of the current batch
            trainer.fit(...)

SIGINT, SIGTERM and (under SLURM) SIGUSR1 raise ``RunInterrupted``: at once outside
Lightning's fit (data split, feature extraction, evaluation), at the end of the current
batch inside it. Inside the fit the signal sets Lightning's own stop flag, which Lightning
broadcasts from rank 0 at every step under DDP, so all ranks stop at the same batch and
none waits in a collective for a rank that left. A checkpoint write is never cut short
there: ``last.ckpt`` is the one written after the latest finished epoch. The command line
prints ``str(err)`` (one line: where the run stopped and the command that continues it)
and exits with 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM.

Lightning's own handling stays out of the way: its SIGTERMException (a ``SystemExit``
without a code) becomes ``RunInterrupted``; a Ctrl-C never reaches its
``KeyboardInterrupt`` branch, which would ``exit(1)``; and because a SIGUSR1 handler is
already installed, Lightning installs no SLURM requeue handler of its own. That signal is
``#SBATCH --signal=SIGUSR1@90``, sent before the time limit: global rank 0 asks
``scontrol requeue`` for the job at once, and the run stops like on SIGTERM. The
requeued job (``SLURM_RESTART_COUNT`` > 0) resumes from ``last.ckpt`` by itself
(``after_requeue``). A second Ctrl-C ends the process at once, without cleanup.

Only the main thread can install handlers; elsewhere (a thread, a ``ddp_spawn`` child)
the context records where the run is and installs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ..run_folder import CHECKPOINTS, CONFIG, LOCK, METRICS
from .distributed import global_rank

log = logging.getLogger("finetune")

REQUEUE_SIGNAL = signal.SIGUSR1  # Lightning's SLURMEnvironment default, and #SBATCH --signal's


class RunInterrupted(BaseException):
    """A signal stopped the run. A ``BaseException``, as ``KeyboardInterrupt`` is, so that no
    ``except Exception`` on the way out mistakes it for an error to handle."""

    def __init__(self, signum: int, where: str, run_dir: Path, *, requeued: str | None = None):
        self.signum, self.where, self.run_dir, self.requeued = signum, where, run_dir, requeued
        self.rank0 = global_rank() == 0
        super().__init__(self.message())

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 130 SIGINT, 143 SIGTERM."""
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        requeue = f" (SLURM requeue of job {self.requeued} requested)" if self.requeued else ""
        return f"Run interrupted by {name}{requeue} {self.where}; {continue_with(self.run_dir)}"


def continue_with(run_dir: Path) -> str:
    """The command that carries on a stopped run in ``run_dir``. ``--output`` is explicit:
    with ``--strategy auto`` the saved config holds the chosen strategy, whose default
    folder name differs from the one the run writes to."""
    folder = shlex.quote(str(run_dir))
    recipe = shlex.quote(str(run_dir / CONFIG))
    if has_checkpoint(run_dir):
        return f"continue with: finetune run --recipe {recipe} --output {folder} --resume"
    if (run_dir / CONFIG).is_file():
        return (f"no checkpoint yet; start it again with: finetune run --recipe {recipe} "
                f"--output {folder} --overwrite")
    if _holds_files(run_dir):  # e.g. --strategy auto's recommendation.json
        return "no checkpoint yet; run the same command again with --overwrite"
    return "nothing was written yet; run the same command again"


def _holds_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything besides the lock a run takes before writing."""
    return run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir())


def has_checkpoint(run_dir: Path) -> bool:
    """Whether some phase of the run in ``run_dir`` wrote its ``last.ckpt``."""
    folder = Path(run_dir) / CHECKPOINTS
    return folder.is_dir() and any(folder.rglob("last.ckpt"))


# ---------------------------------------------------------------------- where the run is
@dataclass
class _Where:
    phase: str | None = None
    index: int = 0
    phases: int = 1
    epoch: int | None = None  # 1-based, of ``epochs``
    epochs: int | None = None
    evaluating: bool = False

    def describe(self) -> str:
        if self.evaluating:
            return "during evaluation"
        if self.phase is None:
            return "before training"
        text = f"in phase '{self.phase}'"
        if self.phases > 1:
            text += f" ({self.index + 1} of {self.phases})"
        if self.epoch is None:
            return text + ", before its first epoch"
        return text + f", epoch {self.epoch} of {self.epochs}"


class _Guard:
    """The handlers of one run, and what they have seen."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.where = _Where()
        self.pid = os.getpid()  # forked loader workers inherit the handlers: they ignore them
        self.signum: int | None = None  # the first signal received
        self.requeued: str | None = None
        self.trainer: pl.Trainer | None = None  # set while Lightning's fit runs

    def handle(self, signum: int, _frame) -> None:
        if os.getpid() != self.pid:
            return
        if self.signum is not None:
            if signum == signal.SIGINT:
                os._exit(128 + signum)  # the second Ctrl-C: at once, no cleanup
            return  # e.g. the SIGTERM that follows a requeue: already stopping
        self.signum = signum
        if signum == REQUEUE_SIGNAL and global_rank() == 0:
            self.requeued = _requeue()
        if self.trainer is not None:
            # Lightning raises SIGTERMException at the end of the current batch (on every
            # rank under DDP: it broadcasts rank 0's flag each step); ``within_fit``
            # turns that into ours.
            self.trainer._signal_connector.received_sigterm = True
            return
        raise self.interrupted()

    def interrupted(self) -> RunInterrupted:
        return RunInterrupted(self.signum or signal.SIGTERM, self.where.describe(), self.run_dir,
                              requeued=self.requeued)


_active: _Guard | None = None


def _signals() -> list[int]:
    wanted = [signal.SIGINT, signal.SIGTERM]
    if SLURMEnvironment.detect():
        wanted.append(REQUEUE_SIGNAL)
    return wanted


@contextlib.contextmanager
def interruptible(run_dir: Path) -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SLURM's requeue signal into ``RunInterrupted`` until the
    block ends; the previous handlers come back afterwards."""
    global _active
    guard, outer = _Guard(Path(run_dir)), _active
    install = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, guard.handle) for s in _signals()} if install else {}
    _active = guard
    try:
        yield
    finally:
        _active = outer
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def at_phase(name: str, index: int, count: int) -> None:
    """The run enters phase ``index`` of ``count``."""
    if _active is not None:
        _active.where = _Where(phase=name, index=index, phases=count)


def at_epoch(epoch: int, epochs: int) -> None:
    """The phase starts its ``epoch``-th epoch (1-based) of ``epochs``."""
    if _active is not None:
        _active.where.epoch, _active.where.epochs = epoch, epochs


def at_evaluation() -> None:
    if _active is not None:
        _active.where = _Where(evaluating=True)


@contextlib.contextmanager
def within_fit(trainer: pl.Trainer) -> Iterator[None]:
    """While ``trainer`` fits, a signal stops it at the end of the current batch (not in the
    middle of a step or a checkpoint write), and Lightning's SIGTERMException comes out as
    ``RunInterrupted``."""
    guard = _active
    if guard is None:
        yield
        return
    guard.trainer = trainer
    try:
        yield
    except SIGTERMException as err:
        raise guard.interrupted() from err
    finally:
        guard.trainer = None
    if guard.signum is not None:  # arrived after Lightning's last check
        raise guard.interrupted()


class TrackEpochs(pl.Callback):
    """Tells the active ``interruptible`` which epoch is running, for the message."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        at_epoch(trainer.current_epoch + 1, trainer.max_epochs)


# ---------------------------------------------------------------------- SLURM
def _requeue() -> str | None:
    """``scontrol requeue`` this job; returns its id, or None when SLURM refused."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if array_job
           else os.environ.get("SLURM_JOB_ID", ""))
    if not re.fullmatch(r"[0-9_]+", job):
        log.warning("SLURM requeue signal, but no usable SLURM_JOB_ID (%r): not requeued.", job)
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("scontrol requeue %s failed (%s): resume by hand.", job, err)
        return None
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (exit %d: %s): resume by hand.", job,
                    done.returncode, done.stderr.strip())
        return None
    return job


def after_requeue(run_dir: Path, *, resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """``(resume, overwrite)`` for a job that SLURM restarted (``SLURM_RESTART_COUNT`` > 0)
    after a preemption: it continues its checkpoint instead of refusing the folder it wrote
    before; one that stopped before its first checkpoint starts again."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if resume or not restarts.isdigit() or int(restarts) == 0:
        return resume, overwrite
    rank0 = global_rank() == 0
    if has_checkpoint(run_dir):
        if rank0:
            log.warning("SLURM restart %s of this job: resuming from the checkpoint in %s.",
                        restarts, run_dir)
        return True, False
    if _holds_files(run_dir) and not (run_dir / METRICS).exists():
        if rank0:
            log.warning("SLURM restart %s of this job: no checkpoint in %s yet; starting it "
                        "again.", restarts, run_dir)
        return False, True
    return resume, overwrite


__all__ = ["REQUEUE_SIGNAL", "RunInterrupted", "TrackEpochs", "after_requeue", "at_epoch",
           "at_evaluation", "at_phase", "continue_with", "has_checkpoint", "interruptible",
           "within_fit"]

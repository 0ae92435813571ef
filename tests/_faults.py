"""Fault injection for ``finetune run``: a child process SIGKILLs itself at its n-th
"moment", then ``--resume`` finishes the run; the result is compared with an
uninterrupted run. Used by tests/test_exact_resume.py and benchmarks/fault_injection.py.

A moment is a place a cluster can stop a run: a training step, a validation step, just
after a checkpoint is written, the start of a phase (between phases), the start of an
evaluation. Counting them in an uninterrupted run gives the range a kill point is drawn
from, so kill points fall across the whole run. The kill is a real ``SIGKILL`` of the
process, at a point fixed by the count rather than by a clock: the same kill point
always falls in the same place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# The child: the CLI with the moments counted. KILL_AT: the moment to die at (0: never);
# MOMENTS: the file that gets where each moment is (a line each, appended before the kill).
CHILD = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
import finetune.training.runner as runner
from finetune.training.checkpointing import AtomicCheckpointIO
from finetune.training.module import FinetuneModule

kill_at, log = int(os.environ["KILL_AT"]), open(os.environ["MOMENTS"], "a")
count = 0

def moment(where):
    global count
    count += 1
    log.write(f"{count}\t{where}\n")
    log.flush()
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def wrap(owner, name, where, after=False):
    # a moment before (or after) each call of owner.name
    inner = getattr(owner, name)
    def wrapped(*args, **kwargs):
        if not after:
            moment(where(*args))
        result = inner(*args, **kwargs)
        if after:
            moment(where(*args))
        return result
    setattr(owner, name, wrapped)

def step(kind):
    return lambda self, batch, i: f"{kind} step {i}, epoch {self.current_epoch}, phase {self.phase.name}"

def saved(self, ckpt, path, *rest):
    path = os.fspath(path)
    return f"saved {os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}, epoch {ckpt['epoch']}"

wrap(FinetuneModule, "training_step", step("train"))
wrap(FinetuneModule, "validation_step", step("validation"))
wrap(AtomicCheckpointIO, "save_checkpoint", saved, after=True)
wrap(runner, "train_phase", lambda prep, phase, *rest: f"start of phase {phase.name}")
wrap(runner, "predict_probs", lambda module, loader, *rest: "evaluation")

from finetune.cli import main
main(sys.argv[1:], prog_name="finetune")
"""


@dataclass
class Outcome:
    run_dir: Path
    returncode: int
    stderr: str
    moments: list[str]  # where each moment fell, in order

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def run_child(args: list[str], run_dir: Path, *, kill_at: int = 0, timeout: float = 600) -> Outcome:
    """``finetune ARGS`` in a child process that SIGKILLs itself at moment ``kill_at``."""
    moments = run_dir.parent / f"{run_dir.name}.moments.{os.getpid()}.{kill_at}.txt"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    moments.unlink(missing_ok=True)
    env = {**os.environ, "FINETUNE_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "KILL_AT": str(kill_at), "MOMENTS": str(moments)}
    child = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True,
                           text=True, timeout=timeout)
    lines = moments.read_text().splitlines() if moments.exists() else []
    moments.unlink(missing_ok=True)
    return Outcome(run_dir, child.returncode, child.stderr, [ln.split("\t", 1)[1] for ln in lines])


def run_args(data: Path, out: Path, strategy: str, *, epochs: int, seed: int = 0,
             num_workers: int = 0) -> list[str]:
    """A tiny CPU run that trains the backbone with augmentation: seconds per epoch."""
    flags = {"data": data, "output": out, "strategy": strategy, "backbone": "efficientnet_lite0",
             "image-size": 32, "batch-size": 4, "num-workers": num_workers, "accelerator": "cpu",
             "epochs": epochs, "lp-epochs": 2, "augment": "medium", "seed": seed}
    return ["run", *[a for k, v in flags.items() for a in (f"--{k}", str(v))], "-q"]


def differences(a: Path, b: Path) -> dict[str, float]:
    """The largest absolute differences between two finished run folders: the best
    checkpoint's weights, the val loss, and every test number of metrics.json."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    out = {name: _weights_diff(a / "checkpoints" / f"{name}.ckpt", b / "checkpoints" / f"{name}.ckpt")
           for name in ("best", "last")}
    out["val_loss"] = abs(ma["val"]["loss"] - mb["val"]["loss"])
    out["test"] = max(_numbers_diff(ma["test"], mb["test"]), default=0.0)
    return out


def _weights_diff(a: Path, b: Path) -> float:
    sa, sb = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    if sa.keys() != sb.keys():
        raise AssertionError(f"{a} and {b} hold different tensors.")
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].numel())


def _numbers_diff(x, y) -> list[float]:
    """Absolute differences of every number in two same-shaped JSON values."""
    if isinstance(x, dict):
        if x.keys() != y.keys():
            raise AssertionError(f"Different keys: {sorted(x)} and {sorted(y)}.")
        return [d for k in x for d in _numbers_diff(x[k], y[k])]
    if isinstance(x, list):
        return [d for u, v in zip(x, y, strict=True) for d in _numbers_diff(u, v)]
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return [abs(float(x) - float(y))]
    if x != y:
        raise AssertionError(f"{x!r} != {y!r}")
    return []


def files_lost(run_dir: Path) -> list[str]:
    """What a resumed run folder lacks or cannot read: every checkpoint must load,
    config.yaml and splits.json must parse, metrics.json must exist."""
    import yaml

    lost = [name for name in ("config.yaml", "splits.json", "metrics.json")
            if not (run_dir / name).is_file()]
    try:
        yaml.safe_load((run_dir / "config.yaml").read_text())
        json.loads((run_dir / "splits.json").read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        lost.append(f"config.yaml / splits.json unreadable: {err}")
    for ckpt in sorted((run_dir / "checkpoints").rglob("*.ckpt")):
        try:
            torch.load(ckpt, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure to load is a lost file
            lost.append(f"{ckpt.relative_to(run_dir)}: {err}")
    return lost


# Where a kill point can fall, by the moments' names.
PLACES = {
    "inside an epoch": ("train step", "validation step"),
    "between epochs": ("saved",),
    "between phases": ("start of phase",),
    "during evaluation": ("evaluation",),
}


def place_of(where: str) -> str:
    return next(place for place, starts in PLACES.items() if where.startswith(starts))


def kill_points(moments: list[str], n: int, seed: int) -> list[int]:
    """``n`` moments (1-based) to kill at, drawn with ``seed``, taking the places the run
    has in turn, so that a few points already cover all of them. Only moments after the
    first checkpoint: before it there is nothing to resume (``--resume`` says so), and a
    one-phase run has no place between phases."""
    import random

    rng = random.Random(seed)
    first = next(i for i, where in enumerate(moments) if where.startswith("saved"))
    by_place: dict[str, list[int]] = {place: [] for place in PLACES}
    for i in range(first + 1, len(moments)):
        by_place[place_of(moments[i])].append(i + 1)
    places = [place for place, found in by_place.items() if found]
    return [rng.choice(by_place[places[j % len(places)]]) for j in range(n)]


@dataclass
class Trial:
    strategy: str
    kill_at: int
    moments: int  # in the uninterrupted run
    where: str
    killed: bool
    resumed: bool
    diff: dict[str, float]
    lost: list[str]

    def matched(self, tol: float) -> bool:
        return self.killed and self.resumed and max(self.diff.values()) <= tol


def inject(data: Path, root: Path, strategy: str, *, n: int, seed: int, epochs: int = 3,
           reference: Outcome | None = None) -> list[Trial]:
    """Kill a run of ``strategy`` at ``n`` drawn points, resume each, compare each with
    the uninterrupted run (``reference``, run here when not given)."""
    if reference is None:
        ref_dir = root / f"{strategy}-uninterrupted"
        reference = run_child(run_args(data, ref_dir, strategy, epochs=epochs), ref_dir)
    if reference.returncode != 0:
        raise RuntimeError(f"The uninterrupted {strategy} run failed:\n{reference.stderr[-3000:]}")
    trials = []
    for k, at in enumerate(kill_points(reference.moments, n, seed)):
        out = root / f"{strategy}-kill-{k}-at-{at}"
        args = run_args(data, out, strategy, epochs=epochs)
        killed = run_child(args, out, kill_at=at)
        resumed = run_child([*args, "--resume"], out)
        ok = resumed.returncode == 0
        trials.append(Trial(strategy, at, len(reference.moments), reference.moments[at - 1],
                            killed.killed and killed.moments[-1] == reference.moments[at - 1],
                            ok, differences(reference.run_dir, out) if ok else {"failed": float("inf")},
                            files_lost(out) if ok else [resumed.stderr[-2000:]]))
    return trials

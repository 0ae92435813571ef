"""``finetune lr-find``: Lightning's learning-rate range test for each phase of a run.

    findings = find_lrs(resolve_config(data="my_images", strategy="partial"))

The output folder looks like a run folder (``config.yaml``, ``splits.json``) and gains
``lr_find.json`` and ``lr_find/<phase>.png``. A phase that starts from an earlier one
(the fine-tuning after lp-ft's or surgical's probe) is swept from where that phase ends:
the earlier phase is swept, then trained at its strategy's default rate, its checkpoints
kept in ``checkpoints/<phase>/`` as a run keeps them. A cached-feature head fitted by
L-BFGS has no learning rate, and is fitted, not swept.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from ..config import RunConfig
from ..run_folder import CONFIG, default_run_dir
from ..strategies import Phase, check_strategy
from ..strategies.linear import head_fit_for
from .lr_finder import LrFindResult, write_result
from .runner import Prepared, Progress, find_phase_lr, phase_data, prepare, train_phase
from .tracking import RunTracking


@dataclass(frozen=True)
class PhaseFinding:
    phase: str
    result: LrFindResult | None  # None: the phase has no learning rate (an L-BFGS head)
    note: str  # how the phase was swept, or why not
    command: str | None  # the `finetune run` that trains with the suggestion

    def line(self) -> str:
        """One line for the terminal: the suggestion, and what to run with it."""
        if self.result is None:
            return f"{self.phase}: {self.note}"
        text = f"{self.phase}: lr {self.result.suggestion:.2g} ({self.result.reason})"
        if self.note:
            text += f"; {self.note}"
        return text + (f"\n  {self.command}" if self.command else "")


def default_output(cfg: RunConfig) -> Path:
    """``runs/<data>-<backbone>-<strategy>-lr-find``: beside, never inside, the run's folder."""
    run_dir = default_run_dir(cfg)
    return run_dir.with_name(f"{run_dir.name}-lr-find")


def find_lrs(cfg: RunConfig, *, overwrite: bool = False, progress: bool = True
             ) -> tuple[Path, list[PhaseFinding]]:
    """Sweep every phase of ``cfg`` (training the earlier ones at their defaults); the
    output folder and one finding per phase."""
    check_strategy(cfg.strategy)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_cfg = cfg
    cfg = cfg.replace(lr_find=False, output=str(cfg.output or default_output(cfg)))
    prep = prepare(cfg, resume=False, overwrite=overwrite)
    try:
        # The probe trained here is a means to the sweep, not a run: no trackers.
        state = Progress(world_size=1, tracking=RunTracking([], prep.run_dir))
        findings = []
        for i, phase in enumerate(prep.phases):
            phase_data(prep, phase, state, progress=progress)
            last = i == len(prep.phases) - 1
            if phase.feature_cache and head_fit_for(cfg) == "lbfgs":
                findings.append(PhaseFinding(
                    phase.name, None, "its head is fitted by L-BFGS, which has no learning "
                    "rate (--head-fit sgd trains it with AdamW at a rate to sweep)", None))
            else:
                findings.append(_sweep(prep, phase, state, run_cfg, previous=prep.phases[:i],
                                       last=last, progress=progress))
            if not last:
                train_phase(prep, phase, prep.checkpoint_dir(i), state, resume=False,
                            progress=progress)
        return prep.run_dir, findings
    finally:
        if prep.lock is not None:
            prep.lock.release()


def _sweep(prep: Prepared, phase: Phase, state: Progress, run_cfg: RunConfig, *,
           previous: list[Phase], last: bool, progress: bool) -> PhaseFinding:
    result = find_phase_lr(prep, phase, state, progress=progress)
    note = ""
    if previous:
        before = previous[-1]
        note = f"swept after training phase '{before.name}' at its default lr {before.lr:g}"
    if not last:
        # --lr sets the phase after the probe; the probe keeps `linear`'s rate unless the
        # run finds its own (--lr find).
        command = None
        note = "; ".join(filter(None, [note, "`finetune run --lr find` trains this phase at "
                                       "its found rate (--lr sets the phase after it)"]))
    else:
        command = _run_command(prep.run_dir, run_cfg, result.suggestion)
    extra = {"note": note} if note else {}
    if command:
        extra["command"] = command
    write_result(prep.run_dir, result, **extra)
    return PhaseFinding(phase.name, result, note, command)


def _run_command(out: Path, run_cfg: RunConfig, lr: float) -> str:
    """The ``finetune run`` of this configuration (its recipe, written here) at ``lr``,
    into the folder a run of it uses by default."""
    return shlex.join(["finetune", "run", "--recipe", str(out / CONFIG), "--output",
                       str(default_run_dir(run_cfg)), "--lr", f"{lr:.3g}"])


__all__ = ["PhaseFinding", "default_output", "find_lrs"]

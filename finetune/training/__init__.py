"""Training: a run's phases on Lightning, and the linear-probe fast path.

* ``runner``: ``finetune run``, from configuration to run folder; ``evaluate``: ``finetune
  evaluate`` on a finished run;
* ``module`` and ``trainer``: the LightningModule of one phase and the Trainer it runs in;
* ``checkpointing``: atomic checkpoint writes, safe loads, what a resume continues;
* ``features``, ``feature_cache`` and ``head_fit``: a frozen backbone's pooled features,
  computed once and cached on disk, and a head fitted on them;
* ``distributed``: which DDP rank this process is;
* ``interrupt``: SIGINT, SIGTERM and SLURM's requeue signal as one ``RunInterrupted``.
"""

from .evaluate import evaluate_run
from .interrupt import RunInterrupted
from .runner import RunResult, run

__all__ = ["RunInterrupted", "RunResult", "evaluate_run", "run"]

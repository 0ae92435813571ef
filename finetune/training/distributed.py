"""Which process am I? Rank helpers for code that runs before (or after) Lightning's Trainer.

The toolkit has no distribution layer of its own (docs/design.md): Lightning's DDP does the
training, launched by torchrun, SLURM's srun or Lightning's own ``ddp_spawn``. Code
outside ``trainer.fit`` (splitting, writing the run folder, feature extraction,
evaluation) still has to know its rank so that only global rank 0 writes files and each
process feeds its own GPU. These read the same environment Lightning reads.
"""

from __future__ import annotations

import os


def global_rank() -> int:
    """0 for the process that writes the run folder; Lightning's own view of the rank
    (``RANK`` from torchrun, ``SLURM_PROCID`` from srun, ...; 0 when not distributed)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def local_rank() -> int:
    """This process's index on its machine: torchrun sets ``LOCAL_RANK``, srun ``SLURM_LOCALID``."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def is_global_zero() -> bool:
    return global_rank() == 0


__all__ = ["global_rank", "is_global_zero", "local_rank"]

"""Checkpoints that survive crashes, and the checks that make a resume continue the same run.

Lightning writes a checkpoint straight to its final path. A machine preempted, a full
disk or a crash in the middle of that write leaves a truncated ``last.ckpt`` and the run
can no longer resume. ``AtomicCheckpointIO`` serialises the whole checkpoint in memory
first (a failing ``torch.save`` never touches the disk), then writes it with
``io.atomic_write_bytes``: a temporary file in the same folder, ``fsync``, ``os.replace``.
The previous checkpoint is replaced only by a complete new one.

It also loads every checkpoint with ``weights_only=True``, whatever Lightning's own
default is, so ``--resume`` on a planted pickle refuses it instead of running it.

The resume helpers answer two questions ``train.run`` asks before training again:
which phase to continue (a finished linear-probe phase of ``lp-ft`` is never redone), and
whether the data still has the classes the run was trained on.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..data import DataError, DataSplits, discover
from ..io import atomic_write_bytes, writing
from ..models import UnsafeCheckpointError

log = logging.getLogger("finetune")

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with crash-safe writes and ``weights_only`` loads.

    In an epoch where validation improves, Lightning saves the same moment twice: as
    ``best.ckpt`` and as ``last.ckpt``. The second is then a hard link to the first,
    made under a temporary name and renamed into place like any write, instead of a
    second serialisation and fsync of the whole model (a linear probe of ResNet-50
    would otherwise write 200 MB per epoch around a head that trains in milliseconds).
    Every save replaces its file by rename, never in place, so a later write of either
    name leaves the other one as it was. The two files differ only in Lightning's
    bookkeeping of the ``last`` callback, which a resume does not need.
    """

    def __init__(self) -> None:
        super().__init__()
        self._previous: tuple[tuple[int, int], Path] | None = None  # (epoch, step), path

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options; got {storage_options!r}.")
        path = Path(path)
        moment = (checkpoint.get("epoch"), checkpoint.get("global_step"))
        previous, self._previous = self._previous, None
        if (previous is not None and None not in moment and previous[0] == moment
                and previous[1] != path and previous[1].parent == path.parent
                and _link_atomically(previous[1], path)):
            self._previous = (moment, path)
            return
        with writing(path, _intact(path)):
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)  # fails here -> nothing on disk has changed
            atomic_write_bytes(path, buffer.getbuffer())
        self._previous = (moment, path)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location)


def _intact(path: Path) -> str:
    """What a user needs to hear when the write of checkpoint ``path`` runs out of space."""
    last = path.with_name(LAST)
    if last.is_file():
        return f"free space, then continue with --resume; the previous checkpoint {last} is intact"
    return "free space and run again (this phase had no checkpoint yet)"


def _link_atomically(source: Path, path: Path) -> bool:
    """Make ``path`` a hard link to ``source`` by link + rename; False where the file
    system has no hard links (the caller then writes a copy)."""
    if not source.is_file():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``; a pickle that needs code is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist.")
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"Refusing to load checkpoint '{path}': it holds Python objects that need arbitrary "
            f"code to unpickle, and loading it could run that code. finetune never writes such "
            f"checkpoints; delete it, or start a new run."
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(
            f"Checkpoint '{path}' is damaged ({err}). Delete it and resume from an earlier "
            f"one, or start the run again with --overwrite."
        ) from err


# ---------------------------------------------------------------------- resume
def resume_start(ckpt_dirs: Sequence[Path]) -> int:
    """Index of the phase a resume continues: the latest one that wrote a ``last.ckpt``.

    Phases run in order and a phase starts only after the one before it has finished, so
    every phase before that one is complete; ``0`` when no phase has a checkpoint yet.
    """
    for i in range(len(ckpt_dirs) - 1, -1, -1):
        if (Path(ckpt_dirs[i]) / LAST).is_file():
            return i
    return 0


def saved_history(ckpt_dir: Path) -> list[dict]:
    """The per-epoch history a finished phase stored in its ``last.ckpt`` (for the report)."""
    path = Path(ckpt_dir) / LAST
    if not path.is_file():
        return []
    return list(load_checkpoint(path).get("finetune", {}).get("history", []))


def check_resume_data(splits: DataSplits, data_path: Path) -> None:
    """Refuse to resume when the data no longer matches the run's ``splits.json``.

    The saved split decides which files train, so a resume never re-indexes labels. But
    a class folder added or removed since means the user expects a different model, and
    a file that disappeared would crash the run mid-epoch: both are explained up front.
    Classes whose every file was skipped as undecodable in the first run are ignored.
    """
    try:
        current = discover(data_path, val_fraction=0.0, test_fraction=0.0, seed=splits.seed,
                           verify=False)
    except DataError as err:
        raise DataError(f"Cannot resume: {err}") from None
    skipped = {entry.split(": ", 1)[0] for entry in splits.skipped}  # "path: reason"
    by_class: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        for path, label in current.samples(split):
            by_class.setdefault(current.classes[label], []).append(path)
    now = {name for name, paths in by_class.items() if not all(p in skipped for p in paths)}
    added, removed = sorted(now - set(splits.classes)), sorted(set(splits.classes) - now)
    if added or removed:
        change = "; ".join(
            part for part in (f"new: {', '.join(added)}" if added else "",
                              f"gone: {', '.join(removed)}" if removed else "") if part
        )
        raise DataError(
            f"Cannot resume: the classes in '{data_path}' changed since the run started "
            f"({change}). The run was trained on {len(splits.classes)} classes "
            f"({', '.join(splits.classes)}) and its labels would no longer match. Restore the "
            f"data, or start a new run (--output NEW_DIR, or --overwrite)."
        )
    missing = [p for split in ("train", "val", "test") for p, _ in splits.samples(split)
               if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(
            f"Cannot resume: {len(missing)} file(s) of the run's splits.json no longer exist "
            f"({shown}). Restore them, or start a new run (--output NEW_DIR, or --overwrite)."
        )


__all__ = [
    "AtomicCheckpointIO",
    "check_resume_data",
    "load_checkpoint",
    "resume_start",
    "saved_history",
]

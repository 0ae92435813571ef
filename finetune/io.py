"""Atomic file writes: a crash or a full disk never leaves a half-written file behind.

Also the publish protocol of the on-disk caches: an entry folder appears whole or not at all,
and ``DiskFullError``: a write that ran out of space, naming the file and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A full disk, a file larger than the process may write (RLIMIT_FSIZE), a full quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class DiskFullError(OSError):
    """A write that failed for lack of space; ``str()`` is the one line the user sees:
    which file, which errno, and ``fix`` (what to free or move, what is still intact)."""

    def __init__(self, err: OSError, path: str | Path, fix: str = "") -> None:
        super().__init__(err.errno, err.strerror, str(path))
        self.fix = fix

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno, str(self.errno))
        fix = self.fix or "free space on that disk and run the command again"
        return f"No space left while writing {self.filename} ({code}: {self.strerror}): {fix}."


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


@contextmanager
def writing(path: str | Path, fix: str = "", *, whole: bool = False) -> Iterator[None]:
    """Turn a full disk inside the block into a ``DiskFullError`` naming ``path`` and
    ``fix``. One raised deeper keeps its more precise file and its own fix, unless
    ``whole``: ``path`` is then the thing being written (a cache entry, an export) and
    the file inside it was a temporary one the user never sees."""
    try:
        yield
    except DiskFullError as err:
        if whole:
            err.filename = str(path)
        if fix and (whole or not err.fix):
            err.fix = fix
        raise
    except OSError as err:
        if err.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(err, path, fix) from err


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with writing(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------ cache entries
# The feature cache and the image cache store entries as folders that appear complete, by
# rename, or not at all. These two helpers are the part of that protocol they share.
TMP_PREFIX = ".tmp-"
# Temporary folders older than this are leftovers of a killed process, not a live writer.
STALE_TMP_S = 24 * 3600


def remove_stale_tmp(parent: Path) -> None:
    """Delete ``parent/*/.tmp-*`` folders left by killed writers (older than a day)."""
    now = time.time()
    for tmp in Path(parent).glob(f"*/{TMP_PREFIX}*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def publish_dir(tmp: Path, entry: Path, is_valid: Callable[[Path], bool]) -> None:
    """Move the finished folder ``tmp`` to ``entry`` atomically.

    Entries never change once they exist, so one that ``is_valid`` rejects now is broken
    for good (an older layout, a damaged disk): it is moved aside first, which is atomic.
    If another process (a DDP rank) published a valid entry first, ``tmp`` is dropped and
    theirs is kept. ``tmp`` never survives this call.
    """
    import shutil

    try:
        if entry.exists() and not is_valid(entry):
            trash = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}trash-", dir=entry.parent))
            try:
                os.replace(entry, trash / "entry")
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not is_valid(entry):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

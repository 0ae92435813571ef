"""A training DataLoader whose workers do not stop between epochs.

A ``DataLoader`` with persistent workers still drains at the end of every epoch: the
workers get the next epoch's first batches only when the next epoch asks for them, after
the last training step and after validation. The first step of every epoch then waits
for one worker to build a whole batch. On a GPU with a few-thousand-image set (15
batches of 256 per epoch on one H100, ResNet-50, decoded-image cache) that wait held the
pipeline at 77% of its synthetic-data rate; this loader brings it to 96-97%
(docs/scaling.md).

``ContinuousLoader`` iterates one worker pool over the training batches pass after pass
and hands out one pass per epoch. While an epoch ends and validation runs, the workers
are already making the next epoch's batches, as far ahead as ``prefetch_factor`` allows.
The batches are the same as a plain ``DataLoader``'s, epoch for epoch: the sampler is
iterated once per pass, in order, and a ``DistributedSampler`` is moved to the next epoch
before its pass begins (Lightning does so too, but only at the start of the epoch, after
the workers have started on it). With ``num_workers=0`` there is nothing to run ahead
and it is a plain ``DataLoader``.

It is also the training loader a resume restores (Lightning saves ``state_dict`` of a
stateful training loader in the checkpoint and loads it before the first ``iter()``): it
records the epoch of the pass it is handing out, and a resume moves the sampler to the
epoch after it. Lightning's own ``set_epoch`` comes too late for that first pass: the
iterator, and with it the first batch, is made before Lightning moves the sampler.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader


class _Passes:
    """``batch_sampler``'s index lists, pass after pass, without end.

    A sampler with ``set_epoch`` (``DistributedSampler``) gets epoch ``start + k`` before
    pass ``k``, ``start`` being its epoch when the first pass began. The count is kept
    here, not read back from the sampler: with short epochs the workers run several
    passes ahead, and Lightning's own ``set_epoch(e)`` at the start of epoch ``e`` lands
    in between and must not move the passes already counted.
    """

    def __init__(self, batch_sampler: Iterable[list[int]]) -> None:
        self.batch_sampler = batch_sampler

    def __iter__(self) -> Iterator[list[int]]:
        sampler = getattr(self.batch_sampler, "sampler", None)
        start = getattr(sampler, "epoch", 0)
        for k in itertools.count():
            if k and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(start + k)
            empty = True
            for indices in self.batch_sampler:
                empty = False
                yield indices
            if empty:  # nothing to load: end, rather than loop for ever
                return


class ContinuousLoader(DataLoader):
    """A ``DataLoader`` (same arguments, same batches) whose worker pool runs on from one
    epoch into the next; see the module's text. Made for the training split: each
    ``iter()`` is one epoch of ``len(self)`` batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._left_in_pass = 0  # batches of the current pass not yet handed out
        self._epoch_now = self._sampler_epoch()  # the epoch of the pass being handed out
        self._stream_start = 0  # the sampler's epoch when the workers' stream began
        self._passes = 0  # passes of the stream begun so far

    def _sampler_epoch(self) -> int:
        return getattr(self.sampler, "epoch", 0)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch_now}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the saved epoch: checkpoints are written at the end of an epoch
        and Lightning resumes them at the next one."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(state["epoch"] + 1)

    @property
    def _index_sampler(self):
        indices = super()._index_sampler
        return _Passes(indices) if self.num_workers > 0 else indices

    def __len__(self) -> int:
        if self.num_workers == 0:
            return super().__len__()
        return len(super()._index_sampler)

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0:
            self._epoch_now = self._sampler_epoch()
            return super().__iter__()
        # The stream lives where DataLoader keeps a persistent-workers iterator, so that
        # Lightning's end-of-fit teardown (``_iterator._shutdown_workers()``, then None)
        # stops these workers too; a later epoch then starts a fresh stream.
        if self._iterator is None:
            self._stream_start, self._passes = self._sampler_epoch(), 0
            self._iterator = self._get_iterator()
            self._left_in_pass = 0
        return self._epoch(self._iterator)

    def _epoch(self, stream: Iterator[Any]) -> Iterator[Any]:
        # An epoch left unfinished (an error, a step limit) leaves part of its pass in the
        # stream: skip it, so that every epoch still starts at the start of a pass.
        for _ in range(self._left_in_pass):
            next(stream)
        self._epoch_now = self._stream_start + self._passes
        self._passes += 1
        self._left_in_pass = len(self)
        while self._left_in_pass:
            batch = next(stream)
            self._left_in_pass -= 1
            yield batch

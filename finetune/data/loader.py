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

The workers start at the first batch asked for, not at ``iter()``: Lightning calls
``iter()`` on the training loader before it moves the sampler to the epoch it is at
(``set_epoch``), and a resumed run's first pass must begin at that epoch, not at 0.
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
            return super().__iter__()
        return self._epoch()

    def _epoch(self) -> Iterator[Any]:
        # Runs from the first batch asked for (a generator), so the stream starts after
        # Lightning's set_epoch. It lives where DataLoader keeps a persistent-workers
        # iterator, so that Lightning's end-of-fit teardown (``_iterator._shutdown_workers()``,
        # then None) stops these workers too; a later epoch then starts a fresh stream.
        if self._iterator is None:
            self._iterator = self._get_iterator()
            self._left_in_pass = 0
        stream = self._iterator
        # An epoch left unfinished (an error, a step limit) leaves part of its pass in the
        # stream: skip it, so that every epoch still starts at the start of a pass.
        for _ in range(self._left_in_pass):
            next(stream)
        self._left_in_pass = len(self)
        while self._left_in_pass:
            batch = next(stream)
            self._left_in_pass -= 1
            yield batch

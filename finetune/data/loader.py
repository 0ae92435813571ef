"""A DataLoader whose batches several workers make together, in parts.

PyTorch's ``DataLoader`` gives each batch to one worker. With a large batch, many
workers and a short epoch (a few thousand images, the usual fine-tuning set) that is a
latency problem, not a throughput one: at the start of every epoch the first batch
arrives only when one worker has decoded and augmented all of it alone, and an epoch of
15 batches on 14 workers takes two such rounds. On one H100 with ResNet-50 at batch
256 this stall cost about 17% of the training rate (docs/gpu.md).

``BatchPartsLoader`` splits every batch into ``parts`` parts of ``batch_size`` samples,
lets the workers make the parts in parallel, and concatenates them again in the main
process. Which samples form a batch does not change: batch ``i`` holds samples
``i * B .. (i + 1) * B - 1`` of the sampler's order, ``B = batch_size * parts``, just as
a plain ``DataLoader(batch_size=B)`` would. The loader stays a ``DataLoader`` subclass
whose constructor arguments are also its attributes, so Lightning can re-create it with
a ``DistributedSampler`` under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

# A part smaller than this costs more in inter-process traffic than it saves in latency.
MIN_PART = 8


def batch_parts(batch_size: int, num_workers: int, *, min_part: int = MIN_PART) -> int:
    """How many parts to make a batch of ``batch_size`` in: about one per worker, every
    part the same size (a divisor of the batch, the one nearest ``batch_size /
    num_workers``) and at least ``min_part`` samples. 1 (whole batches) with fewer than
    two workers, or when no such divisor exists."""
    if num_workers < 2:
        return 1
    sizes = [d for d in range(min_part, batch_size) if batch_size % d == 0]
    if not sizes:
        return 1
    ideal = batch_size / num_workers
    part = min(sizes, key=lambda d: (abs(math.log(d / ideal)), d))
    return batch_size // part


class _PartIndices:
    """Index lists of the parts, batch after batch, from ``sampler``'s order; the ragged
    last batch is dropped before any of its parts is asked for when ``drop_last``."""

    def __init__(self, sampler: Sampler[int], part_size: int, parts: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.part_size = part_size
        self.parts = parts
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        full = self.part_size * self.parts
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == full:
                yield from self._split(batch)
                batch = []
        if batch and not self.drop_last:
            yield from self._split(batch)

    def _split(self, batch: list[int]) -> Iterator[list[int]]:
        for start in range(0, len(batch), self.part_size):
            yield batch[start:start + self.part_size]

    def __len__(self) -> int:
        n, full = len(self.sampler), self.part_size * self.parts
        if self.drop_last:
            return (n // full) * self.parts
        return (n // full) * self.parts + math.ceil((n % full) / self.part_size)


def concat_parts(parts: list[Any]) -> Any:
    """Collated parts -> one batch: tensors concatenated along the first dimension (into
    pinned memory when the parts are pinned, so the copy to the GPU stays asynchronous),
    tuples and lists element by element."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        if first.is_pinned():
            out = torch.empty((sum(p.shape[0] for p in parts), *first.shape[1:]),
                              dtype=first.dtype, pin_memory=True)
            return torch.cat(parts, out=out)
        return torch.cat(parts)
    if isinstance(first, (tuple, list)):
        return type(first)(concat_parts(list(items)) for items in zip(*parts, strict=True))
    raise TypeError(f"Cannot concatenate batch parts of type {type(first).__name__}; "
                    "a batch must be a tensor or a tuple/list of tensors.")


class BatchPartsLoader(DataLoader):
    """``DataLoader`` yielding batches of ``batch_size * parts`` samples, each made as
    ``parts`` parts of ``batch_size`` by the workers in parallel (see the module's text).

    ``drop_last`` drops a ragged last *batch* (fewer than ``batch_size * parts``); its
    parts are never loaded. With ``parts=1`` this is a plain ``DataLoader``.
    """

    def __init__(self, dataset, batch_size: int = 1, *, parts: int = 1, **kwargs) -> None:
        if kwargs.get("batch_sampler") is not None:
            raise ValueError("BatchPartsLoader makes its own batches; pass a sampler, not a batch_sampler.")
        if parts < 1:
            raise ValueError(f"parts={parts} must be at least 1.")
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.parts = parts

    @property
    def _index_sampler(self):  # the index lists workers are given: one per part
        return _PartIndices(self.sampler, self.batch_size, self.parts, self.drop_last)

    def __len__(self) -> int:
        return math.ceil(len(self._index_sampler) / self.parts)

    def __iter__(self):
        batches = super().__iter__()
        if self.parts == 1:
            return batches
        return self._regroup(batches)

    def _regroup(self, parts: Iterator[Any]) -> Iterator[Any]:
        pending: list[Any] = []
        for part in parts:
            pending.append(part)
            if len(pending) == self.parts:
                yield concat_parts(pending)
                pending = []
        if pending:  # the ragged last batch (drop_last=False), in fewer parts
            yield concat_parts(pending)

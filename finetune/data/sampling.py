"""Training randomness that is a function of ``(seed, epoch)`` and nothing else.

A resumed run replays from the epoch boundary of its last checkpoint. For the replayed
epoch to be the epoch the uninterrupted run trained, nothing it draws may depend on what
ran before it in the same process: not the data order (a generator seeded once advances
epoch after epoch), not the augmentation stream (albumentations' generators advance
sample after sample, in each worker), not dropout (torch's global generator advances).
So every stream is reseeded from the run's seed and where it is: the order at each epoch
(``EpochSampler``), the augmentation at each sample (``AugmentationSeeder``), the global
generators at each training epoch (``FinetuneModule.on_train_epoch_start``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Sampler

if TYPE_CHECKING:
    import albumentations as A

# Stream tags, so that the order, the augmentation and the global generators of one epoch
# draw from unrelated seeds.
ORDER, AUGMENT, GLOBAL = 1, 2, 3


def stream_seed(*key: int) -> int:
    """A 63-bit seed from integers (the run's seed, a stream tag, an epoch, ...). numpy's
    ``SeedSequence`` hashes the key, so neighbouring keys give unrelated streams."""
    state = np.random.SeedSequence([k % 2**64 for k in key]).generate_state(1, np.uint64)
    return int(state[0] >> 1)


class EpochSampler(Sampler):
    """A shuffled (or, with ``weights``, class-balanced) order drawn afresh at every epoch
    from ``Generator(seed, epoch)``.

    Lightning calls ``set_epoch`` on the training loader's sampler at every epoch (and the
    ``ContinuousLoader`` ahead of each pass), so epoch ``k`` gets the same order whether the
    run got there without a stop or resumed at it. ``weights``: ``WeightedRandomSampler``'s
    draw with replacement, ``len(weights)`` samples an epoch. ``tag_epoch`` yields
    ``(epoch, index)`` pairs for a dataset that seeds its augmentation from them
    (``ImageDataset``): the pair travels with the index into whichever worker loads it.
    """

    def __init__(self, n: int, *, seed: int, weights: torch.Tensor | None = None,
                 tag_epoch: bool = False) -> None:
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} sampling weights for {n} samples.")
        self.n = n
        self.seed = seed
        self.weights = weights
        self.tag_epoch = tag_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, ORDER, epoch))
        if self.weights is None:
            return torch.randperm(self.n, generator=generator).tolist()
        return torch.multinomial(self.weights, self.n, replacement=True, generator=generator).tolist()

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        epoch = self.epoch  # fixed for the pass, whatever set_epoch does while it runs
        order = self.order(epoch)
        return iter([(epoch, i) for i in order]) if self.tag_epoch else iter(order)


_MASK = 2**64 - 1


def _splitmix64(x: int) -> int:
    """One step of Vigna's splitmix64: a cheap, well-mixed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class AugmentationSeeder:
    """Reseeds an albumentations pipeline for one sample from ``(seed, epoch, index)``.

    Every transform in the pipeline (nested ones too) gets the same generator pair, whose
    state is set in place for each sample: about 20 us a sample, 1-2% of a sample's decode
    and augmentation at 32-128 px. A new pair per sample costs 40-55 us, albumentations'
    own ``set_random_seed`` (a new pair for every transform) about 120 us.
    """

    def __init__(self, transform: A.Compose) -> None:
        found, stack = [], [transform]
        while stack:
            t = stack.pop()
            if hasattr(t, "set_random_seed"):  # transforms and composes, not plain functions
                found.append(t)
                stack.extend(getattr(t, "transforms", []))
        self.targets = found
        self.bit_generator = np.random.PCG64(0)
        self.rng = np.random.Generator(self.bit_generator)
        self.py_random = random.Random(0)

    def __call__(self, seed: int, epoch: int, index: int) -> None:
        h = _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ AUGMENT) ^ (epoch & _MASK))
        h = _splitmix64(h ^ (index & _MASK))
        self.bit_generator.state = {
            "bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
            "state": {"state": (_splitmix64(h) << 64) | h, "inc": (_splitmix64(h ^ 1) << 1) | 1},
        }
        self.py_random.seed(h)
        for t in self.targets:
            t.random_generator = self.rng
            t.py_random = self.py_random


def seed_globals(*key: int) -> None:
    """Reseed torch's, numpy's and Python's global generators from ``key``."""
    seed = stream_seed(GLOBAL, *key)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


__all__ = ["AugmentationSeeder", "EpochSampler", "seed_globals", "stream_seed"]

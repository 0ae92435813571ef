"""ContinuousLoader: the same batches as a DataLoader, with workers that run on between
epochs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from lightning_fabric.utilities.data import _replace_dunder_methods
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from finetune.data.loader import ContinuousLoader


class Numbered(Dataset):
    """Sample i is (a 2x3 tensor filled with i, i % 5). With ``log``, every load also
    leaves a file there (workers are other processes)."""

    def __init__(self, n: int, log: Path | None = None) -> None:
        self.n = n
        self.log = log

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.log is not None:
            (self.log / f"{time.monotonic_ns()}-{i}").touch()
        return torch.full((2, 3), float(i)), i % 5


def epochs(loader, count: int) -> list[list[list[int]]]:
    """The sample numbers of each batch, epoch after epoch."""
    return [[x[:, 0, 0].int().tolist() for x, _ in loader] for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_same_batches_as_a_dataloader_epoch_after_epoch(workers, drop_last):
    data = Numbered(23)  # 5 batches of 4 and a ragged one of 3

    def make(cls):
        return cls(data, batch_size=4, shuffle=True, drop_last=drop_last, num_workers=workers,
                   persistent_workers=workers > 0, generator=torch.Generator().manual_seed(7))

    plain, continuous = make(DataLoader), make(ContinuousLoader)
    expected = epochs(plain, 3)
    assert epochs(continuous, 3) == expected
    assert len(continuous) == len(plain) == (5 if drop_last else 6)
    assert expected[0] != expected[1]  # each epoch is a new shuffle
    assert all(len(set(sum(e, []))) == (20 if drop_last else 23) for e in expected)


def test_workers_start_the_next_epoch_before_it_is_asked_for(tmp_path):
    data = Numbered(12, log=tmp_path)
    loader = ContinuousLoader(data, batch_size=4, num_workers=2, prefetch_factor=2)
    for _ in loader:  # one epoch: 12 loads
        pass
    deadline = time.monotonic() + 30
    while len(list(tmp_path.iterdir())) <= 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The workers went on to the next pass without a new iter(): a plain DataLoader with
    # persistent workers stops at 12 until the next epoch begins.
    assert len(list(tmp_path.iterdir())) > 12
    assert epochs(loader, 1) == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]]


def test_an_unfinished_epoch_does_not_shift_the_next():
    data = Numbered(16)

    def make(cls):
        return cls(data, batch_size=4, shuffle=True, num_workers=2, persistent_workers=True,
                   generator=torch.Generator().manual_seed(1))

    expected = epochs(make(DataLoader), 2)
    loader = make(ContinuousLoader)
    it = iter(loader)
    first = [next(it)[0][:, 0, 0].int().tolist() for _ in range(2)]  # half an epoch, then stop
    assert first == expected[0][:2]
    assert epochs(loader, 1) == [expected[1]]


def test_lightning_teardown_stops_the_workers_and_a_later_epoch_restarts():
    from pytorch_lightning.utilities.combined_loader import _shutdown_workers_and_reset_iterator

    loader = ContinuousLoader(Numbered(16), batch_size=4, num_workers=2)
    it = iter(loader)
    next(it)  # an epoch left after one batch, then fit ends
    stream = loader._iterator
    _shutdown_workers_and_reset_iterator(loader)  # what Lightning does at the end of fit
    assert loader._iterator is None and not any(w.is_alive() for w in stream._workers)
    assert epochs(loader, 1) == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]]


def test_an_empty_loader_ends():
    assert list(ContinuousLoader(Numbered(3), batch_size=4, drop_last=True, num_workers=2)) == []


@pytest.mark.parametrize("in_hook", [False, True])
def test_ddp_ranks_reshuffle_every_epoch(in_hook):
    """Lightning re-creates the train loader with a DistributedSampler (from the saved
    constructor arguments when made in a ``*_dataloader`` hook, from its attributes when
    passed to ``fit``). The loader stays continuous, and moves the sampler to the next
    epoch itself, before its workers start on it."""
    data = Numbered(16)

    def make():  # 2 batches per rank and epoch, 8 in flight: the workers run 4 passes ahead
        return ContinuousLoader(data, batch_size=4, shuffle=True, num_workers=2, prefetch_factor=4)

    if in_hook:
        with _replace_dunder_methods(DataLoader, "dataset"):
            loader = make()
    else:
        loader = make()
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        ranked = _update_dataloader(loader, sampler)
        assert type(ranked) is ContinuousLoader
        got = []
        for epoch in range(8):
            ranked.sampler.set_epoch(epoch)  # as Lightning does before each epoch
            got += epochs(ranked, 1)
        reference = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
        for epoch, batches in enumerate(got):
            reference.set_epoch(epoch)
            assert sum(batches, []) == list(reference)
        assert len({str(batches) for batches in got}) == 8  # a new shuffle every epoch

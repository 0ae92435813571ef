"""BatchPartsLoader: batches made in parts by several workers, identical to plain batches."""

from __future__ import annotations

import pytest
import torch
from lightning_fabric.utilities.data import _replace_dunder_methods
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from finetune.data.loader import BatchPartsLoader, batch_parts, concat_parts


class Numbered(Dataset):
    """Sample i is (a 2x3 tensor filled with i, i % 5); remembers what it was asked for."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.asked: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.asked.append(i)
        return torch.full((2, 3), float(i)), i % 5


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize(("batch", "workers", "parts"), [
    (256, 14, 16),  # parts of 16: ceil(256 / 14) = 19, and 16 is the largest divisor below
    (256, 15, 16),
    (512, 14, 16),  # the eval batch: parts of 32
    (64, 14, 8),  # parts never smaller than 8 samples
    (32, 2, 2),
    (30, 4, 3),  # parts of 10
    (8, 2, 1),  # too small to split
    (97, 8, 1),  # a prime batch has no even split
    (256, 1, 1),  # one worker: nothing to share
    (256, 0, 1),
])
def test_batch_parts(batch, workers, parts):
    assert batch_parts(batch, workers) == parts


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_same_batches_as_a_plain_dataloader(drop_last, workers):
    data = Numbered(53)  # 3 batches of 16 and a ragged one of 5
    plain = DataLoader(data, batch_size=16, shuffle=True, drop_last=drop_last,
                       generator=torch.Generator().manual_seed(3))
    parted = BatchPartsLoader(data, batch_size=4, parts=4, shuffle=True, drop_last=drop_last,
                              generator=torch.Generator().manual_seed(3), num_workers=workers)
    expected, got = batches(plain), batches(parted)
    assert len(got) == len(parted) == len(plain) == (3 if drop_last else 4)
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in expected]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, expected, strict=True))
    assert [x.shape[0] for x, _ in got] == [16, 16, 16] + ([] if drop_last else [5])
    # A second epoch reshuffles, the same way as the plain loader does.
    assert [y.tolist() for _, y in batches(parted)] == [y.tolist() for _, y in batches(plain)]


def test_the_dropped_batch_is_never_loaded():
    data = Numbered(53)
    loader = BatchPartsLoader(data, batch_size=4, parts=4, drop_last=True)
    assert sum(x.shape[0] for x, _ in loader) == 48
    assert sorted(data.asked) == list(range(48))


def test_concat_parts():
    parts = [(torch.zeros(2, 3), torch.tensor([0, 1])), (torch.ones(1, 3), torch.tensor([2]))]
    x, y = concat_parts(parts)
    assert x.shape == (3, 3) and x[2].tolist() == [1, 1, 1] and y.tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="tensor or a tuple/list"):
        concat_parts([{"x": torch.zeros(1)}])
    with pytest.raises(ValueError, match="not a batch_sampler"):
        BatchPartsLoader(Numbered(4), batch_sampler=[[0, 1]], parts=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_parts_stay_pinned():
    loader = BatchPartsLoader(Numbered(32), batch_size=8, parts=2, pin_memory=True)
    x, y = next(iter(loader))
    assert x.is_pinned() and y.is_pinned() and x.shape == (16, 2, 3)


@pytest.mark.parametrize("in_hook", [False, True])
def test_lightning_reinstantiates_it_for_ddp(in_hook):
    """Under DDP Lightning re-creates the train loader with a DistributedSampler, from the
    constructor's saved arguments (loaders made in a ``*_dataloader`` hook) or from the
    instance's attributes (loaders passed to ``fit``): both must keep the parts."""
    data = Numbered(64)

    def make():
        return BatchPartsLoader(data, batch_size=4, parts=4, drop_last=True)

    if in_hook:
        with _replace_dunder_methods(DataLoader, "dataset"):
            loader = make()
    else:
        loader = make()
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
        ranked = _update_dataloader(loader, sampler)
        assert type(ranked) is BatchPartsLoader and ranked.parts == 4 and ranked.batch_size == 4
        got = batches(ranked)
        assert len(got) == len(ranked) == 2 and all(x.shape[0] == 16 for x, _ in got)
        seen += [int(v) for x, _ in got for v in x[:, 0, 0]]
    assert sorted(seen) == list(range(64))  # the ranks split the data, nothing twice
    # Evaluation loaders get a SequentialSampler the same way.
    assert len(_update_dataloader(loader, SequentialSampler(data))) == 4


"""Resume is exact: a run killed with SIGKILL and resumed ends where the same run ends
uninterrupted, because every epoch's randomness is a function of (seed, epoch).

The pieces: the order (``EpochSampler``), the augmentation of each sample (``ImageDataset``
seeded per (seed, epoch, index)), a ContinuousLoader whose workers start after Lightning's
``set_epoch``, the global generators reseeded at each epoch (``FinetuneModule``). Then
whole runs, killed at a fixed point (here) and at random
points across the run (the slow test; benchmarks/fault_injection.py prints its table).
"""

from __future__ import annotations

import pytest
import torch
from _faults import PLACES, differences, files_lost, inject, place_of, run_args, run_child
from PIL import Image
from torch.utils.data import Dataset

from finetune.data import discover
from finetune.data.datamodule import FinetuneDataModule, ImageDataset
from finetune.data.loader import ContinuousLoader
from finetune.data.sampling import EpochSampler
from finetune.data.transforms import build_transform
from finetune.models import create_backbone

TOL = 1e-6  # CPU, one thread, deterministic kernels: the runs agree to the bit in practice
HALF = create_backbone("efficientnet_lite0", pretrained=False).pretrained_cfg


# ---------------------------------------------------------------------- the order
def test_epoch_order_depends_on_seed_and_epoch_only():
    walked = EpochSampler(20, seed=7)
    orders = []
    for epoch in range(4):  # an uninterrupted run: epoch after epoch
        walked.set_epoch(epoch)
        orders.append(list(walked))
    fresh = EpochSampler(20, seed=7)  # a resumed run: a new sampler put at epoch 3
    fresh.set_epoch(3)
    assert list(fresh) == orders[3]
    assert all(sorted(o) == list(range(20)) for o in orders)  # each a permutation
    assert len({tuple(o) for o in orders}) == 4  # a new order every epoch
    other = EpochSampler(20, seed=8)
    other.set_epoch(3)
    assert list(other) != orders[3]


def test_balanced_order_depends_on_seed_and_epoch_only():
    weights = torch.tensor([1 / 18] * 18 + [1 / 2] * 2, dtype=torch.double)  # 18 big, 2 small
    walked = EpochSampler(20, seed=0, weights=weights)
    draws = []
    for epoch in range(50):
        walked.set_epoch(epoch)
        draws.append(list(walked))
    fresh = EpochSampler(20, seed=0, weights=weights)
    fresh.set_epoch(49)
    assert list(fresh) == draws[49]
    small = sum(i >= 18 for d in draws for i in d) / (50 * 20)
    assert 0.4 < small < 0.6  # class-balanced: ~0.5, against 0.1 unweighted


def test_epoch_tag_travels_with_the_index():
    sampler = EpochSampler(5, seed=0, tag_epoch=True)
    sampler.set_epoch(2)
    pairs = list(sampler)
    assert {e for e, _ in pairs} == {2}
    assert [i for _, i in pairs] == EpochSampler(5, seed=0).order(2)


# ---------------------------------------------------------------------- augmentation
def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):

    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for k in range(2):
            img = (torch.rand(40, 40, 3, generator=torch.Generator().manual_seed(k)) * 255).byte()
            Image.fromarray(img.numpy()).save(root / name / f"{k}.png")
    samples = discover(root, val_fraction=0, test_fraction=0, verify=False).train
    transform = build_transform(HALF, image_size=32, train=True, level="medium", seed=0)
    ds = ImageDataset(samples, transform, seed=0)
    first = ds[(3, 1)][0]
    ds[(3, 0)], ds[(5, 2)]  # other samples in between: what a worker or a reorder does
    assert torch.equal(ds[(3, 1)][0], first)
    again = ImageDataset(samples, build_transform(HALF, image_size=32, train=True, level="medium",
                                                  seed=0), seed=0)
    assert torch.equal(again[(3, 1)][0], first)  # a fresh process: the same crop
    assert not torch.equal(ds[(4, 1)][0], first)  # the next epoch: another crop
    assert not torch.equal(ImageDataset(samples, transform, seed=1)[(3, 1)][0], first)


# ---------------------------------------------------------------------- the loader
class _Tags(Dataset):
    """Returns the index it was asked for: shows which (epoch, i) each batch holds."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index):
        epoch, i = index
        return torch.tensor([epoch, i])


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_starts_at_the_resumed_epoch(workers):
    """Lightning's order at each epoch: ``iter()`` first, ``set_epoch`` after it, then the
    batches. A resumed run's loader is new (its sampler at epoch 0) and its first epoch is
    not 0: its first pass must still be that epoch's, also when the ContinuousLoader's
    workers run passes ahead."""
    def loader():
        return ContinuousLoader(_Tags(), batch_size=4, num_workers=workers,
                                persistent_workers=workers > 0,
                                sampler=EpochSampler(12, seed=3, tag_epoch=True))

    def epochs(dl, numbers):
        seen = {}
        for epoch in numbers:
            it = iter(dl)
            dl.sampler.set_epoch(epoch)
            seen[epoch] = torch.cat(list(it)).tolist()
        return seen

    uninterrupted = epochs(loader(), range(4))
    assert epochs(loader(), (2, 3)) == {e: uninterrupted[e] for e in (2, 3)}
    assert all(e == epoch for epoch in uninterrupted for e, _ in uninterrupted[epoch])
    assert [i for _, i in uninterrupted[2]] == EpochSampler(12, seed=3).order(2)


def test_datamodule_train_loader_is_epoch_seeded(brick_cat_dir):
    splits = discover(brick_cat_dir, val_fraction=0.2, test_fraction=0.2, seed=0)
    dm = FinetuneDataModule(splits, HALF, image_size=32, augment="medium", batch_size=4, seed=0)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and loader.sampler.tag_epoch
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        epochs.append(torch.cat([x for x, _ in loader]))
    fresh = FinetuneDataModule(splits, HALF, image_size=32, augment="medium", batch_size=4,
                               seed=0).train_dataloader()
    fresh.sampler.set_epoch(1)
    assert torch.equal(torch.cat([x for x, _ in fresh]), epochs[1])  # order and crops
    assert not torch.equal(epochs[0], epochs[1])


# ---------------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_full_run_killed_mid_epoch_resumes_to_the_same_result(brick_cat_dir, tmp_path):
    """kill -9 in the third epoch of a `full` run (after two checkpoints), --resume: the
    same best and last weights, val loss and test metrics as the run that was not killed."""
    ref_dir, out = tmp_path / "uninterrupted", tmp_path / "killed"
    ref = run_child(run_args(brick_cat_dir, ref_dir, "full", epochs=3), ref_dir)
    assert ref.returncode == 0, ref.stderr[-3000:]
    at = ref.moments.index("train step 1, epoch 2, phase full") + 1
    killed = run_child(run_args(brick_cat_dir, out, "full", epochs=3), out, kill_at=at)
    assert killed.killed and killed.moments[-1] == "train step 1, epoch 2, phase full"
    resumed = run_child([*run_args(brick_cat_dir, out, "full", epochs=3), "--resume"], out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Resumed from epoch 1's checkpoint: only epoch 2 and the evaluation ran again.
    assert resumed.moments[0] == "start of phase full"
    assert resumed.moments[1] == "train step 0, epoch 2, phase full"
    diff = differences(ref_dir, out)
    assert max(diff.values()) <= TOL, diff
    assert files_lost(out) == []


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "n"), [("full", 3), ("lp-ft", 4)])
def test_random_kills_resume_to_the_same_result(strategy, n, brick_cat_dir, tmp_path):
    """Kill points drawn across the run (inside an epoch, between epochs, between lp-ft's
    phases, during evaluation), each killed with SIGKILL and resumed: every resume ends
    with the uninterrupted run's weights, val loss and test metrics; no file is lost."""
    trials = inject(brick_cat_dir, tmp_path, strategy, n=n, seed=2026)
    places = set(PLACES) - ({"between phases"} if strategy == "full" else set())
    assert {place_of(t.where) for t in trials} == places
    for t in trials:
        assert t.killed and t.resumed, t
        assert max(t.diff.values()) <= TOL, t
        assert t.lost == [], t


@pytest.mark.slow
def test_workers_do_not_change_the_run_and_resume_exactly(brick_cat_dir, tmp_path):
    """Augmentation seeded per sample and order per epoch: a run with 2 ContinuousLoader
    workers, killed mid-epoch and resumed, ends bit for bit where a run without workers
    ends uninterrupted."""
    ref_dir, out = tmp_path / "no-workers", tmp_path / "workers"
    ref = run_child(run_args(brick_cat_dir, ref_dir, "full", epochs=3), ref_dir)
    assert ref.returncode == 0, ref.stderr[-3000:]
    args = run_args(brick_cat_dir, out, "full", epochs=3, num_workers=2)
    at = ref.moments.index("train step 1, epoch 2, phase full") + 1
    assert run_child(args, out, kill_at=at).killed
    resumed = run_child([*args, "--resume"], out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    diff = differences(ref_dir, out)
    assert max(diff.values()) <= TOL, diff

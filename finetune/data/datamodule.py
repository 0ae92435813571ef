"""The Lightning data module: ``DataSplits`` + a backbone's ``PretrainedCfg`` -> DataLoaders.

Discovery (and verification of every file) happens before this module exists, in
``sources.discover``; ``setup`` only builds datasets, as Lightning expects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .image_cache import ImageStore, cached_images, train_side
from .images import load_image
from .loader import ContinuousLoader
from .sampling import AugmentationSeeder, EpochSampler
from .sources import SPLITS, DataSplits
from .transforms import build_transform, jpeg_draft_size, min_crop_scale, resolve_sizes

if TYPE_CHECKING:
    import albumentations as A

    from ..models._base import PretrainedCfg


class ImageDataset(Dataset):
    """``(path, label)`` pairs -> ``(transform(image), label)``, image read by ``load_image``.

    Files were verified at discovery; one that went bad since raises ``ImageDecodeError``
    naming it, rather than being replaced silently by another sample. ``draft_size`` lets
    big JPEGs decode at a reduced scale (see ``transforms.jpeg_draft_size``). With a
    ``store`` (``image_cache.ImageStore`` of the same samples, in the same order) images
    are read from the decoded-image cache instead of decoded.

    With a ``seed`` the transform's randomness is reseeded at every sample from ``(seed,
    epoch, index)``; an index is then ``i`` (epoch 0) or ``(epoch, i)`` from an
    ``EpochSampler(tag_epoch=True)``. A sample's crop and flip are thus the same whichever
    worker loads it, in whatever order, and in a resumed run as in an uninterrupted one.
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: A.Compose | None,
        *,
        draft_size: int | None = None,
        store: ImageStore | None = None,
        seed: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self._reseed = AugmentationSeeder(transform) if seed is not None and transform else None
        self.draft_size = draft_size
        if store is not None and len(store) != len(self.samples):
            raise ValueError(f"The image store holds {len(store)} images for {len(self.samples)} samples.")
        self.store = store

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = index if isinstance(index, tuple) else (0, index)
        path, label = self.samples[i]
        if self._reseed is not None:
            self._reseed(self.seed, epoch, i)
        if self.store is not None:
            image = self.store[i]  # (H, W, 3) uint8 RGB, decoded and shrunk once
        else:
            image = load_image(path, draft_size=self.draft_size)  # (H, W, 3) uint8 RGB
        if self.transform is None:
            return torch.from_numpy(image).permute(2, 0, 1).contiguous(), label  # (3, H, W) uint8
        return self.transform(image=image)["image"], label  # (3, S, S) float32

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


class FinetuneDataModule(pl.LightningDataModule):
    # The training loader's class: its workers run on into the next epoch (data/loader.py).
    # A benchmark sets DataLoader on an instance to time the plain loader side by side.
    train_loader_cls: type[DataLoader] = ContinuousLoader

    def __init__(
        self,
        splits: DataSplits,
        pretrained_cfg: PretrainedCfg,
        *,
        image_size: int | None = None,
        augment: str = "light",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        balanced_sampling: bool = False,
        seed: int = 0,
        hflip: bool = True,
        normalize_on_device: bool = False,
        image_cache: bool = False,
        image_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1.")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size={eval_batch_size} must be at least 1 (or None: "
                             "the training batch size).")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be 0 (load in the main process) or more.")
        self.splits = splits
        self.classes = list(splits.classes)
        self.pretrained_cfg = pretrained_cfg
        self.image_size = image_size
        self.augment = augment
        self.batch_size = batch_size
        # Batches without gradients (see eval_dataloader); None: the training batch.
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.balanced_sampling = balanced_sampling
        self.seed = seed
        # Built now, not in setup, so a bad level or size fails before any training starts.
        self.train_transform = build_transform(
            pretrained_cfg, image_size=image_size, train=True, level=augment, seed=seed, hflip=hflip,
            normalize=not normalize_on_device,
        )
        # normalize_on_device: batches stay uint8; the model side calls normalize_batch.
        self.eval_transform = build_transform(
            pretrained_cfg, image_size=image_size, train=False, normalize=not normalize_on_device
        )
        self.draft_size = jpeg_draft_size(pretrained_cfg, image_size)
        # image_cache: decode every image once into image_cache's memory-mapped store, at
        # the eval resize for val / test / unaugmented train and, for augmented training,
        # at the side that keeps the smallest random crop at full resolution.
        self.image_cache = image_cache
        self.image_cache_dir = image_cache_dir
        size, resize = resolve_sizes(pretrained_cfg, image_size)
        self.eval_side = resize
        self.train_side = train_side(size, resize, min_crop_scale(augment))
        self.datasets: dict[str, ImageDataset] = {}
        self._train_unaugmented: ImageDataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.datasets = {
            "train": self._make(self.splits.train, self.train_transform, "train", self.train_side,
                                seed=self.seed),
            "val": self._make(self.splits.val, self.eval_transform, "val", self.eval_side),
            "test": self._make(self.splits.test, self.eval_transform, "test", self.eval_side),
        }

    def _make(self, samples: list[tuple[str, int]], transform: A.Compose, split: str,
              side: int, seed: int | None = None) -> ImageDataset:
        store = None
        if self.image_cache:
            self._single_cv2_thread()
            store = cached_images(samples, side=side, draft_size=self.draft_size,
                                  cache_dir=self.image_cache_dir, num_workers=self.num_workers,
                                  desc=f"images {split}")
        return ImageDataset(samples, transform, draft_size=self.draft_size, store=store, seed=seed)

    def _dataset(self, split: str, *, augmented: bool) -> ImageDataset:
        if split not in SPLITS:
            raise ValueError(f"Unknown split '{split}'. Valid splits: {', '.join(SPLITS)}.")
        self.setup()
        if split == "train" and not augmented:
            # Made on first use (feature extraction, reports) and kept: with the image
            # cache, making it stats every training file to find the cache entry.
            if self._train_unaugmented is None:
                self._train_unaugmented = self._make(self.splits.train, self.eval_transform, "train",
                                                     self.eval_side)
            return self._train_unaugmented
        return self.datasets[split]

    def _single_cv2_thread(self) -> None:
        if self.num_workers > 0:
            # Each worker is already one of many parallel processes: OpenCV's own thread
            # pool (a thread per core by default) would oversubscribe the CPU. Set here in
            # the parent, before the fork: calling it inside a forked worker deadlocks on
            # the parent's pool, which the child inherited without its threads.
            cv2.setNumThreads(1)

    def _loader(self, dataset: ImageDataset, *, loader_cls: type[DataLoader] = DataLoader,
                **kwargs) -> DataLoader:
        self._single_cv2_thread()
        kwargs.setdefault("batch_size", self.batch_size)
        return loader_cls(
            dataset,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Augmented, shuffled (or class-balanced), ragged last batch dropped. With workers
        a ``ContinuousLoader``: they make the next epoch's batches while this one ends.
        Order and augmentation are functions of (seed, epoch) (``EpochSampler``), so a
        resumed epoch sees what the uninterrupted run's epoch saw."""
        dataset = self._dataset("train", augmented=True)
        weights = None
        if self.balanced_sampling:
            counts = self.splits.counts("train")
            weights = torch.tensor([1.0 / counts[label] for label in dataset.labels], dtype=torch.double)
        sampler = EpochSampler(len(dataset), seed=self.seed, weights=weights, tag_epoch=True)
        # Dropping a ragged last batch keeps BatchNorm away from batches of one, but only
        # when there is more than one batch: a tiny set must still train on something.
        drop_last = len(dataset) > self.batch_size
        return self._loader(dataset, loader_cls=self.train_loader_cls, sampler=sampler,
                            drop_last=drop_last, generator=_loader_generator(self.seed))

    # Loaders without gradients (validation, test, feature extraction, reports) take
    # batches of ``eval_batch_size``. ``finetune run`` makes it twice the training batch on
    # a GPU (eval_batch_size_for): inference keeps no activations for a backward pass, so
    # twice the batch still needs far less memory than one training batch, and the GPU
    # runs fewer, fuller launches. On a CPU larger batches are slower per image
    # (benchmarks/eval_batch.py), so there it stays the training batch. Eval-mode outputs
    # do not depend on the batch.
    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        """Eval transform, file order, no shuffle: for feature extraction (the train split
        WITHOUT augmentation), evaluation and reports."""
        return self._loader(self._dataset(split, augmented=False), shuffle=False,
                            batch_size=self.eval_batch_size)


def _loader_generator(seed: int) -> torch.Generator:
    """A DataLoader draws its workers' base seed at every ``iter()``: from this generator,
    not torch's global one, whose draws would otherwise depend on how many epochs this
    process has run."""
    return torch.Generator().manual_seed(seed)


def epoch_loader(dataset: Dataset, *, batch_size: int, seed: int,
                 generator: torch.Generator | None = None) -> DataLoader:
    """A training loader over ``dataset`` (cached features), shuffled by ``EpochSampler``:
    a resumed epoch gets the order the uninterrupted run's epoch got."""
    return ContinuousLoader(dataset, batch_size=batch_size,
                            sampler=EpochSampler(len(dataset), seed=seed), generator=generator)

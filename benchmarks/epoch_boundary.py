"""The wait at the start of every epoch: ``DataLoader`` (persistent workers) against
``ContinuousLoader``, whose workers make the next epoch's batches while this one ends.

    python benchmarks/epoch_boundary.py            # 15 batches of 32 photos, batch 32, 2 workers
    python benchmarks/epoch_boundary.py --quick

A CPU stand-in for a GPU run: the training step is a ``time.sleep`` (the main thread
waits on the accelerator and leaves the CPU to the workers), lasting what a step takes
when the loader alone is ``--headroom`` times faster than the step (on one H100 with
ResNet-50 and ``--image-cache`` the loader made 10,000-14,000 img/s against 3,950 for
the model: about 2.5-3.5x). Each epoch ends with a validation pause of ``--val-s``
seconds. Short epochs, as in fine-tuning: ``--batches`` per epoch. Both loaders read the
same decoded-image cache with the training augmentation of ``finetune run``; runs
alternate and the best of ``--repeats`` is kept. Reported: images/s trained and the
share of the step-bound ceiling (``batch / step``) each reaches.

Writes benchmarks/results/epoch_boundary.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from _common import load_now, table, write_results  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from finetune.data import FinetuneDataModule, discover  # noqa: E402
from finetune.data.builtin import build_dataset  # noqa: E402
from finetune.data.loader import ContinuousLoader  # noqa: E402
from finetune.models import create_backbone  # noqa: E402


def trained_per_s(loader, *, epochs: int, step_s: float, val_s: float) -> float:
    """Images/s through ``epochs`` epochs of sleep-steps, validation pauses excluded."""
    for _ in loader:  # a first epoch starts the workers (and is not timed)
        time.sleep(step_s)
    time.sleep(val_s)
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            time.sleep(step_s)
            n += x.shape[0]
        time.sleep(val_s)
    return n / (time.perf_counter() - start - epochs * val_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=15, help="batches per epoch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--headroom", type=float, default=2.5)
    parser.add_argument("--val-s", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 2 repeats")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats = 2, 2
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="epoch-boundary-"))
    try:
        data = build_dataset("photos", root=tmp, per_class=args.per_class, size=288)
        splits = discover(data, val_fraction=0.02, test_fraction=0.02, seed=0)
        cfg = create_backbone("resnet50", num_classes=len(splits.classes)).pretrained_cfg
        dm = FinetuneDataModule(splits, cfg, image_size=args.size, augment="light",
                                batch_size=args.batch_size, num_workers=args.workers,
                                normalize_on_device=True, image_cache=True,
                                image_cache_dir=str(tmp / "image-cache"))
        dm.setup("fit")
        n = args.batches * args.batch_size
        if len(dm.datasets["train"]) < n:
            parser.error(f"--per-class {args.per_class} gives {len(dm.datasets['train'])} training "
                         f"images; --batches {args.batches} needs {n}.")
        dataset = Subset(dm.datasets["train"], range(n))

        def make(cls):
            return cls(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                       num_workers=args.workers, persistent_workers=True,
                       generator=torch.Generator().manual_seed(0),
                       worker_init_fn=dm.train_dataloader().worker_init_fn)

        # The loader alone, to set the step: best of three epochs after a warm-up epoch.
        loader = make(DataLoader)
        alone = 0.0
        for i in range(4):
            start, count = time.perf_counter(), 0
            for x, _ in loader:
                count += x.shape[0]
            alone = max(alone, count / (time.perf_counter() - start)) if i else alone
        del loader
        step_s = args.batch_size / (alone / args.headroom)
        ceiling = args.batch_size / step_s
        print(f"loader alone {alone:.0f} img/s; step {1e3 * step_s:.1f} ms; ceiling "
              f"{ceiling:.0f} img/s", flush=True)

        best = {"DataLoader": 0.0, "ContinuousLoader": 0.0}
        for _ in range(args.repeats):
            for cls in (DataLoader, ContinuousLoader):
                loader = make(cls)
                rate = trained_per_s(loader, epochs=args.epochs, step_s=step_s, val_s=args.val_s)
                best[cls.__name__] = max(best[cls.__name__], rate)
                print(f"  {cls.__name__:<17} {rate:7.0f} img/s", flush=True)
                del loader
        rows = [{"loader": name, "images_per_s": round(rate, 1),
                 "of_ceiling": f"{100 * rate / ceiling:.0f}%", "load_1min": load_now()}
                for name, rate in best.items()]
        ratio = best["ContinuousLoader"] / best["DataLoader"]
        print()
        print(table(rows, ["loader", "images_per_s", "of_ceiling", "load_1min"]))
        print(f"\nContinuousLoader / DataLoader: {ratio:.3f}x")
        payload = {"args": vars(args) | {"out": str(args.out)}, "loader_alone_img_s": round(alone, 1),
                   "step_ms": round(1e3 * step_s, 2), "ceiling_img_s": round(ceiling, 1),
                   "rows": rows, "ratio": round(ratio, 3)}
        print("wrote", write_results("epoch_boundary", payload, args.out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

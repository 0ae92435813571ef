"""The training loader with and without the decoded-image cache (``--image-cache``).

    python benchmarks/loader.py                       # 640 photos at 288 px, 224 px crops
    python benchmarks/loader.py --quick               # 160 photos
    python benchmarks/loader.py --workers 0 2 --size 224 --source-px 288

The images are what ``benchmarks/gpu_bench.py`` trains on: the built-in photo crops,
written as PNG at ``--source-px``. For each worker count, the same ``FinetuneDataModule``
train loader (light augmentation: RandomResizedCrop + flip; uint8 batches, normalised on
the device, as on a GPU) is timed over whole epochs, decoding every file each epoch
against reading the cache. Reported: images/s of each, their ratio, and the one-time
cost of building the cache (a decode pass plus the write). The passes alternate
(decode, cache, decode, cache...) and the best of ``--repeats`` is kept, so both see
the same load on a shared machine.

Writes benchmarks/results/loader.json and prints a Markdown table.
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

from finetune.data import FinetuneDataModule, discover  # noqa: E402
from finetune.data.builtin import build_dataset  # noqa: E402
from finetune.models import create_backbone  # noqa: E402


def images_per_s(loader) -> float:
    n, start = 0, time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--source-px", type=int, default=288)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 images per class, 2 repeats")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.per_class, args.repeats = 20, 2
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    try:
        data = build_dataset("photos", root=tmp / "data", per_class=args.per_class, size=args.source_px)
        splits = discover(data, val_fraction=0.0, test_fraction=0.0, seed=0)
        pretrained_cfg = create_backbone("resnet50", weights="none").pretrained_cfg
        rows = []
        for workers in args.workers:
            def module(cache: bool, workers=workers) -> FinetuneDataModule:
                return FinetuneDataModule(
                    splits, pretrained_cfg, image_size=args.size, augment="light",
                    batch_size=args.batch_size, num_workers=workers, normalize_on_device=True,
                    image_cache=cache, image_cache_dir=str(tmp / f"cache-{workers}"))

            plain = module(False)
            plain.setup()
            start = time.perf_counter()
            cached = module(True)
            cached.setup()  # builds the train entry (decode + write) at the training side
            build_s = time.perf_counter() - start
            loaders = {"decode": plain.train_dataloader(), "cache": cached.train_dataloader()}
            best = {"decode": 0.0, "cache": 0.0}
            for _ in range(args.repeats):
                for name, loader in loaders.items():
                    best[name] = max(best[name], images_per_s(loader))
            del loaders
            rows.append({
                "workers": workers, "images": len(splits.train),
                "decode_img_s": round(best["decode"], 1), "cache_img_s": round(best["cache"], 1),
                "speedup": round(best["cache"] / best["decode"], 2),
                "cache_build_s": round(build_s, 2),
                "cache_mb": round(sum(p.stat().st_size for p in (tmp / f"cache-{workers}").rglob("pixels.u8")) / 1e6, 1),
                "train_side": cached.train_side, "load_1min": load_now(),
            })
            print(table(rows[-1:], list(rows[-1])), flush=True)
        columns = ["workers", "images", "decode_img_s", "cache_img_s", "speedup", "cache_build_s",
                   "cache_mb", "train_side", "load_1min"]
        print("\n" + table(rows, columns))
        payload = {"args": vars(args) | {"out": str(args.out)}, "rows": rows}
        print("wrote", write_results("loader", payload, args.out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

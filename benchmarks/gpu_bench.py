"""ResNet-50 training throughput on one GPU: synthetic data, the real-data pipeline, and
`finetune run` itself, with and without channels_last / torch.compile.

    bash benchmarks/gpu.sh            # on a machine with one CUDA GPU

Anchors: NVIDIA's ResNet-50 v1.5 reference trains at about 2,470 img/s on one A100
with AMP; the goal on one H100 is above 3,000 img/s, and the real-data pipeline within
15% of synthetic. Everything is measured in this one process, side by side, and
printed as a table (and JSON with --json-out).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from finetune.models import create_backbone

DEVICE = "cuda"  # --device cpu exercises the script on a machine without a GPU


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def train_steps(model, batches, *, steps: int, warmup: int, channels_last: bool,
                to_device=None):
    """SGD steps in bf16 autocast on the (x, y) batches that ``batches`` yields, moved
    and normalised by ``to_device`` (None: they are on the GPU already). Returns images/s
    and the data-wait fraction: the share of the timed wall clock spent in ``next()``,
    waiting for the loader. Nothing synchronises inside the loop, so while the GPU is
    the bottleneck the CPU waits in kernel launches instead and the fraction stays near
    zero; a fraction well above zero says the loader, not the GPU, set the pace."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    model.train()
    n_images = 0
    start = None
    waited = 0.0
    batches = iter(batches)
    for i in itertools.count():
        if i == warmup:
            _sync()
            start = time.perf_counter()
            n_images, waited = 0, 0.0
        if i == warmup + steps:
            break
        asked = time.perf_counter()
        x, y = next(batches)
        waited += time.perf_counter() - asked
        if to_device is not None:
            x, y = to_device(x, y)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_images += x.shape[0]
    _sync()
    elapsed = time.perf_counter() - start
    return n_images / elapsed, waited / elapsed


def synthetic(batch_size: int, size: int):
    x = torch.randn(batch_size, 3, size, size, device=DEVICE)
    y = torch.randint(0, 1000, (batch_size,), device=DEVICE)
    while True:
        yield x, y


def epochs(loader):
    while True:
        yield from loader


def moved_and_normalised(pretrained_cfg):
    """What ``finetune run`` does to a loader batch on the GPU: a non-blocking copy from
    pinned memory, then uint8 -> normalised float (and channels_last)."""
    from finetune.data.transforms import prepare_batch

    def to_device(x, y):
        x = x.to(DEVICE, non_blocking=True)
        return prepare_batch(x, pretrained_cfg), y.to(DEVICE, non_blocking=True)

    return to_device


def host_uint8(batch_size: int, size: int):
    """One uint8 batch in pinned host memory, yielded for ever: the feed with no loader,
    so that the copy and normalisation cost is measured apart from the loader's."""
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 1000, (batch_size,))
    if DEVICE == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    while True:
        yield x, y


def loader_images_per_s(loader) -> float:
    """The loader alone: how fast can the CPU side feed the GPU? Two passes; the second is
    timed (the first starts the workers and fills their prefetch queues)."""
    for _ in loader:
        pass
    n, start = 0, time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def make_model(channels_last: bool, compile_: bool):
    model = create_backbone("resnet50", num_classes=1000).to(DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model = torch.compile(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--data-root", type=Path, default=Path("/tmp/finetune-gpu-data"))
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--run-epochs", type=int, default=3)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-nchw", action="store_true", help="skip the NCHW synthetic row")
    parser.add_argument("--skip-run-compile", action="store_true",
                        help="skip the `finetune run --compile` row (mostly compile time)")
    parser.add_argument("--alt-workers", type=int, default=8,
                        help="also time the cached pipeline with this many workers (0: skip)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    gpu_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bs, size = args.batch_size, args.image_size
    rows = []

    t0 = time.perf_counter()

    def record(name, ips, note=""):
        rows.append({"config": name, "images_per_s": round(ips, 1), "note": note,
                     "elapsed_s": round(time.perf_counter() - t0, 1)})
        print(f"{name:<52} {ips:>9.1f} img/s  {note}  [t={time.perf_counter() - t0:.0f} s]",
              flush=True)
        if args.json_out:  # after every row, so a run cut short keeps what it measured
            args.json_out.write_text(json.dumps({
                "gpu": gpu_name, "torch": torch.__version__, "batch_size": bs,
                "image_size": size, "workers": args.workers, "rows": rows}, indent=2))

    print(f"GPU: {gpu_name}, torch {torch.__version__}, batch {bs}, {size} px, "
          f"bf16 autocast, {os.cpu_count()} CPU cores, {args.workers} loader workers", flush=True)

    # 1. Synthetic data: the model's ceiling. The models are kept, so the real-data runs
    #    below reuse them (a compiled model is compiled once).
    variants = [("channels_last", True, False)]
    if not args.skip_nchw:
        variants.insert(0, ("NCHW", False, False))
    if not args.skip_compile:
        variants.append(("channels_last + torch.compile", True, True))
    synth, models = {}, {}
    for name, cl, comp in variants:
        model = make_model(cl, comp)
        warmup = args.warmup + (10 if comp else 0)
        synth[name], _ = train_steps(model, synthetic(bs, size), steps=args.steps,
                                     warmup=warmup, channels_last=cl)
        record(f"synthetic, {name}", synth[name])
        if cl:
            models[name] = (model, cl)
        del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    cfg_pre = create_backbone("resnet50", num_classes=1000).pretrained_cfg

    to_device = moved_and_normalised(cfg_pre)

    def real_rows(label, loader):
        for name, (model, cl) in models.items():
            warmup = args.warmup + (10 if "compile" in name else 0)
            ips, wait = train_steps(model, loader, steps=args.steps, warmup=warmup,
                                    channels_last=cl, to_device=to_device)
            record(f"{label}, {name}", ips, f"{100 * ips / synth[name]:.0f}% of synthetic, "
                   f"data wait {100 * wait:.0f}%")

    # 1b. The feed without a loader: one uint8 batch in pinned host memory, copied to the
    #     GPU and normalised every step as finetune run does. What this loses against
    #     synthetic is the copy and normalisation, not the loader.
    real_rows("pinned uint8 batch, copied + normalised", host_uint8(bs, size))

    # 2. The real-data pipeline: PNG decode + albumentations (RandomResizedCrop, flip) in
    #    DataLoader workers, uint8 batches in pinned memory normalised on the GPU, the same
    #    model step; then the same with the decoded-image cache (--image-cache): decoded
    #    once, then read from a memory map, with the same augmentations.
    from finetune.data import FinetuneDataModule, discover
    from finetune.data.builtin import build_dataset

    start = time.perf_counter()
    data = build_dataset("photos", root=args.data_root, per_class=args.per_class, size=288)
    splits = discover(data, val_fraction=0.02, test_fraction=0.02, seed=0)
    print(f"data: {len(splits.train)} training images at 288 px, built and verified in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    cache_dir = str(args.data_root / "image-cache")
    from torch.utils.data import DataLoader

    # The training loader is a ContinuousLoader (its workers go on into the next epoch);
    # with the cache it is also timed as a plain DataLoader with persistent workers, the
    # baseline it replaced, side by side, and with fewer workers (the cache makes each
    # worker's batch cheap, and fewer workers leave the main process more of the CPU).
    # "Data loader alone" is timed through a plain DataLoader: a ContinuousLoader's
    # workers run ahead into the pass that would be timed, which flatters its figure.
    continuous = FinetuneDataModule.train_loader_cls
    loaders = [("", False, continuous, args.workers, True),
               (" + --image-cache, plain DataLoader", True, DataLoader, args.workers, True),
               (" + --image-cache", True, continuous, args.workers, False)]
    if 0 < args.alt_workers != args.workers:
        loaders.append((f" + --image-cache, {args.alt_workers} workers", True, continuous,
                        args.alt_workers, False))
    for label, cached, loader_cls, workers, time_alone in loaders:
        start = time.perf_counter()
        dm = FinetuneDataModule(splits, cfg_pre, image_size=size, augment="light",
                                batch_size=bs, num_workers=workers,
                                normalize_on_device=DEVICE == "cuda", image_cache=cached,
                                image_cache_dir=cache_dir if cached else None)
        dm.setup("fit")
        if cached:
            print(f"image cache ready in {time.perf_counter() - start:.1f} s", flush=True)
        if time_alone:
            dm.train_loader_cls = DataLoader
            record(f"data loader alone{' + --image-cache' if cached else ''}",
                   loader_images_per_s(dm.train_dataloader()),
                   f"decode + augment, no model, {workers} workers")
        dm.train_loader_cls = loader_cls
        loader = dm.train_dataloader()
        real_rows(f"real-data pipeline{label}", epochs(loader))
        del loader, dm
    models.clear()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()

    # 3. `finetune run --strategy full` itself (Lightning, bf16-mixed, channels_last), then
    #    with --image-cache (the cache built above is reused), then also with --compile.
    from finetune.config import RunConfig
    from finetune.training import run

    cfg = RunConfig(data=str(data), output=str(args.data_root / "run-full"), backbone="resnet50",
                    weights="none", strategy="full", epochs=args.run_epochs, batch_size=bs,
                    image_size=size, num_workers=args.workers, val_fraction=0.02,
                    test_fraction=0.02, accelerator="gpu" if DEVICE == "cuda" else "cpu")
    fixed = "includes worker start-up, validation and checkpoint writes"
    cached_cfg = cfg.replace(image_cache=True, image_cache_dir=cache_dir)
    runs = [("", cfg, continuous, fixed),
            (" --image-cache, plain DataLoader", cached_cfg, DataLoader, fixed),
            (" --image-cache", cached_cfg, continuous, fixed)]
    if not args.skip_compile and not args.skip_run_compile:
        runs.append((" --image-cache --compile", cached_cfg.replace(compile=True), continuous,
                     fixed + " and compile time"))
    for flags, run_cfg, loader_cls, note in runs:
        # run() builds its own datamodule: the baseline's loader class is set on the class
        # for that one run, and put back.
        FinetuneDataModule.train_loader_cls = loader_cls
        try:
            m = run(run_cfg, overwrite=True, progress=False).metrics
        finally:
            FinetuneDataModule.train_loader_cls = continuous
        record(f"finetune run --strategy full{flags} ({args.run_epochs} epochs)",
               m["images_per_s"], note)


if __name__ == "__main__":
    main()

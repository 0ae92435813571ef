"""Training images/s of ``partial`` and ``full`` through our Lightning path against a plain
PyTorch loop over the same backbone, data, batch size, augmentations and optimizer.

    python benchmarks/throughput.py --threads 1     # 192 photos at 128 px, 2 epochs, twice
    python benchmarks/throughput.py --quick         # 64 photos, 2 epochs, once

Lightning path: ``FinetuneModule`` + the run's own ``Trainer`` (``finetune.training.trainer.build_trainer``:
checkpointing, the BN-policy hooks, the LR schedule). Plain loop: the same model weights,
the same phase's frozen stages and parameter groups, AdamW and the same warm-up + cosine
schedule, ``for x, y in loader: loss.backward(); opt.step()``. Both read the
``FinetuneDataModule`` train loader (same decoding, augmentation, workers).

Measured after ``--skip`` warm-up steps, over the remaining steps of all epochs:

* images/s: images / wall time of that window (everything: steps, loader waits, epoch ends);
* steps-only images/s: images / time inside the steps (forward, backward, optimizer);
* data-wait fraction: time the loop waited for the next batch within an epoch / window.
  (For Lightning this gap also holds its per-step bookkeeping between the hooks.)

Also the loader alone (images/s with 0, 1, 2 workers) and PNG decoding by
``finetune.data.load_image`` (Pillow) against OpenCV's ``imdecode`` (best of 3 passes). Prints Markdown tables; writes
benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import load_now, machine, table, write_results  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data import FinetuneDataModule, discover, load_image  # noqa: E402
from finetune.data.builtin import build_dataset  # noqa: E402
from finetune.run_folder import build_model  # noqa: E402
from finetune.strategies import plan  # noqa: E402
from finetune.training.module import FinetuneModule  # noqa: E402
from finetune.training.trainer import build_trainer, quiet_lightning  # noqa: E402


class Window:
    """Accumulates step and wait times after ``skip`` warm-up steps."""

    def __init__(self, skip: int) -> None:
        self.skip, self.steps = skip, 0
        self.images, self.step_s, self.wait_s = 0, 0.0, 0.0
        self.t_first: float | None = None
        self.t_last = 0.0

    def record(self, wait: float, start: float, end: float, n: int) -> None:
        self.steps += 1
        if self.steps <= self.skip:
            self.t_first = end  # the window opens when the last warm-up step ends
            return
        self.images += n
        self.step_s += end - start
        self.wait_s += wait
        self.t_last = end

    def result(self) -> dict:
        wall = self.t_last - (self.t_first or 0.0)
        return {"images": self.images, "window_s": round(wall, 3),
                "images_per_s": round(self.images / wall, 3) if wall > 0 else 0.0,
                "steps_images_per_s": round(self.images / self.step_s, 3) if self.step_s else 0.0,
                "data_wait_fraction": round(self.wait_s / wall, 4) if wall > 0 else 0.0}


class StepTimer(pl.Callback):
    def __init__(self, window: Window) -> None:
        self.window = window
        self.prev_end = 0.0
        self.start = 0.0
        self.wait = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.prev_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()
        self.wait = self.start - self.prev_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.prev_end = time.perf_counter()
        self.window.record(self.wait, self.start, self.prev_end, batch[1].shape[0])


def lightning_run(model, phase, cfg, dm, classes, skip, work: Path) -> dict:
    module = FinetuneModule(model, phase, cfg, classes=classes)
    window = Window(skip)
    with quiet_lightning():
        trainer, _ = build_trainer(cfg, phase, work / "ckpt", has_val=False, progress=False)
        trainer.callbacks.append(StepTimer(window))
        start = time.perf_counter()
        trainer.fit(module, dm.train_dataloader())
        total = time.perf_counter() - start
        # What one checkpoint costs (Lightning writes best.ckpt and last.ckpt per epoch
        # here, no val split): the plain loop pays nothing of the kind.
        t0 = time.perf_counter()
        trainer.save_checkpoint(work / "timing.ckpt")
        save_s = time.perf_counter() - t0
    return {**window.result(), "fit_s": round(total, 2), "checkpoint_save_s": round(save_s, 3)}


def plain_run(model, phase, cfg, dm, skip) -> dict:
    """The same phase by hand: freeze, param groups, AdamW, warm-up + cosine, CE loss."""
    phase.freeze(model)
    model.train()
    phase.apply_bn_policy(model)
    optimizer = torch.optim.AdamW(phase.param_groups(model, cfg))
    loader = dm.train_dataloader()
    total_steps = len(loader) * phase.epochs
    warmup = min(total_steps - 1, int(round(phase.warmup_epochs * len(loader))))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    window = Window(skip)
    start_fit = time.perf_counter()
    for _ in range(phase.epochs):
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            window.record(t1 - t0, t1, time.perf_counter(), y.shape[0])
    return {**window.result(), "fit_s": round(time.perf_counter() - start_fit, 2)}


def loader_alone(splits, pcfg, size, batch_size, workers) -> float:
    dm = FinetuneDataModule(splits, pcfg, image_size=size, augment="light", batch_size=batch_size,
                            num_workers=workers)
    loader = dm.train_dataloader()
    next(iter(loader))  # start workers before timing
    start, n = time.perf_counter(), 0
    for _, y in loader:
        n += y.shape[0]
    return n / (time.perf_counter() - start)


def decode_compare(files: list[Path], repeats: int = 3) -> dict:
    """``load_image`` (Pillow, with its checks) against OpenCV's bare PNG decode, in
    alternating passes; and whether their pixels are identical."""
    import cv2

    def opencv(f):
        # BGR -> RGB in numpy: cv2.cvtColor would start OpenCV's thread pool in this
        # process, which hangs DataLoader workers forked from it later.
        return np.ascontiguousarray(cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])

    times: dict[str, list[float]] = {"pillow": [], "opencv": []}
    for _ in range(repeats):
        for name, fn in (("pillow", load_image), ("opencv", opencv)):
            start = time.perf_counter()
            for f in files:
                fn(f)
            times[name].append(1e3 * (time.perf_counter() - start) / len(files))
    identical = all(np.array_equal(load_image(f), opencv(f)) for f in files)
    return {"files": len(files), "pillow_load_image_ms": round(min(times["pillow"]), 3),
            "opencv_imdecode_ms": round(min(times["opencv"]), 3), "identical_pixels": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="each pair, alternating order")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the run's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.epochs, args.repeats = 8, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    env = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    data = build_dataset("photos", root=work / "datasets", per_class=args.per_class, size=args.size)
    splits = discover(data, val_fraction=0.0, test_fraction=0.0, seed=0)
    from finetune.training.trainer import num_workers

    base = RunConfig(data=str(data), backbone="efficientnet_lite0", image_size=args.size,
                     batch_size=args.batch_size, epochs=args.epochs, accelerator="cpu",
                     num_workers=args.workers)
    workers = num_workers(base)
    pretrained = build_model(base, len(splits.classes))
    print(f"{len(splits.train)} photos at {args.size} px, batch {args.batch_size}, {args.epochs} "
          f"epochs, {workers} loader workers, {torch.get_num_threads()} torch threads", flush=True)

    rows = []
    for rep in range(args.repeats):
        for strategy in ("partial", "full"):
            cfg = base.replace(strategy=strategy)
            # Alternate which path goes first, so that a drift in the machine's load
            # does not always favour the same one.
            order = ("lightning", "plain") if rep % 2 == 0 else ("plain", "lightning")
            for path in order:
                model = copy.deepcopy(pretrained)
                phase = plan(cfg, model)[0]
                dm = FinetuneDataModule(splits, model.pretrained_cfg, image_size=args.size,
                                        augment=phase.augment, batch_size=args.batch_size,
                                        num_workers=workers, seed=0, hflip=True)
                pl.seed_everything(0, verbose=False)
                load = load_now()
                if path == "lightning":
                    r = lightning_run(model, phase, cfg, dm, splits.classes, args.skip, work / strategy)
                else:
                    r = plain_run(model, phase, cfg, dm, args.skip)
                rows.append({"repeat": rep, "strategy": strategy, "path": path,
                             "augment": phase.augment, "load_1min": load, **r})
                print(f"  {rep} {strategy} {path}: {r['images_per_s']} img/s", flush=True)

    def mean(strategy: str, path: str, key: str) -> float:
        vals = [r[key] for r in rows if r["strategy"] == strategy and r["path"] == path]
        return sum(vals) / len(vals)

    ratios = []
    for strategy in ("partial", "full"):
        ratios.append({
            "strategy": strategy,
            "lightning_images_per_s": round(mean(strategy, "lightning", "images_per_s"), 2),
            "plain_images_per_s": round(mean(strategy, "plain", "images_per_s"), 2),
            "lightning_over_plain": round(mean(strategy, "lightning", "images_per_s")
                                          / mean(strategy, "plain", "images_per_s"), 3),
            "steps_only_ratio": round(mean(strategy, "lightning", "steps_images_per_s")
                                      / mean(strategy, "plain", "steps_images_per_s"), 3),
            "lightning_data_wait": round(mean(strategy, "lightning", "data_wait_fraction"), 4),
            "plain_data_wait": round(mean(strategy, "plain", "data_wait_fraction"), 4),
            "checkpoint_save_s": round(mean(strategy, "lightning", "checkpoint_save_s"), 3),
        })

    loaders = [{"workers": w, "loader_images_per_s": round(loader_alone(
        splits, pretrained.pretrained_cfg, args.size, args.batch_size, w), 1)} for w in (0, 1, 2)]
    decode = [{"images": f"{args.size} px training crops", **decode_compare(sorted(Path(data).rglob("*.png"))[:120])}]
    from finetune.data.builtin import PHOTO_SOURCES, package_dir

    photos = [package_dir("skimage") / "data" / f for fs in PHOTO_SOURCES.values() for f in fs
              if f.endswith(".png")]
    decode.append({"images": "scikit-image photos, 300-740 px", **decode_compare(photos)})

    print()
    print(table(rows, ["repeat", "strategy", "path", "augment", "images_per_s",
                       "steps_images_per_s", "data_wait_fraction", "window_s", "fit_s",
                       "checkpoint_save_s", "load_1min"]))
    print()
    print(table(ratios, list(ratios[0])))
    print()
    print(table(loaders, ["workers", "loader_images_per_s"]))
    print()
    print(table(decode, list(decode[0])))
    path = write_results("throughput", {
        "setup": {"images": len(splits.train), "image_size": args.size, "batch_size": args.batch_size,
                  "epochs": args.epochs, "repeats": args.repeats, "skip_steps": args.skip, "backbone": "efficientnet_lite0",
                  "loader_workers": workers, "torch_threads": torch.get_num_threads()},
        "runs": rows, "ratios": ratios, "loader_alone": loaders, "decode": decode,
    }, args.out, env=env)
    print(f"\nWritten to {path}")
    shutil.rmtree(work, ignore_errors=True)  # datasets, runs and caches of this invocation


if __name__ == "__main__":
    main()

"""How the cost of a run grows with the data: ``linear`` and ``partial``, one epoch, at
250, 1,000 and 4,000 images; the exponent k of time ~ N^k by log-log least squares.

    python benchmarks/scaling.py --threads 1        # photos at 64 px
    python benchmarks/scaling.py --quick            # 100, 200, 400 images

``linear`` starts each size from an empty feature cache (the extraction is the cost that
grows with N). Two times per run: ``wall_s`` (the whole ``finetune.training.runner``: start-up,
training, evaluation on val and test, report) and ``train_time_s`` (feature extraction and
training only). Constant start-up costs pull the exponent of ``wall_s`` below 1 at small N,
so the script also fits ``wall_s = fixed + per_image * N`` and reports the exponent of
``wall_s - fixed`` (1.0 when the part that depends on N is exactly linear).
Prints Markdown tables; writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
from _common import load_now, machine, table, write_results  # noqa: E402


def exponent(ns: list[int], times: list[float]) -> float:
    """Slope of log(time) against log(N), least squares."""
    k, _ = np.polyfit(np.log(ns), np.log(times), 1)
    return round(float(k), 3)


def affine(ns: list[int], times: list[float]) -> tuple[float, float]:
    """time = fixed + per_image * N, least squares: (fixed s, s per 1,000 images)."""
    per_image, fixed = np.polyfit(np.asarray(ns, dtype=float), times, 1)
    return round(float(fixed), 2), round(1000 * float(per_image), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.sizes = [100, 200, 400]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from finetune.config import RunConfig
    from finetune.data.builtin import build_dataset
    from finetune.training import run

    env = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    rows = []
    for n in args.sizes:
        data = build_dataset("photos", root=work / f"d{n}", per_class=max(1, round(n / 8)), size=args.size)
        for strategy in ("linear", "partial"):
            cfg = RunConfig(data=str(data), output=str(work / f"run-{strategy}-{n}"), strategy=strategy,
                            backbone="efficientnet_lite0", image_size=args.size, epochs=1,
                            batch_size=32, feature_cache_dir=str(work / f"cache-{n}-{strategy}"))
            load = load_now()
            start = time.perf_counter()
            m = run(cfg, progress=False).metrics
            wall = time.perf_counter() - start
            rows.append({"strategy": strategy, "images": sum(m["split_sizes"].values()),
                         "train_images": m["split_sizes"]["train"], "wall_s": round(wall, 2),
                         "train_time_s": m["train_time_s"], "load_1min": load})
            print(f"  {strategy} {rows[-1]['images']}: {wall:.1f} s", flush=True)

    fits = []
    for strategy in ("linear", "partial"):
        mine = [r for r in rows if r["strategy"] == strategy]
        ns = [r["images"] for r in mine]
        walls = [r["wall_s"] for r in mine]
        fixed, per_1000 = affine(ns, walls)
        fits.append({"strategy": strategy,
                     "exponent_wall": exponent(ns, walls),
                     "exponent_train_time": exponent(ns, [r["train_time_s"] for r in mine]),
                     "exponent_wall_minus_fixed": exponent(ns, [max(w - fixed, 1e-3) for w in walls]),
                     "fixed_s": fixed, "s_per_1000_images": per_1000})
    print()
    print(table(rows, ["strategy", "images", "train_images", "wall_s", "train_time_s", "load_1min"]))
    print()
    print(table(fits, list(fits[0])))
    path = write_results("scaling", {
        "setup": {"image_size": args.size, "epochs": 1, "backbone": "efficientnet_lite0",
                  "batch_size": 32, "sizes": args.sizes},
        "runs": rows, "fits": fits,
    }, args.out, env=env)
    print(f"\nWritten to {path}")
    shutil.rmtree(work, ignore_errors=True)  # datasets, runs and caches of this invocation


if __name__ == "__main__":
    main()

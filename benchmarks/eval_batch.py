"""Inference cost per image against the batch size, on this CPU: why ``finetune run``
doubles the evaluation batch only on a GPU.

    python benchmarks/eval_batch.py --threads 1
    python benchmarks/eval_batch.py --threads 2 --size 224 --backbones resnet50

Eval-mode ``forward_features`` under ``inference_mode`` (what feature extraction,
validation and test run), random weights, random input; per backbone, the batch sizes
alternate over ``--repeats`` rounds after one warm-up pass each, and the best round is
kept. Prints milliseconds per image per batch size and the ratio to the smallest batch;
writes benchmarks/results/eval_batch.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from _common import machine, table, write_results  # noqa: E402

from finetune.models import create_backbone  # noqa: E402


def ms_per_image(model: torch.nn.Module, x: torch.Tensor, passes: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(passes):
            model.forward_features(x)
        return 1000 * (time.perf_counter() - start) / (passes * x.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--images", type=int, default=256, help="images per timed round and batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = machine()
    rows = []
    for name in args.backbones:
        model = create_backbone(name, num_classes=10, pretrained=False).eval()
        inputs = {b: torch.randn(b, 3, args.size, args.size) for b in args.batch_sizes}
        for x in inputs.values():
            ms_per_image(model, x, 1)  # warm-up: oneDNN picks its kernels per shape
        best = {b: float("inf") for b in args.batch_sizes}
        for _ in range(args.repeats):
            for b, x in inputs.items():
                best[b] = min(best[b], ms_per_image(model, x, max(1, args.images // b)))
        base = best[args.batch_sizes[0]]
        for b in args.batch_sizes:
            rows.append({"backbone": name, "batch": b, "ms_per_image": round(best[b], 2),
                         "vs_smallest": round(best[b] / base, 2)})
            print(f"{name:<20} batch {b:>4}: {best[b]:7.2f} ms/image ({best[b] / base:.2f}x)", flush=True)
    print()
    print(table(rows, ["backbone", "batch", "ms_per_image", "vs_smallest"]))
    path = write_results("eval_batch", {
        "setup": {"image_size": args.size, "threads": torch.get_num_threads(),
                  "images_per_round": args.images, "repeats": args.repeats},
        "rows": rows,
    }, args.out, env=env)
    print(f"\nWritten to {path}")


if __name__ == "__main__":
    main()

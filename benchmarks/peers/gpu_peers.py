"""On one GPU: timm's ``train.py`` against ``finetune run``, Lite0 at 224 px, the same split.

    bash benchmarks/gpu_peers.sh --train-py .peers/timm_train.py [--epochs 6] [--target 0.95]

The task is the built-in glyphs at ``--per-class`` images per class (10 classes; 1,000
each gives 7,000 training images), split by finetune's own ``discover`` into folders
(tasks.py). Both tools start from the packaged Lite0 weights (weights.py converts them
for timm), train every layer for ``--epochs`` at 224 px, batch ``--batch-size``, in bf16,
with ``--workers`` loader processes:

* timm: ``train.py`` with its default recipe (SGD, cosine, label smoothing), ``--amp
  --amp-dtype bfloat16 --channels-last``, one warm-up epoch;
* finetune: ``finetune run --strategy full`` (AdamW, bf16-mixed, channels_last).

Each process is watched from outside: an epoch ends when timm appends a row to
``summary.csv`` or finetune rewrites ``last.ckpt``, and that moment is paired with the
epoch's validation accuracy (timm's ``eval_top1``, finetune's stored history). Reported per
tool: wall time, time to the first epoch whose validation accuracy reaches ``--target``,
training images/s over the epochs after the first (start-up and the first epoch's
compile and cache warm-up excluded; validation included), and test accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tasks import export_splits  # noqa: E402
from timm_peer import test_accuracy  # noqa: E402
from weights import TIMM_NAME, check_against_finetune, convert, write  # noqa: E402

from finetune.training.checkpointing import saved_history  # noqa: E402


def watch(command: list[str], epoch_count, log: Path) -> tuple[float, list[float]]:
    """Run ``command``; (wall seconds, the seconds since start at which each epoch ended)."""
    start = time.monotonic()
    ends: list[float] = []
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            seen = epoch_count()
            ends.extend([time.monotonic() - start] * max(0, seen - len(ends)))
            time.sleep(0.1)
    if process.returncode:
        raise SystemExit(f"{command[:3]} failed with exit code {process.returncode}; see {log}")
    return time.monotonic() - start, ends


def timm_epochs(summary: Path):
    def count() -> int:
        if not summary.is_file():
            return 0
        with summary.open() as f:
            return max(0, sum(1 for _ in f) - 1)

    return count


def finetune_epochs(last: Path):
    state = {"mtime": None, "n": 0}

    def count() -> int:
        if last.is_file():
            mtime = last.stat().st_mtime_ns
            if mtime != state["mtime"]:
                state["mtime"], state["n"] = mtime, state["n"] + 1
        return state["n"]

    return count


def summarise(tool, wall, ends, val_acc, train_images, test_acc, target, command) -> dict:
    reached = next((t for t, acc in zip(ends, val_acc, strict=False) if acc >= target), None)
    steady = (ends[-1] - ends[0]) if len(ends) > 1 else None
    return {
        "tool": tool,
        "wall_s": round(wall, 1),
        "epoch_end_s": [round(t, 1) for t in ends],
        "val_accuracy": [round(a, 4) for a in val_acc],
        "time_to_target_s": None if reached is None else round(reached, 1),
        "images_per_s": round(train_images * (len(ends) - 1) / steady, 1) if steady else None,
        "test_accuracy": test_acc,
        "command": " ".join(command),
    }


def run_timm(args, task: Path, weights: Path, n_train: int, n_classes: int) -> dict:
    out = args.work / "timm"
    command = [
        sys.executable, str(args.train_py), "--data-dir", str(task), "--train-split", "train",
        "--val-split", "val", "--model", TIMM_NAME, "--pretrained", "--pretrained-path", str(weights),
        "--num-classes", str(n_classes), "--img-size", str(args.image_size), "--epochs", str(args.epochs),
        "--warmup-epochs", "1", "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--amp", "--amp-dtype", "bfloat16", "--channels-last", "--pin-mem", "--device", args.device,
        "--checkpoint-hist", "1", "--output", str(out), "--experiment", "train", "--log-interval", "1000",
    ]  # fmt: skip
    summary = out / "train" / "summary.csv"
    wall, ends = watch(command, timm_epochs(summary), args.work / "timm.log")
    with summary.open() as f:
        val_acc = [float(row["eval_top1"]) / 100 for row in csv.DictReader(f)]
    test_acc = test_accuracy(
        out / "train" / "model_best.pth.tar", task, n_classes, args.image_size, args.device
    )
    return summarise("timm train.py", wall, ends, val_acc, n_train, test_acc, args.target, command)


def run_finetune(args, task: Path, n_train: int) -> dict:
    out = args.work / "finetune"
    command = [
        sys.executable, "-m", "finetune", "run", "--data", str(task),
        "--strategy", "full", "--epochs", str(args.epochs), "--image-size", str(args.image_size),
        "--batch-size", str(args.batch_size), "--num-workers", str(args.workers),
        "--accelerator", "gpu" if args.device == "cuda" else "cpu", "--output", str(out), "--overwrite", "-q",
    ]  # fmt: skip
    wall, ends = watch(
        command, finetune_epochs(out / "checkpoints" / "last.ckpt"), args.work / "finetune.log"
    )
    val_acc = [row["val_accuracy"] for row in saved_history(out / "checkpoints")]
    metrics = json.loads((out / "metrics.json").read_text())
    row = summarise(
        "finetune run --strategy full",
        wall,
        ends,
        val_acc,
        n_train,
        metrics["test"]["accuracy"],
        args.target,
        command,
    )
    row["finetune_images_per_s"] = metrics.get("images_per_s")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-py", type=Path, required=True, help="timm's train.py")
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune-gpu-peers"))
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--target", type=float, default=0.95, help="validation accuracy to time")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of the script itself")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if not args.train_py.is_file():
        raise SystemExit(
            f"{args.train_py} does not exist: pass timm's train.py (benchmarks/peers/setup.sh)"
        )
    args.work.mkdir(parents=True, exist_ok=True)
    state = convert()
    check = check_against_finetune(state)
    write(state, args.work / "weights")
    counts = export_splits("glyphs", args.work / "tasks", per_class=args.per_class)
    task = args.work / "tasks" / "glyphs"
    weights = args.work / "weights" / f"{TIMM_NAME}.safetensors"
    rows = [
        run_timm(args, task, weights, counts["train"], counts["classes"]),
        run_finetune(args, task, counts["train"]),
    ]
    result = {
        "task": {"name": "glyphs", **counts},
        "weights_check": check,
        "target": args.target,
        "rows": rows,
    }
    print(f"{'tool':30s} {'wall s':>7s} {'to target s':>11s} {'img/s':>8s} {'test acc':>8s}")
    for r in rows:
        print(f"{r['tool']:30s} {r['wall_s']:7.1f} {r['time_to_target_s'] or float('nan'):11.1f} "
              f"{r['images_per_s'] or float('nan'):8.1f} {r['test_accuracy']:8.3f}")  # fmt: skip
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""timm's own ``train.py`` on one task, then its best checkpoint scored on the test split.

    python timm_peer.py --train-py PATH/train.py --task TASK_DIR --weights W.safetensors \
        --out OUT_DIR [--epochs 8] [--image-size 128] [--device cpu]

Runs in the peers' virtual environment (setup.sh). ``train.py`` is timm's script from
huggingface/pytorch-image-models, which the pip package does not ship; its path is an
argument and its code is never copied here. The recipe is train.py's defaults (SGD with
momentum, lr 0.1 x batch/256, cosine schedule, label smoothing 0.1, random-resized crops,
flips and colour jitter, keeping the checkpoint with the best validation top-1) with
``--epochs 8 --warmup-epochs 1``: fine-tuning from ImageNet weights, not training from
scratch. ``model_best.pth.tar`` is then scored on ``TASK_DIR/test`` with timm's evaluation
transform at the same size. Writes ``OUT_DIR/result.json``: {"test_accuracy", "command"}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import timm
import torch
from timm.data import ImageDataset, create_transform, resolve_data_config

MODEL = "tf_efficientnet_lite0"


def train_command(args: argparse.Namespace, num_classes: int) -> list[str]:
    return [
        sys.executable, str(args.train_py),
        "--data-dir", str(args.task), "--train-split", "train", "--val-split", "val",
        "--model", MODEL, "--pretrained", "--pretrained-path", str(args.weights),
        "--num-classes", str(num_classes), "--img-size", str(args.image_size),
        "--epochs", str(args.epochs), "--warmup-epochs", "1", "--batch-size", str(args.batch_size),
        "--device", args.device, "--workers", str(args.workers), "--no-prefetcher",
        "--checkpoint-hist", "1", "--output", str(args.out), "--experiment", "train",
        "--log-interval", "1000",
    ]  # fmt: skip


@torch.inference_mode()
def test_accuracy(
    checkpoint: Path, task: Path, num_classes: int, image_size: int, device: str
) -> float:
    model = timm.create_model(MODEL, num_classes=num_classes)
    model.load_state_dict(
        torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    )
    model.eval().to(device)
    config = resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
    dataset = ImageDataset(
        str(task / "test"), transform=create_transform(**config, is_training=False)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)
    correct = 0
    for x, y in loader:
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-py", type=Path, required=True, help="timm's train.py")
    parser.add_argument("--task", type=Path, required=True, help="folder with train/ val/ test/")
    parser.add_argument(
        "--weights", type=Path, required=True, help="the converted Lite0 state_dict"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not args.train_py.is_file():
        raise SystemExit(
            f"{args.train_py} does not exist: pass the path of timm's train.py (see setup.sh)"
        )
    num_classes = sum(1 for p in (args.task / "train").iterdir() if p.is_dir())
    command = train_command(args, num_classes)
    subprocess.run(command, check=True)
    accuracy = test_accuracy(
        args.out / "train" / "model_best.pth.tar",
        args.task,
        num_classes,
        args.image_size,
        args.device,
    )
    result = {"test_accuracy": accuracy, "command": " ".join(command)}
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

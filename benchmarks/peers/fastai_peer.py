"""fastai's standard transfer-learning recipe on one task, scored on the test split.

    HF_HOME=WEIGHTS/hf HF_HUB_OFFLINE=1 python fastai_peer.py --task TASK_DIR --out OUT_DIR

Runs in the peers' virtual environment (setup.sh). The recipe is the one fastai teaches:
``vision_learner(dls, "tf_efficientnet_lite0")`` (the timm model, its ImageNet
normalisation, fastai's own head) on ``Resize(size)`` items with ``aug_transforms()``
batches, then ``fine_tune(7, freeze_epochs=1)``: one epoch of the head on the frozen
body, then seven of everything with discriminative learning rates and the one-cycle
schedule. The weights come from the Hugging Face cache that weights.py writes, so they
are the packaged Lite0 weights. Writes ``OUT_DIR/result.json``: {"test_accuracy", "command"}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastai.vision.all import (
    ImageDataLoaders,
    Resize,
    accuracy,
    aug_transforms,
    get_image_files,
    parent_label,
    vision_learner,
)

MODEL = "tf_efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, required=True, help="folder with train/ val/ test/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--freeze-epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dls = ImageDataLoaders.from_folder(
        args.task, train="train", valid="val", item_tfms=Resize(args.image_size),
        batch_tfms=aug_transforms(), bs=args.batch_size, num_workers=args.workers, device="cpu",
    )  # fmt: skip
    learn = vision_learner(dls, MODEL, metrics=accuracy, pretrained=True, path=args.out)
    learn.fine_tune(args.epochs, freeze_epochs=args.freeze_epochs)
    test_dl = learn.dls.test_dl(get_image_files(args.task / "test"), with_labels=True)
    probs, targets = learn.get_preds(dl=test_dl)
    names = [parent_label(p) for p in get_image_files(args.task / "test")]
    if [learn.dls.vocab[int(t)] for t in targets] != names:
        raise SystemExit("fastai's test labels do not match the test folders")
    result = {
        "test_accuracy": float((probs.argmax(1) == targets).float().mean()),
        "command": " ".join([Path(sys.executable).name, *sys.argv])
        + f"  # vision_learner(dls, {MODEL!r}).fine_tune({args.epochs}, freeze_epochs={args.freeze_epochs})",
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

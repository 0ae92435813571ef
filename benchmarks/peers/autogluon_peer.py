"""AutoGluon's MultiModalPredictor on one task, with a time limit, scored on the test split.

    HF_HOME=WEIGHTS/hf HF_HUB_OFFLINE=1 python autogluon_peer.py --task TASK_DIR --out OUT_DIR \
        --time-limit 180

Runs in AutoGluon's own virtual environment (setup.sh). The predictor is restricted to
its ``timm_image`` model with ``checkpoint_name=tf_efficientnet_lite0`` (the packaged
Lite0 weights, through the Hugging Face cache that weights.py writes), at the same image
size, with Lite0's normalisation (mean = std = 0.5, AutoGluon's "inception"), tuned on
the validation split; everything else is AutoGluon's default (AdamW, trivial-augment,
cosine decay, top-k checkpoint averaging, stopping at ``time_limit``). Writes
``OUT_DIR/result.json``: {"test_accuracy", "command"}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
from autogluon.multimodal import MultiModalPredictor

MODEL = "tf_efficientnet_lite0"


def frame(split_dir: Path) -> pd.DataFrame:
    rows = [
        {"image": str(p), "label": p.parent.name}
        for p in sorted(split_dir.glob("*/*"))
        if p.is_file()
    ]
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, required=True, help="folder with train/ val/ test/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--time-limit", type=int, required=True, help="seconds for fit()")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    hyperparameters = {
        "model.names": ["timm_image"],
        "model.timm_image.checkpoint_name": MODEL,
        "model.timm_image.image_size": args.image_size,
        "model.timm_image.image_norm": "inception",
        "env.num_gpus": 0,
        "env.per_gpu_batch_size": args.batch_size,
        "env.batch_size": args.batch_size,
        "env.num_workers": 0,
        "env.num_workers_inference": 0,
    }
    train = frame(args.task / "train")
    problem_type = "binary" if train["label"].nunique() == 2 else "multiclass"
    shutil.rmtree(args.out / "predictor", ignore_errors=True)  # AutoGluon refuses an existing one
    predictor = MultiModalPredictor(
        label="label", problem_type=problem_type, path=str(args.out / "predictor")
    )
    predictor.fit(
        train, tuning_data=frame(args.task / "val"),
        time_limit=args.time_limit, hyperparameters=hyperparameters, seed=0,
    )  # fmt: skip
    test = frame(args.task / "test")
    accuracy = float(
        (
            predictor.predict(test.drop(columns="label")).to_numpy() == test["label"].to_numpy()
        ).mean()
    )
    result = {
        "test_accuracy": accuracy,
        "command": " ".join([Path(sys.executable).name, *sys.argv])
        + f"  # hyperparameters={hyperparameters}",
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

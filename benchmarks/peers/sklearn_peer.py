"""scikit-learn's logistic regression on frozen Lite0 features, scored on the test split.

    python sklearn_peer.py --task TASK_DIR --out OUT_DIR [--image-size 128]

Runs in the project's environment: the features are finetune's own (its Lite0 with the
packaged weights, its evaluation transform at the same size, the pooled penultimate
layer), extracted once for every image; the classifier is a standardised
``LogisticRegressionCV`` fit on all the training images (train + val, since the
cross-validation that picks C needs no held-out split), C from 17 values on a log grid (1e-6..1e2),
5-fold. Writes ``OUT_DIR/result.json``: {"test_accuracy", "command", "C", "features_s",
"fit_s"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from finetune.data.images import load_image
from finetune.data.transforms import build_transform
from finetune.models import create_backbone


@torch.inference_mode()
def features(
    model: torch.nn.Module, split_dir: Path, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, num_features) pooled features and (N,) class names, files in sorted order."""
    transform = build_transform(model.pretrained_cfg, image_size=image_size)
    paths = sorted(p for p in split_dir.glob("*/*") if p.is_file())
    feats = []
    for start in range(0, len(paths), 64):
        batch = torch.stack(
            [transform(image=load_image(p))["image"] for p in paths[start : start + 64]]
        )
        feats.append(model.pooled_features(batch).numpy())
    return np.concatenate(feats), np.array([p.parent.name for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, required=True, help="folder with train/ val/ test/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    model = create_backbone("efficientnet_lite0", pretrained=True).eval()
    x_train, y_train = map(
        np.concatenate,
        zip(
            *(features(model, args.task / s, args.image_size) for s in ("train", "val")),
            strict=True,
        ),
    )
    x_test, y_test = features(model, args.task / "test", args.image_size)
    features_s = time.perf_counter() - start
    classifier = make_pipeline(
        StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-6, 2, 17), cv=5, max_iter=3000)
    )
    classifier.fit(x_train, y_train)
    fit_s = time.perf_counter() - start - features_s
    result = {
        "test_accuracy": float((classifier.predict(x_test) == y_test).mean()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "C": float(np.ravel(classifier[-1].C_)[0]),
        # The model's build and every split's features, then the cross-validated fit.
        "features_s": round(features_s, 1),
        "fit_s": round(fit_s, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

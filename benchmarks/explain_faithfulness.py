"""Are the explanation maps faithful? Deletion against random deletion over whole test splits.

    python benchmarks/explain_faithfulness.py --datasets photos                 # all 48 test images
    python benchmarks/explain_faithfulness.py --datasets digits --max-images 120  # 120 of 269

For each built-in dataset: one ``finetune run`` (a linear head on EfficientNet-Lite0's
packaged ImageNet weights, cached features, 128 px: a 4 x 4 last feature map), then every
test image through ``finetune.evaluation.explain``: Grad-CAM and occlusion maps of the
predicted class, and for each map the drop of that class's probability when its most
salient window (a quarter of the side, the occlusion window) is covered with the mean
colour, against the mean drop over 8 windows of that size at random places, in
probability and in log-odds (unsaturated where p is near 1). A faithful map's window
hurts more. Also timed: the top-losses gallery that the run's report draws.

``--max-images N`` takes N images spread evenly over the test split (every k-th). Each
dataset's entry in benchmarks/results/explain_faithfulness.json is replaced by the newest
measurement of it and the others are kept, each with its own machine record; prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, machine, table, write_results  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.evaluation.explain import METHODS, Explainer, occlusion_geometry  # noqa: E402
from finetune.evaluation.gallery import TestPredictions, top_losses_gallery  # noqa: E402
from finetune.run_folder import load_run_model  # noqa: E402
from finetune.training import run  # noqa: E402


def _compare(pairs: np.ndarray) -> dict:
    """pairs: (N, 2) of (salient, random) drops per image."""
    diff = pairs[:, 0] - pairs[:, 1]
    return {
        "salient": float(pairs[:, 0].mean()),
        "random": float(pairs[:, 1].mean()),
        "difference": float(diff.mean()),
        "difference_stderr": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None,
        "share_salient_wins": float((diff > 0).mean()),
    }


def _summary(figures: list[dict]) -> dict:
    return {"probability": _compare(np.array([(f["salient_drop"], f["random_drop"]) for f in figures])),
            "log_odds": _compare(np.array([(f["salient_logodds_drop"], f["random_logodds_drop"])
                                                  for f in figures]))}


def measure(dataset: str, work: Path, *, image_size: int, max_images: int | None) -> dict:
    cfg = RunConfig(data=f"builtin:{dataset}", output=str(work / dataset), backbone="efficientnet_lite0",
                    strategy="linear", image_size=image_size, num_workers=0)
    result = run(cfg, progress=False)
    model, cfg, splits = load_run_model(result.run_dir)
    explainer = Explainer(model, image_size)
    step = -(-len(splits.test) // max_images) if max_images else 1
    test = splits.test[::step]
    drops = {m: [] for m in METHODS}
    start = time.perf_counter()
    for seed, (path, _) in enumerate(test):
        explanation = explainer.explain(explainer.load(path), seed=seed)
        for method, figures in explanation.faithfulness.items():
            drops[method].append(figures)
    per_image = (time.perf_counter() - start) / len(test)

    # The report's gallery, as `finetune run` draws it at the end of this run.
    probs = np.concatenate([explainer.probabilities(torch.stack([explainer.load(p) for p, _ in
                                                                 splits.test[i:i + 64]]))
                            for i in range(0, len(splits.test), 64)])
    start = time.perf_counter()
    entries = top_losses_gallery(TestPredictions(model, splits.test, probs, image_size),
                                 splits.classes).entries
    gallery_s = time.perf_counter() - start
    return {
        "dataset": dataset, "image_size": image_size, "test_images": len(test),
        "test_accuracy": result.metrics["test"]["accuracy"],
        "window": occlusion_geometry(image_size)[0],
        "command": "python " + " ".join(sys.argv),
        "methods": {m: _summary(figures) for m, figures in drops.items()},
        "seconds_per_image_both_maps_and_checks": round(per_image, 3),
        "top_losses": {"images": len(entries), "seconds": round(gallery_s, 2),
                       "train_time_s": result.metrics["train_time_s"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="photos,digits")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--max-images", type=int, help="Test images per dataset (default: all).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = machine()
    with tempfile.TemporaryDirectory() as tmp:
        results = [{**measure(name, Path(tmp), image_size=args.image_size,
                              max_images=args.max_images), "machine": env}
                   for name in args.datasets.split(",")]
    path = RESULTS / "explain_faithfulness.json"
    earlier = json.loads(path.read_text())["results"] if path.is_file() else []
    results = [r for r in earlier if r["dataset"] not in {n["dataset"] for n in results}] + results
    rows = [{"dataset": r["dataset"], "images": r["test_images"], "map": m, "drop of": scale,
             "salient": s["salient"], "random": s["random"], "difference": s["difference"],
             "± s.e.": s["difference_stderr"], "salient wins": s["share_salient_wins"]}
            for r in results for m, both in r["methods"].items() for scale, s in both.items()]
    print(table(rows, list(rows[0])))
    for r in results:
        print(f"{r['dataset']}: top losses gallery {r['top_losses']['images']} images in "
              f"{r['top_losses']['seconds']} s (training {r['top_losses']['train_time_s']} s)")
    print(write_results("explain_faithfulness", {"results": results}, env=env))  # env: the last


if __name__ == "__main__":
    main()

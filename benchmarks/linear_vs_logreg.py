"""``linear``'s head fits against scikit-learn's logistic regression on the same features.

    nice -n 5 python benchmarks/linear_vs_logreg.py    # 128 px, seeds 0-2; 224 px, seed 0
    python benchmarks/linear_vs_logreg.py --sizes 64 --seeds 0 --datasets glyphs  # smoke test

For each built-in dataset (photos, digits, glyphs, as ``--data builtin:<name>`` builds
them), image size and seed (the seed sets the 70/15/15 split), with EfficientNet-Lite0 and
its packaged weights, four ways to fit the head on identical cached features:

* ``finetune run --strategy linear --head-fit sgd``: AdamW for the default 30 epochs,
  the epoch that is best on val kept;
* ``--head-fit lbfgs --no-head-refit``: logistic regression, C chosen on val, fit on train;
* ``--head-fit lbfgs`` (the refit on): the same C, then refit on train + val;
* scikit-learn on train + val, standardised (``StandardScaler``), the features read back
  from the run's own cache entries: ``LogisticRegression()`` at its default C=1, and on
  the ``--cv-seeds`` also ``LogisticRegressionCV`` (the decades 1e-3..1e3 of the same
  grid, 3-fold stratified cross-validation, then refit; minutes per task on 2 loaded
  cores, hence not on every seed).

A first run extracts the features into a fresh cache (its wall time is reported as the
extraction); the three timed runs then read them, so their wall times are the head fits
plus the run's fixed costs (data split, model, checkpoints, evaluation, report).
scikit-learn's time is its fit alone, on as many BLAS threads as torch uses. Test
accuracy is on the same test split for all four. Writes
benchmarks/results/linear_vs_logreg.json after every task, and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import load_now, machine, table, write_results  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data.builtin import build_dataset  # noqa: E402
from finetune.training import run  # noqa: E402
from finetune.training.head_fit import DEFAULT_CS  # noqa: E402

DECADES = tuple(c for i, c in enumerate(DEFAULT_CS) if i % 2 == 0)  # 1e-3 .. 1e3

ARMS = {  # name -> RunConfig changes
    "sgd": {"head_fit": "sgd"},
    "lbfgs": {"head_fit": "lbfgs", "head_refit": False},
    "lbfgs+refit": {"head_fit": "lbfgs", "head_refit": True},
}


def timed_run(cfg: RunConfig) -> tuple[dict, float]:
    start = time.perf_counter()
    metrics = run(cfg, progress=False).metrics
    return metrics, time.perf_counter() - start


def run_features(run_dir: Path, cfg: RunConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The features the run trained on, read back from its cache entries (all hits)."""
    from finetune.data import FinetuneDataModule, load_splits
    from finetune.run_folder import build_model
    from finetune.training.feature_cache import feature_splits

    splits = load_splits(run_dir / "splits.json")
    model = build_model(cfg, len(splits.classes))
    dm = FinetuneDataModule(splits, model.pretrained_cfg, image_size=cfg.image_size,
                            augment="none", batch_size=cfg.batch_size, num_workers=0)
    cached, _, hits = feature_splits(model, dm, cfg, torch.device("cpu"), False)
    assert all(hits.values()), f"features were extracted again: {hits}"
    return {s: (np.array(cached[s]._open()[0], dtype=np.float64), cached[s].labels)
            for s in ("train", "val", "test")}


def sklearn_logreg(feats: dict, seed: int, *, cv: bool) -> dict:
    """scikit-learn on every train + val image, standardised, scored on test:
    ``LogisticRegression()`` at its default C=1, and with ``cv`` also
    ``LogisticRegressionCV`` (C by 3-fold stratified cross-validation over the decades of
    the same grid, then refit)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.concatenate([feats["train"][0], feats["val"][0]])
    y = np.concatenate([feats["train"][1], feats["val"][1]])
    xt, yt = feats["test"]
    models = {"sklearn": LogisticRegression(max_iter=1000)}
    if cv:
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
        models["sklearn_cv"] = LogisticRegressionCV(Cs=list(DECADES), cv=folds, max_iter=1000)
    out = {}
    for name, clf in models.items():
        model = make_pipeline(StandardScaler(), clf)
        with threadpool_limits(torch.get_num_threads()):
            start = time.perf_counter()
            model.fit(x, y)
            fit_s = time.perf_counter() - start
        out[name] = {"test_acc": float((model.predict(xt) == yt).mean()), "fit_s": round(fit_s, 3),
                     "C": float(clf.C_[0]) if cv and name == "sklearn_cv" else clf.C, "images": len(y)}
    return out


def one_task(name: str, data: Path, size: int, seed: int, work: Path, *, cv: bool) -> dict:
    base = dict(data=str(data), backbone="efficientnet_lite0", strategy="linear",
                image_size=size, seed=seed, batch_size=32, num_workers=0,
                feature_cache_dir=str(work / "cache" / f"{name}-{size}-{seed}"))
    tag = f"{name}-{size}px-seed{seed}"

    def cfg(arm: str, **kw) -> RunConfig:
        return RunConfig(**base, **kw, output=str(work / "runs" / f"{tag}-{arm}"))

    _, extraction_s = timed_run(cfg("extract", head_fit="lbfgs", head_refit=False))
    row = {"task": tag, "dataset": name, "image_size": size, "seed": seed,
           "extraction_run_s": round(extraction_s, 2), "load_1min": load_now()}
    for arm, changes in ARMS.items():
        m, wall = timed_run(cfg(arm, **changes))
        row[arm] = {"test_acc": m["test"]["accuracy"], "val_acc": m["val"]["accuracy"],
                    "wall_s": round(wall, 2), "train_time_s": m["train_time_s"]}
        if "head_fit" in m:
            row[arm]["C"] = m["head_fit"]["C"]
            row[arm]["head_fit_s"] = m["head_fit"]["time_s"]
            row[arm]["images"] = m["head_fit"].get("refit", {}).get("images", m["split_sizes"]["train"])
        else:
            row[arm]["images"] = m["split_sizes"]["train"]
    row["split_sizes"] = m["split_sizes"]
    row.update(sklearn_logreg(run_features(Path(cfg("extract").output), cfg("extract")), seed, cv=cv))
    for arm in ARMS:
        row[f"{arm}_minus_sklearn_points"] = round(
            100 * (row[arm]["test_acc"] - row["sklearn"]["test_acc"]), 2)
        if "sklearn_cv" in row:
            row[f"{arm}_minus_sklearn_cv_points"] = round(
                100 * (row[arm]["test_acc"] - row["sklearn_cv"]["test_acc"]), 2)
    refs = [a for a in (*ARMS, "sklearn", "sklearn_cv") if a in row]
    print(f"  {tag}: " + ", ".join(f"{a} {row[a]['test_acc']:.4f}" for a in refs), flush=True)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """Mean test accuracy and wall time per (dataset, size) and arm, over the seeds."""
    out = []
    for key in sorted({(r["dataset"], r["image_size"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["image_size"]) == key]
        line = {"dataset": key[0], "image_size": key[1], "seeds": len(group),
                "test_images": group[0]["split_sizes"]["test"]}
        for arm in [*ARMS, "sklearn"]:
            line[f"{arm}_acc"] = round(statistics.mean(r[arm]["test_acc"] for r in group), 4)
        for arm in ARMS:
            line[f"{arm}_wall_s"] = round(statistics.mean(r[arm]["wall_s"] for r in group), 2)
            line[f"{arm}_minus_sklearn"] = round(
                statistics.mean(r[f"{arm}_minus_sklearn_points"] for r in group), 2)
        line["sklearn_fit_s"] = round(statistics.mean(r["sklearn"]["fit_s"] for r in group), 2)
        with_cv = [r for r in group if "sklearn_cv" in r]
        if with_cv:  # over the seeds that ran the cross-validation
            line["cv_seeds"] = len(with_cv)
            line["sklearn_cv_acc"] = round(statistics.mean(r["sklearn_cv"]["test_acc"] for r in with_cv), 4)
            line["lbfgs+refit_minus_sklearn_cv"] = round(
                statistics.mean(r["lbfgs+refit_minus_sklearn_cv_points"] for r in with_cv), 2)
            line["sklearn_cv_fit_s"] = round(statistics.mean(r["sklearn_cv"]["fit_s"] for r in with_cv), 2)
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["photos", "digits", "glyphs"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--large", nargs="+", default=["photos", "glyphs"],
                        help="datasets at sizes above 128 px, seed 0 (extraction costs ~3x "
                        "there; digits are 8x8 images)")
    parser.add_argument("--cv-seeds", nargs="+", type=int, default=[0],
                        help="seeds that also run LogisticRegressionCV (minutes per task here)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-logreg-"))
    setup = {"backbone": "efficientnet_lite0", "Cs": list(DEFAULT_CS), "sklearn_cv_Cs": list(DECADES),
             "sklearn_cv_folds": 3,
             "torch_threads": torch.get_num_threads(), "arms": ARMS}
    rows: list[dict] = []
    try:
        for size in args.sizes:
            for seed in (args.seeds if size <= 128 else [0]):
                for name in (args.datasets if size <= 128 else args.large):
                    data = build_dataset(name, root=work / "datasets")
                    rows.append(one_task(name, data, size, seed, work, cv=seed in args.cv_seeds))
                    write_results("linear_vs_logreg", {"setup": setup, "summary": summarise(rows),
                                                       "tasks": rows}, args.out, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(rows)
    cols = ["dataset", "image_size", "seeds", "test_images", *[f"{a}_acc" for a in [*ARMS, "sklearn"]],
            *[f"{a}_minus_sklearn" for a in ARMS], *[f"{a}_wall_s" for a in ARMS], "sklearn_fit_s",
            "cv_seeds", "sklearn_cv_acc", "lbfgs+refit_minus_sklearn_cv", "sklearn_cv_fit_s"]
    print()
    print(table(summary, cols))


if __name__ == "__main__":
    main()

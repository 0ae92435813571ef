"""``linear``'s head fits against scikit-learn's logistic regression on the same features.

    nice -n 5 python benchmarks/linear_vs_logreg.py    # 128 px, seeds 0-2; 224 px, seed 0
    python benchmarks/linear_vs_logreg.py --sizes 64 --seeds 0 --datasets glyphs  # smoke test
    python benchmarks/linear_vs_logreg.py --work /tmp/lvl --arms lbfgs+refit --cv-seeds  # rerun the default on kept features

For each built-in dataset (photos, digits, glyphs, as ``--data builtin:<name>`` builds
them), image size and seed (the seed sets the 70/15/15 split), with EfficientNet-Lite0 and
its packaged weights, four ways to fit the head on identical cached features:

* ``finetune run --strategy linear --head-fit sgd``: AdamW for the default 30 epochs,
  the epoch that is best on val kept;
* ``--head-fit lbfgs --no-head-refit``: logistic regression, C chosen on val, fit on train;
* ``--head-fit lbfgs``, the default (arm ``lbfgs+refit``): C by stratified k-fold
  cross-validation over train + val, then refit on train + val;
* scikit-learn on train + val, standardised (``StandardScaler``), the features read back
  from the run's own cache entries: ``LogisticRegression()`` at its default C=1, and on
  the ``--cv-seeds`` also ``LogisticRegressionCV`` with the default's grid (13 values,
  1e-3..1e3), folds (``head_fit.cv_folds``: the same ``StratifiedKFold``) and scoring,
  then refit; a minute or more per task on 2 loaded cores.

A first run extracts the features into the cache (its wall time is reported as the
extraction; with ``--work``, a second invocation finds them there); the timed runs then
read them, so their wall times are the head fits plus the run's fixed costs (data split,
model, checkpoints, evaluation, report), and ``head_fit_s`` is the head fit alone (C's
choice and the refit). scikit-learn's time is its fit alone, on as many BLAS threads as
torch uses. Test accuracy is on the same test split for all. Writes
benchmarks/results/linear_vs_logreg.json after every task, and prints Markdown tables:
per task, then per dataset and size.
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
from finetune.training.head_fit import CV_SCORING, DEFAULT_CS, cv_folds  # noqa: E402

SKLEARN_SCORING = {"log_loss": "neg_log_loss", "accuracy": "accuracy"}[CV_SCORING]

ARMS = {  # name -> RunConfig changes
    "sgd": {"head_fit": "sgd"},
    "lbfgs": {"head_fit": "lbfgs", "head_refit": False},
    "lbfgs+refit": {"head_fit": "lbfgs", "head_refit": True},
}


def timed_run(cfg: RunConfig) -> tuple[dict, float]:
    start = time.perf_counter()
    metrics = run(cfg, overwrite=True, progress=False).metrics  # --work: the last invocation's
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


def sklearn_logreg(feats: dict, *, cv: bool) -> dict:
    """scikit-learn on every train + val image, standardised, scored on test:
    ``LogisticRegression()`` at its default C=1, and with ``cv`` also
    ``LogisticRegressionCV`` (C by cross-validation with the default's grid, folds and
    scoring, then refit)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.concatenate([feats["train"][0], feats["val"][0]])
    y = np.concatenate([feats["train"][1], feats["val"][1]])
    xt, yt = feats["test"]
    models = {"sklearn": LogisticRegression(max_iter=1000)}
    if cv:
        models["sklearn_cv"] = LogisticRegressionCV(
            Cs=sorted(DEFAULT_CS), cv=cv_folds(y), scoring=SKLEARN_SCORING, l1_ratios=(0.0,),
            max_iter=1000, use_legacy_attributes=False)
    out = {}
    for name, clf in models.items():
        model = make_pipeline(StandardScaler(), clf)
        with threadpool_limits(torch.get_num_threads()):
            start = time.perf_counter()
            model.fit(x, y)
            fit_s = time.perf_counter() - start
        probs = model.predict_proba(xt)
        out[name] = {"test_acc": float((probs.argmax(1) == yt).mean()),
                     "test_loss": round(float(log_loss(yt, probs, labels=model.classes_)), 4),
                     "fit_s": round(fit_s, 3),
                     "C": float(np.ravel(clf.C_)[0]) if name == "sklearn_cv" else clf.C,
                     "images": len(y)}
    return out


def one_task(name: str, data: Path, size: int, seed: int, work: Path, *, arms: dict, cv: bool) -> dict:
    base = dict(data=str(data), backbone="efficientnet_lite0", strategy="linear",
                image_size=size, seed=seed, batch_size=32, num_workers=0,
                feature_cache_dir=str(work / "cache" / f"{name}-{size}-{seed}"))
    tag = f"{name}-{size}px-seed{seed}"

    def cfg(arm: str, **kw) -> RunConfig:
        return RunConfig(**base, **kw, output=str(work / "runs" / f"{tag}-{arm}"))

    _, extraction_s = timed_run(cfg("extract", head_fit="lbfgs", head_refit=False))
    row = {"task": tag, "dataset": name, "image_size": size, "seed": seed,
           "extraction_run_s": round(extraction_s, 2), "load_1min": load_now()}
    for arm, changes in arms.items():
        m, wall = timed_run(cfg(arm, **changes))
        row[arm] = {"test_acc": m["test"]["accuracy"], "test_loss": round(m["test"]["loss"], 4),
                    "val_acc": m["val"]["accuracy"],
                    "wall_s": round(wall, 2), "train_time_s": m["train_time_s"]}
        if "head_fit" in m:
            row[arm]["C"] = m["head_fit"]["C"]
            row[arm]["head_fit_s"] = m["head_fit"]["time_s"]
            row[arm]["selection"] = {k: v for k, v in m["head_fit"]["selection"].items()
                                     if k in ("method", "folds", "scoring", "cv_fallback")}
            row[arm]["images"] = m["head_fit"].get("refit", {}).get("images", m["split_sizes"]["train"])
        else:
            row[arm]["images"] = m["split_sizes"]["train"]
    row["split_sizes"] = m["split_sizes"]
    row.update(sklearn_logreg(run_features(Path(cfg("extract").output), cfg("extract")), cv=cv))
    for arm in arms:
        row[f"{arm}_minus_sklearn_points"] = round(
            100 * (row[arm]["test_acc"] - row["sklearn"]["test_acc"]), 2)
        if "sklearn_cv" in row:
            row[f"{arm}_minus_sklearn_cv_points"] = round(
                100 * (row[arm]["test_acc"] - row["sklearn_cv"]["test_acc"]), 2)
    if "sklearn_cv" in row and "lbfgs+refit" in arms:  # the same choice of C?
        row["same_C_as_sklearn_cv"] = row["lbfgs+refit"]["C"] == row["sklearn_cv"]["C"]
    refs = [a for a in (*arms, "sklearn", "sklearn_cv") if a in row]
    print(f"  {tag}: " + ", ".join(f"{a} {row[a]['test_acc']:.4f}" for a in refs), flush=True)
    return row


def summarise(rows: list[dict], arms: dict) -> list[dict]:
    """Mean test accuracy and wall time per (dataset, size) and arm, over the seeds."""
    out = []
    for key in sorted({(r["dataset"], r["image_size"]) for r in rows}):
        group = [r for r in rows if (r["dataset"], r["image_size"]) == key]
        line = {"dataset": key[0], "image_size": key[1], "seeds": len(group),
                "test_images": group[0]["split_sizes"]["test"]}
        for arm in [*arms, "sklearn"]:
            line[f"{arm}_acc"] = round(statistics.mean(r[arm]["test_acc"] for r in group), 4)
        for arm in arms:
            line[f"{arm}_wall_s"] = round(statistics.mean(r[arm]["wall_s"] for r in group), 2)
            line[f"{arm}_minus_sklearn"] = round(
                statistics.mean(r[f"{arm}_minus_sklearn_points"] for r in group), 2)
            if "head_fit_s" in group[0][arm]:
                line[f"{arm}_head_fit_s"] = round(statistics.mean(r[arm]["head_fit_s"] for r in group), 2)
        line["sklearn_fit_s"] = round(statistics.mean(r["sklearn"]["fit_s"] for r in group), 2)
        with_cv = [r for r in group if "sklearn_cv" in r]
        if with_cv:  # over the seeds that ran the cross-validation
            line["cv_seeds"] = len(with_cv)
            line["sklearn_cv_acc"] = round(statistics.mean(r["sklearn_cv"]["test_acc"] for r in with_cv), 4)
            for arm in arms:
                line[f"{arm}_minus_sklearn_cv"] = round(
                    statistics.mean(r[f"{arm}_minus_sklearn_cv_points"] for r in with_cv), 2)
            line["sklearn_cv_fit_s"] = round(statistics.mean(r["sklearn_cv"]["fit_s"] for r in with_cv), 2)
        out.append(line)
    return out


def per_task(rows: list[dict], arms: dict) -> list[dict]:
    """One line per task: test accuracy of each head fit and of scikit-learn, the C each
    chose, the head fit's time."""
    out = []
    for r in rows:
        line = {"task": r["task"], "test_images": r["split_sizes"]["test"]}
        for arm in [*arms, "sklearn", "sklearn_cv"]:
            if arm in r:
                line[f"{arm}_acc"] = round(r[arm]["test_acc"], 4)
        for arm in [*arms, "sklearn"]:
            line[f"{arm}_loss"] = r[arm]["test_loss"]
        for arm in arms:
            line[f"{arm}_minus_sklearn"] = r[f"{arm}_minus_sklearn_points"]
            if "C" in r[arm]:
                line[f"{arm}_C"] = r[arm]["C"]
                line[f"{arm}_head_fit_s"] = r[arm]["head_fit_s"]
        if "sklearn_cv" in r:
            line["sklearn_cv_C"] = r["sklearn_cv"]["C"]
            line["sklearn_cv_fit_s"] = r["sklearn_cv"]["fit_s"]
        out.append(line)
    return out


def overall(rows: list[dict], arms: dict) -> dict:
    """Per arm, over every task: the mean and the worst test-accuracy difference to
    scikit-learn (points), and on how many tasks it is below."""
    out = {"tasks": len(rows)}
    for arm in arms:
        diffs = [r[f"{arm}_minus_sklearn_points"] for r in rows]
        out[arm] = {"mean_minus_sklearn": round(statistics.mean(diffs), 2), "worst": min(diffs),
                    "below_sklearn": sum(d < 0 for d in diffs)}
        cv = [r[f"{arm}_minus_sklearn_cv_points"] for r in rows if "sklearn_cv" in r]
        if cv:
            out[arm].update(mean_minus_sklearn_cv=round(statistics.mean(cv), 2), worst_vs_cv=min(cv),
                            below_sklearn_cv=sum(d < 0 for d in cv), cv_tasks=len(cv))
    same = [r["same_C_as_sklearn_cv"] for r in rows if "same_C_as_sklearn_cv" in r]
    if same:
        out["same_C_as_sklearn_cv"] = f"{sum(same)} of {len(same)}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["photos", "digits", "glyphs"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--large", nargs="+", default=["photos", "glyphs"],
                        help="datasets at sizes above 128 px, seed 0 (extraction costs ~3x "
                        "there; digits are 8x8 images)")
    parser.add_argument("--cv-seeds", nargs="*", type=int, default=[0, 1, 2],
                        help="seeds that also run LogisticRegressionCV (a minute or more per "
                        "task on 2 loaded cores); none: --cv-seeds with no value")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="which finetune head fits to run (scikit-learn always runs)")
    parser.add_argument("--work", type=Path,
                        help="keep the datasets and feature caches here (kept afterwards: a "
                        "second invocation with the same folder reads the features instead "
                        "of extracting them); default: a temporary folder, removed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = machine()
    arms = {a: ARMS[a] for a in args.arms}
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-logreg-"))
    setup = {"backbone": "efficientnet_lite0", "Cs": list(DEFAULT_CS), "sklearn_cv_Cs": sorted(DEFAULT_CS),
             "sklearn_cv_folds": "head_fit.cv_folds (StratifiedKFold, 5 or fewer)",
             "sklearn_cv_scoring": SKLEARN_SCORING,
             "torch_threads": torch.get_num_threads(), "arms": arms}
    rows: list[dict] = []
    try:
        for size in args.sizes:
            for seed in (args.seeds if size <= 128 else [0]):
                for name in (args.datasets if size <= 128 else args.large):
                    data = build_dataset(name, root=work / "datasets")
                    rows.append(one_task(name, data, size, seed, work, arms=arms,
                                         cv=seed in args.cv_seeds))
                    write_results("linear_vs_logreg", {"setup": setup, "overall": overall(rows, arms),
                                                       "summary": summarise(rows, arms),
                                                       "tasks": rows}, args.out, env=env)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    tasks = per_task(rows, arms)
    print()
    print(table(tasks, list(dict.fromkeys(k for line in tasks for k in line))))
    summary = summarise(rows, arms)
    cols = ["dataset", "image_size", "seeds", "test_images", *[f"{a}_acc" for a in [*arms, "sklearn"]],
            *[f"{a}_minus_sklearn" for a in arms], *[f"{a}_wall_s" for a in arms],
            *[f"{a}_head_fit_s" for a in arms if a != "sgd"], "sklearn_fit_s", "cv_seeds",
            "sklearn_cv_acc", *[f"{a}_minus_sklearn_cv" for a in arms], "sklearn_cv_fit_s"]
    print()
    print(table(summary, cols))
    print()
    print(overall(rows, arms))


if __name__ == "__main__":
    main()

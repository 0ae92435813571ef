"""Cached-feature linear probes against running the frozen backbone every epoch.

    python benchmarks/linear_cache.py --threads 1  # 400 photos at 128 px, 10 epochs
    python benchmarks/linear_cache.py --quick      # 160 photos, 3 epochs (smoke test)

Side by side, in one process, on the same data, split and seed (EfficientNet-Lite0 with
its packaged ImageNet weights, the built-in photos):

* ``linear`` with the feature cache, cold (an empty cache: one backbone pass + the head)
  and warm (a second run of the same data: no backbone pass at all);
* the same ``linear`` with ``--no-feature-cache`` (the backbone runs every epoch), with its
  default light augmentation and with ``--augment none`` (the like-for-like comparison:
  cached features cannot be augmented);
* ``--head-fit lbfgs`` (logistic regression, C swept on val) against the SGD head;
* the L-BFGS fit itself in torch (``finetune.head_fit``) against scikit-learn's
  ``LogisticRegression`` on the same cached features and C grid;
* accuracy on a harder task (the built-in digits, 1,797 images at 64 px, far from
  ImageNet), where the photos' 100% leaves no room for a difference to show.

Times are wall-clock seconds of the whole ``finetune.training.runner`` (data, model, training,
evaluation, report). Prints Markdown tables and writes benchmarks/results/linear_cache.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import load_now, machine, table, write_results  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data.builtin import build_dataset  # noqa: E402
from finetune.training import run  # noqa: E402
from finetune.training.feature_cache import FeatureDataset  # noqa: E402
from finetune.training.head_fit import DEFAULT_CS, fit_logistic_head  # noqa: E402


def timed_run(name: str, cfg: RunConfig, *, link_checkpoints: bool = True) -> dict:
    """One ``finetune run``. ``link_checkpoints=False`` restores the behaviour before
    ``AtomicCheckpointIO`` hard-linked last.ckpt to a best.ckpt of the same epoch."""
    load = load_now()
    start = time.perf_counter()
    if link_checkpoints:
        m = run(cfg, progress=False).metrics
    else:
        with mock.patch("finetune.training.checkpointing._link_atomically", return_value=False):
            m = run(cfg, progress=False).metrics
    wall = time.perf_counter() - start
    row = {
        "run": name, "wall_s": round(wall, 2), "train_time_s": m["train_time_s"],
        "extraction_s": m.get("feature_extraction_s", 0.0),
        "cache_hits": m.get("feature_cache", {}).get("hits"),
        "val_acc": m["val"]["accuracy"], "test_acc": m["test"]["accuracy"],
        "test_loss": round(m["test"]["loss"], 4), "load_1min": load,
    }
    if "head_fit" in m:
        row["C"] = m["head_fit"]["C"]
        row["head_fit_s"] = m["head_fit"]["time_s"]
    print(f"  {name}: {row['wall_s']} s, test accuracy {row['test_acc']:.4f}", flush=True)
    return row


def cached_splits(cfg: RunConfig) -> dict[str, FeatureDataset]:
    """The run's three feature splits, read back from the cache exactly as ``run`` does."""
    from finetune.data import FinetuneDataModule, discover
    from finetune.run_folder import build_model
    from finetune.training.feature_cache import feature_splits

    splits = discover(cfg.data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                      seed=cfg.seed)
    model = build_model(cfg, len(splits.classes))
    dm = FinetuneDataModule(splits, model.pretrained_cfg, image_size=cfg.image_size,
                            augment="none", batch_size=cfg.batch_size)
    cached, _, hits = feature_splits(model, dm, cfg, torch.device("cpu"), False)
    assert all(hits.values()), hits
    return cached


def sklearn_sweep(x, y, xv, yv, xt, yt, Cs) -> dict:
    """scikit-learn's L-BFGS over the same grid on the same standardised features, on as
    many BLAS threads as torch has (threadpoolctl), so both fits get the same cores."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(torch.get_num_threads()):
        return _sklearn_sweep(LogisticRegression, x, y, xv, yv, xt, yt, Cs)


def _sklearn_sweep(LogisticRegression, x, y, xv, yv, xt, yt, Cs) -> dict:
    start = time.perf_counter()
    mean, std = x.mean(0), x.std(0)
    std[std < 1e-6] = 1.0
    xs, xvs, xts = (x - mean) / std, (xv - mean) / std, (xt - mean) / std
    clf = LogisticRegression(max_iter=1000, warm_start=True)
    best = None
    for C in sorted(Cs):
        clf.set_params(C=C)
        clf.fit(xs, y)
        p = clf.predict_proba(xvs)
        acc = float((p.argmax(1) == yv).mean())
        loss = float(-np.log(np.clip(p[np.arange(len(yv)), yv], 1e-12, None)).mean())
        if best is None or (acc, -loss) > best[:2]:
            best = (acc, -loss, C, float((clf.predict(xts) == yt).mean()))
    return {"time_s": round(time.perf_counter() - start, 3), "C": best[2], "val_acc": best[0],
            "test_acc": best[3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=50, help="photos per class (8 classes)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-digits", dest="digits", action="store_false",
                        help="skip the accuracy comparison on digits")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.epochs, args.digits = 20, 3, False
    if args.threads:
        torch.set_num_threads(args.threads)
    env = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-linear-"))
    data = build_dataset("photos", root=work / "datasets", per_class=args.per_class, size=args.size)
    cache = work / "cache"
    base = dict(data=str(data), backbone="efficientnet_lite0", strategy="linear",
                image_size=args.size, epochs=args.epochs, batch_size=32, seed=0,
                feature_cache_dir=str(cache))

    def cfg(name: str, **kw) -> RunConfig:
        return RunConfig(**{**base, **kw, "output": str(work / "runs" / name)})

    print(f"{8 * args.per_class} photos at {args.size} px, {args.epochs} epochs, in {work}", flush=True)
    rows = [
        timed_run("cached, cold cache", cfg("cold")),
        timed_run("cached, warm cache", cfg("warm")),
        timed_run("cached, warm cache, best and last written separately", cfg("warm-copies"),
                  link_checkpoints=False),
        timed_run("no cache, augment light (default)", cfg("nocache-light", feature_cache=False)),
        timed_run("no cache, augment none", cfg("nocache-none", feature_cache=False, augment="none")),
        timed_run("lbfgs head, warm cache", cfg("lbfgs", head_fit="lbfgs")),
    ]
    by = {r["run"]: r for r in rows}
    cold, warm = by["cached, cold cache"], by["cached, warm cache"]
    light, none = by["no cache, augment light (default)"], by["no cache, augment none"]
    lbfgs = by["lbfgs head, warm cache"]
    ratios = {
        "speedup_cold_vs_nocache_none": round(none["wall_s"] / cold["wall_s"], 2),
        "speedup_warm_vs_nocache_none": round(none["wall_s"] / warm["wall_s"], 2),
        "speedup_cold_vs_nocache_light": round(light["wall_s"] / cold["wall_s"], 2),
        "speedup_warm_vs_nocache_light": round(light["wall_s"] / warm["wall_s"], 2),
        "train_time_speedup_cold_vs_nocache_none": round(none["train_time_s"] / cold["train_time_s"], 2),
        "accuracy_points_cached_minus_nocache_none": round(100 * (cold["test_acc"] - none["test_acc"]), 2),
        "accuracy_points_cached_minus_nocache_light": round(100 * (cold["test_acc"] - light["test_acc"]), 2),
        "lbfgs_vs_sgd_wall_ratio": round(lbfgs["wall_s"] / warm["wall_s"], 2),
        "warm_train_time_checkpoint_copies_vs_links": round(
            by["cached, warm cache, best and last written separately"]["train_time_s"] / warm["train_time_s"], 2),
        "accuracy_points_lbfgs_minus_sgd": round(100 * (lbfgs["test_acc"] - warm["test_acc"]), 2),
    }

    # The head fit alone: torch L-BFGS (what --head-fit lbfgs runs) vs scikit-learn.
    feats = cached_splits(cfg("features"))
    tr, va, te = feats["train"], feats["val"], feats["test"]
    x, y = np.array(tr._open()[0]), tr.labels
    xv, yv = np.array(va._open()[0]), va.labels
    xt, yt = np.array(te._open()[0]), te.labels
    start = time.perf_counter()
    fit = fit_logistic_head(tr, va, num_classes=8)
    torch_s = time.perf_counter() - start
    with torch.no_grad():
        torch_test = float(((torch.from_numpy(xt) @ fit.weight.T + fit.bias).argmax(1).numpy() == yt).mean())
    sk = sklearn_sweep(x, y, xv, yv, xt, yt, DEFAULT_CS)
    head_rows = [
        {"fit": "torch L-BFGS (finetune.head_fit)", "time_s": round(torch_s, 3), "C": fit.C,
         "val_acc": fit.best_row()["val_accuracy"], "test_acc": torch_test},
        {"fit": "scikit-learn LogisticRegression (lbfgs)", **sk},
    ]

    # The photos are easy (every run scores 100%): accuracy differences show on digits,
    # far from ImageNet, with a test split several times larger.
    hard_rows = []
    if args.digits:
        digits = build_dataset("digits", root=work / "datasets", size=64)
        hard = dict(base, data=str(digits), image_size=64, feature_cache_dir=str(work / "cache-digits"))

        def hcfg(name: str, **kw) -> RunConfig:
            return RunConfig(**{**hard, **kw, "output": str(work / "runs" / f"digits-{name}")})

        print("digits (1,797 images at 64 px): accuracy", flush=True)
        hard_rows = [
            timed_run("digits: cached, sgd head", hcfg("cached")),
            timed_run("digits: no cache, augment none", hcfg("none", feature_cache=False, augment="none")),
            timed_run("digits: no cache, augment light (default)", hcfg("light", feature_cache=False)),
            timed_run("digits: cached, lbfgs head", hcfg("lbfgs", head_fit="lbfgs")),
        ]
        hb = {r["run"]: r for r in hard_rows}
        ratios["digits_accuracy_points_cached_minus_nocache_none"] = round(
            100 * (hb["digits: cached, sgd head"]["test_acc"] - hb["digits: no cache, augment none"]["test_acc"]), 2)
        ratios["digits_accuracy_points_cached_minus_nocache_light"] = round(
            100 * (hb["digits: cached, sgd head"]["test_acc"]
                   - hb["digits: no cache, augment light (default)"]["test_acc"]), 2)
        ratios["digits_accuracy_points_lbfgs_minus_sgd"] = round(
            100 * (hb["digits: cached, lbfgs head"]["test_acc"] - hb["digits: cached, sgd head"]["test_acc"]), 2)
        ratios["digits_speedup_cached_vs_nocache_none"] = round(
            hb["digits: no cache, augment none"]["wall_s"] / hb["digits: cached, sgd head"]["wall_s"], 2)

    print()
    print(table(rows + hard_rows, ["run", "wall_s", "train_time_s", "extraction_s", "val_acc", "test_acc",
                       "test_loss", "C", "load_1min"]))
    print()
    print(table([{"ratio": k, "value": v} for k, v in ratios.items()], ["ratio", "value"]))
    print()
    print(table(head_rows, ["fit", "time_s", "C", "val_acc", "test_acc"]))
    path = write_results("linear_cache", {
        "setup": {"images": 8 * args.per_class, "image_size": args.size, "epochs": args.epochs,
                  "torch_threads": torch.get_num_threads(),
                  "backbone": "efficientnet_lite0", "batch_size": 32, "Cs": list(DEFAULT_CS)},
        "runs": rows + hard_rows, "ratios": ratios, "head_fit": head_rows,
    }, args.out, env=env)
    print(f"\nWritten to {path}")
    shutil.rmtree(work, ignore_errors=True)  # datasets, runs and caches of this invocation


if __name__ == "__main__":
    main()

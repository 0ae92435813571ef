"""What `finetune run` achieves on real images offline, measured side by side.

    python benchmarks/quality.py                # all three comparisons, ~10 min on 2 cores
    python benchmarks/quality.py --quick        # smaller data, for a smoke test

1. ``linear`` (head trained on cached features) against scikit-learn's
   LogisticRegression (L-BFGS, default C=1) fitted on the same frozen features and split.
2. Pretrained ImageNet weights against ``--weights none`` on a natural-photo task.
3. On data far from ImageNet (glyphs, digits): ``full`` and ``lp-ft`` against ``linear``.

Everything runs on EfficientNet-Lite0 with the packaged weights, on the built-in
datasets (datasets/README.md). Results print as a Markdown table and are written to
benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("FINETUNE_OFFLINE", "1")

import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data import FinetuneDataModule, load_splits  # noqa: E402
from finetune.data.builtin import build_dataset  # noqa: E402
from finetune.run_folder import build_model  # noqa: E402
from finetune.training import run  # noqa: E402
from finetune.training.features import extract_features  # noqa: E402


def sklearn_probe(run_dir: Path, cfg: RunConfig) -> dict:
    """LogisticRegression on the run's own split, features from the same frozen backbone."""
    splits = load_splits(run_dir / "splits.json")
    model = build_model(cfg, len(splits.classes))
    dm = FinetuneDataModule(splits, model.pretrained_cfg, image_size=cfg.image_size,
                            augment="none", batch_size=64, num_workers=0)
    dm.setup("fit")
    start = time.perf_counter()
    feats = {s: extract_features(model, dm.eval_dataloader(s), device=torch.device("cpu"),
                                 progress=False) for s in ("train", "test")}
    clf = LogisticRegression(max_iter=5000)
    clf.fit(feats["train"][0].numpy(), feats["train"][1].numpy())
    acc = clf.score(feats["test"][0].numpy(), feats["test"][1].numpy())
    return {"accuracy": float(acc), "time_s": time.perf_counter() - start}


def one_run(data: Path, out: Path, **kw) -> dict:
    cfg = RunConfig(data=str(data), output=str(out), num_workers=0, **kw)
    start = time.perf_counter()
    m = run(cfg, progress=False).metrics
    return {"config": kw, "test_accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"],
            "train_time_s": m["train_time_s"], "wall_s": time.perf_counter() - start,
            "n_train": m["split_sizes"]["train"], "n_test": m["split_sizes"]["test"], "cfg": cfg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smaller datasets and fewer epochs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quality.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    per_class = 20 if args.quick else 60
    ft_epochs = 4 if args.quick else 10
    root = Path(tempfile.mkdtemp(prefix="finetune-quality-"))
    data = {name: build_dataset(name, root=root / "datasets", per_class=per_class, size=128,
                                seed=args.seed)
            for name in ("photos", "glyphs", "digits")}
    common = dict(backbone="efficientnet_lite0", image_size=128, batch_size=32, seed=args.seed)
    rows = []

    # 1. linear vs scikit-learn on the same features (three tasks).
    for task in ("photos", "glyphs", "digits"):
        r = one_run(data[task], root / f"{task}-linear", strategy="linear", **common)
        sk = sklearn_probe(root / f"{task}-linear", r.pop("cfg"))
        rows.append({"comparison": "linear vs sklearn LogisticRegression", "task": task,
                     "ours": r["test_accuracy"], "baseline": sk["accuracy"],
                     "ours_s": r["train_time_s"], "baseline_s": sk["time_s"],
                     "n_train": r["n_train"], "n_test": r["n_test"]})

    # 2. pretrained vs random initialisation on natural photos.
    pre = one_run(data["photos"], root / "photos-pre", strategy="linear", **common)
    rnd = one_run(data["photos"], root / "photos-rnd", strategy="linear", weights="none", **common)
    rows.append({"comparison": "pretrained vs --weights none (linear)", "task": "photos",
                 "ours": pre["test_accuracy"], "baseline": rnd["test_accuracy"],
                 "ours_s": pre["train_time_s"], "baseline_s": rnd["train_time_s"],
                 "n_train": pre["n_train"], "n_test": pre["n_test"]})
    rnd_full = one_run(data["photos"], root / "photos-rnd-full", strategy="full", weights="none",
                       epochs=ft_epochs, **common)
    pre_full = one_run(data["photos"], root / "photos-pre-full", strategy="full",
                       epochs=ft_epochs, **common)
    rows.append({"comparison": f"pretrained vs --weights none (full, {ft_epochs} epochs)",
                 "task": "photos", "ours": pre_full["test_accuracy"],
                 "baseline": rnd_full["test_accuracy"], "ours_s": pre_full["train_time_s"],
                 "baseline_s": rnd_full["train_time_s"], "n_train": pre_full["n_train"],
                 "n_test": pre_full["n_test"]})

    # 3. far from ImageNet: fine-tuning against the linear probe.
    for task in ("glyphs", "digits"):
        lin = next(r for r in rows if r["task"] == task and r["comparison"].startswith("linear"))
        for strategy in ("full", "lp-ft"):
            # Letters and digits: a mirrored glyph is another glyph, so no flips.
            r = one_run(data[task], root / f"{task}-{strategy}", strategy=strategy,
                        epochs=ft_epochs, lp_epochs=20, hflip=False, **common)
            rows.append({"comparison": f"{strategy} vs linear", "task": task,
                         "ours": r["test_accuracy"], "baseline": lin["ours"],
                         "ours_s": r["train_time_s"], "baseline_s": lin["ours_s"],
                         "n_train": r["n_train"], "n_test": r["n_test"]})

    print(f"\nEfficientNet-Lite0 (packaged ImageNet weights), 128 px, {per_class} images per class, "
          f"seed {args.seed}, {os.cpu_count()} CPU cores, {date.today()}\n")
    print("| comparison | task | train/test images | ours | baseline | difference | ours s | baseline s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['comparison']} | {r['task']} | {r['n_train']}/{r['n_test']} | {r['ours']:.4f} | "
              f"{r['baseline']:.4f} | {r['ours'] - r['baseline']:+.4f} | {r['ours_s']:.1f} | "
              f"{r['baseline_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": str(date.today()), "machine": platform.platform(), "cpus": os.cpu_count(),
        "per_class": per_class, "seed": args.seed, "rows": rows}, indent=2) + "\n")
    print(f"\nWritten to {args.out}")


if __name__ == "__main__":
    main()

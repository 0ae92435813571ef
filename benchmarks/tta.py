"""What test-time augmentation (``finetune evaluate --tta``) gains over the plain view.

    python benchmarks/tta.py                 # 3 datasets x (linear, partial), 96 px
    python benchmarks/tta.py --quick         # photos only

The runs are benchmarks/lr_find.py's default-rate runs (the same ``--work`` folder; a
missing one is trained here with the same configuration): EfficientNet-Lite0 at 96 px
on the built-in photos, digits and glyphs, 40 images per class, ``linear`` (AdamW head)
and ``partial``. Each run's test split is evaluated twice by ``evaluate_run``: plain, and
with ``tta=True`` (the plain view, its mirror image where the run trained with flips,
five crops of the view enlarged 1.15x; softmax averaged). Reports test accuracy and loss
(NLL) of both, and the time. Writes benchmarks/results/tta.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, table, write_results  # noqa: E402
from lr_find import (  # noqa: E402
    IMAGE_SIZE,
    PER_CLASS,
    ensure_run,
    merged_rows,
    parse_runs,
    run_config,
    stamp,
)

from finetune.training.evaluate import evaluate_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune-bench-lr"))
    parser.add_argument("--epochs", type=int, default=3, help="partial's epochs")
    parser.add_argument("--runs", nargs="+", metavar="DATASET:STRATEGY")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    env = machine()
    rows = []
    for name, strategy in parse_runs(args.runs, args.quick):
        cfg = run_config(args.work, name, strategy, lr_find=False, epochs=args.epochs, steps=100)
        ensure_run(cfg)
        row = {"dataset": name, "strategy": strategy}
        for tta in (False, True):
            start = time.perf_counter()
            m = evaluate_run(Path(cfg.output), tta=tta, progress=False)
            key = "tta" if tta else "plain"
            row.update({f"{key}_accuracy": m["accuracy"], f"{key}_loss": m["loss"],
                        f"{key}_s": round(time.perf_counter() - start, 2)})
            if tta:
                row["views"] = m["tta"]["views"]
        row["n_test"] = m["num_samples"]
        row["accuracy_gain"] = row["tta_accuracy"] - row["plain_accuracy"]
        row["loss_change"] = row["tta_loss"] - row["plain_loss"]
        rows.append(stamp(row))
        print(json.dumps(row), flush=True)
    rows = merged_rows("tta", rows)
    print(table(rows, ["dataset", "strategy", "n_test", "plain_accuracy", "tta_accuracy",
                       "plain_loss", "tta_loss", "plain_s", "tta_s"]))
    path = write_results("tta", {
        "setup": {"backbone": "efficientnet_lite0", "image_size": IMAGE_SIZE,
                  "per_class": PER_CLASS, "partial_epochs": args.epochs,
                  "linear_head_fit": "sgd", "seed": 0},
        "rows": rows}, env=env)
    print(f"Written to {path}")


if __name__ == "__main__":
    main()

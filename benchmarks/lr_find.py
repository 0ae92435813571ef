"""Does the learning-rate finder's rate beat the strategy's default? (``--lr find``)

    python benchmarks/lr_find.py                 # 3 datasets x (linear, partial), 96 px
    python benchmarks/lr_find.py --runs photos:partial digits:linear   # some of them
    python benchmarks/lr_find.py --quick         # photos only, fewer steps (smoke test)

For each built-in dataset (photos, digits, glyphs; 40 images per class, built offline)
and each strategy (``linear`` with its AdamW head, ``--head-fit sgd``: the L-BFGS head
has no learning rate; ``partial`` at its defaults), two runs on the same split and seed
with EfficientNet-Lite0's packaged ImageNet weights at 96 px: the strategy's default
rate, and ``--lr find`` (each phase trains at the finder's suggestion). ``partial`` trains
``--epochs`` epochs (default 3, not its 10) to fit a shared 2-core machine. Reports test
accuracy and loss (NLL) of each, the rate found, and the training time (metrics.json's
``train_time_s``, the sweep included). Finished runs in ``--work`` are reused, so runs
made by several invocations are reported together; the default runs are also
benchmarks/tta.py's. Writes benchmarks/results/lr_find.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, table, write_results  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data.builtin import build_dataset  # noqa: E402
from finetune.training import run  # noqa: E402

DATASETS = ("photos", "digits", "glyphs")
STRATEGIES = ("linear", "partial")
PER_CLASS = 40
IMAGE_SIZE = 96


def dataset_dir(work: Path, name: str) -> Path:
    return build_dataset(name, root=work / "data", per_class=PER_CLASS, seed=0)


def run_config(work: Path, name: str, strategy: str, *, lr_find: bool, epochs: int,
               steps: int) -> RunConfig:
    """The configuration of one benchmark run; ``lr_find=False`` is the default-rate run."""
    extra = {"head_fit": "sgd"} if strategy == "linear" else {"epochs": epochs}
    tag = "find" if lr_find else "default"
    return RunConfig(data=str(dataset_dir(work, name)), strategy=strategy,
                     backbone="efficientnet_lite0", image_size=IMAGE_SIZE, batch_size=32,
                     num_workers=0, seed=0, lr_find=lr_find, lr_find_steps=steps,
                     output=str(work / "runs" / f"{name}-{strategy}-{tag}"), **extra)


def ensure_run(cfg: RunConfig) -> dict:
    """The run's metrics.json, training it first unless an earlier invocation did."""
    metrics_path = Path(cfg.output) / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    return run(cfg, overwrite=True, progress=False).metrics


def merged_rows(name: str, rows: list[dict]) -> list[dict]:
    """``rows``, after the rows of benchmarks/results/<name>.json for the other (dataset,
    strategy) pairs: each invocation adds its pairs, so the file can be built in parts.
    Every row carries the command and the load average it was measured with."""
    path = RESULTS / f"{name}.json"
    mine = {(r["dataset"], r["strategy"]) for r in rows}
    saved = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    old = [{"command": saved.get("command"), **r} for r in saved["rows"]]
    return [r for r in old if (r["dataset"], r["strategy"]) not in mine] + rows


def stamp(row: dict) -> dict:
    """The command and the 1-minute load average beside a row's figures."""
    return {**row, "command": "python " + " ".join(sys.argv),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def parse_runs(values: list[str] | None, quick: bool) -> list[tuple[str, str]]:
    """``dataset:strategy`` pairs; every pair by default, photos only with ``--quick``."""
    if not values:
        return [(d, s) for d in (("photos",) if quick else DATASETS) for s in STRATEGIES]
    pairs = [tuple(v.split(":", 1)) for v in values]
    bad = [v for v, p in zip(values, pairs, strict=True)
           if len(p) != 2 or p[0] not in DATASETS or p[1] not in STRATEGIES]
    if bad:
        raise SystemExit(f"--runs takes dataset:strategy with a dataset of {DATASETS} and a "
                         f"strategy of {STRATEGIES}; got {bad}.")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune-bench-lr"))
    parser.add_argument("--epochs", type=int, default=3, help="partial's epochs")
    parser.add_argument("--steps", type=int, default=100, help="the range test's steps")
    parser.add_argument("--runs", nargs="+", metavar="DATASET:STRATEGY")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    env = machine()
    steps = 30 if args.quick else args.steps
    rows = []
    for name, strategy in parse_runs(args.runs, args.quick):
        row = {"dataset": name, "strategy": strategy}
        for lr_find in (False, True):
            cfg = run_config(args.work, name, strategy, lr_find=lr_find, epochs=args.epochs,
                             steps=steps)
            m = ensure_run(cfg)
            key = "find" if lr_find else "default"
            row.update({f"{key}_lr": m["phases"][-1]["lr"], f"{key}_accuracy": m["test"]["accuracy"],
                        f"{key}_loss": m["test"]["loss"], f"{key}_train_s": m["train_time_s"]})
            if lr_find:
                found = json.loads((Path(cfg.output) / "lr_find.json").read_text())
                row["reason"] = found["phases"][-1]["reason"]
        row["n_test"] = m["split_sizes"]["test"]
        row["accuracy_gain"] = row["find_accuracy"] - row["default_accuracy"]
        rows.append(stamp(row))
        print(json.dumps(row), flush=True)
    rows = merged_rows("lr_find", rows)
    columns = ["dataset", "strategy", "n_test", "default_lr", "default_accuracy", "default_loss",
               "find_lr", "find_accuracy", "find_loss", "default_train_s", "find_train_s"]
    print(table(rows, columns))
    path = write_results("lr_find", {
        "setup": {"backbone": "efficientnet_lite0", "image_size": IMAGE_SIZE,
                  "per_class": PER_CLASS, "partial_epochs": args.epochs, "steps": steps,
                  "linear_head_fit": "sgd", "seed": 0},
        "rows": rows}, env=env)
    print(f"Written to {path}")


if __name__ == "__main__":
    main()

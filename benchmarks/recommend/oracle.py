"""The oracle table: every strategy on every task and size, with a validated learning rate.

    python benchmarks/recommend/oracle.py                                  # the full sweep
    python benchmarks/recommend/oracle.py --tasks photos digits photos-blur --sizes 5 \\
        --seeds 0 --csv benchmarks/recommend/results/oracle-pilot.csv      # the pilot

For each task (tasks.py), size, arm, seed and learning rate of the arm's grid, one
``finetune run`` on EfficientNet-Lite0 (packaged ImageNet weights, 96 px), and one CSV
row: validation accuracy (final, and after the first epoch of the final phase), test
accuracy of the best-on-validation checkpoint, CPU seconds (``time.process_time``, all
threads of this process) and wall seconds. regret.py picks, per (task, size, arm,
seed), the learning rate with the best validation accuracy: test images never choose.

The run is resumable: rows already in the CSV are skipped, and each finished row is
appended and flushed at once, so an interrupted sweep continues where it stopped.

It also stores what the recommender measures on each (task, size), on the training and
validation images only (``--signals-dir``, one JSON per task and size), so regret.py
can re-decide under other thresholds without measuring again.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("FINETUNE_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import IMAGE_PX, SIZES, TASKS, build_task, task_sizes  # noqa: E402

from finetune.config import RunConfig  # noqa: E402
from finetune.data import DataSplits, discover  # noqa: E402
from finetune.training import run
from finetune.training.checkpointing import saved_history  # noqa: E402
from finetune.training.trainer import quiet_lightning  # noqa: E402

BACKBONE = "efficientnet_lite0"
# Arm -> RunConfig values. partial K counts the last stages, surgical K the first ones.
ARMS: dict[str, dict] = {
    "linear": {"strategy": "linear"},
    **{f"partial-{k}": {"strategy": "partial", "unfreeze": k} for k in (1, 2, 3)},
    "full": {"strategy": "full"},
    "lp-ft": {"strategy": "lp-ft"},
    **{f"surgical-{k}": {"strategy": "surgical", "unfreeze": k} for k in (1, 2, 3)},
}
# A small validated grid per arm: the strategy default and one step away from it.
LR_GRID = {"linear": (1e-2, 1e-3), "partial": (1e-3, 3e-4), "full": (1e-3, 3e-4),
           "lp-ft": (3e-4, 1e-4), "surgical": (1e-3, 3e-4)}
# Batch 16 and these epochs give about 60 / 150 / 400 optimizer steps at 5 / 20 / 100
# images per class on 8 classes: each size trains to a plateau on CPU in bounded time.
# From 60 per class up the epochs stay at 8 (800 steps at 200, 1600 at 400).
BATCH_SIZE = 16
EPOCHS = {5: 30, 20: 15, 60: 8, 100: 8, 200: 8, 400: 8}
LINEAR_EPOCHS = 100  # cached features: epochs cost milliseconds
LP_EPOCHS = 50

COLUMNS = ["task", "size", "arm", "strategy", "unfreeze", "seed", "lr", "epochs", "val_accuracy",
           "val_accuracy_epoch1", "test_accuracy", "test_macro_f1", "cpu_s", "wall_s", "status", "device"]


def _key(row: dict) -> tuple:
    return (row["task"], int(row["size"]), row["arm"], int(row["seed"]), f"{float(row['lr']):g}")


def done_keys(csv_path: Path) -> set[tuple]:
    if not csv_path.is_file():
        return set()
    with open(csv_path, newline="") as f:
        return {_key(row) for row in csv.DictReader(f) if row["status"] == "ok"}


def header_of(csv_path: Path) -> list[str] | None:
    """The columns of an existing CSV (older ones lack ``device``), so appended rows line up."""
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return None
    with open(csv_path, newline="") as f:
        return next(csv.reader(f), None)


def one_run(task_dir: Path, arm: str, *, size: int, seed: int, lr: float, work: Path,
            cache: Path, accelerator: str = "cpu") -> dict:
    spec = ARMS[arm]
    strategy = spec["strategy"]
    epochs = LINEAR_EPOCHS if strategy == "linear" else EPOCHS[size]
    cfg = RunConfig(
        data=str(task_dir), backbone=BACKBONE, output=str(work / "run"), image_size=IMAGE_PX,
        batch_size=BATCH_SIZE, num_workers=0, seed=seed, lr=lr, epochs=epochs,
        lp_epochs=LP_EPOCHS if strategy in ("lp-ft", "surgical") else None,
        unfreeze=spec.get("unfreeze"), strategy=strategy, feature_cache_dir=str(cache),
        hflip=not task_dir.parent.name.startswith(("digits", "glyphs", "fonts")),
        # float32 everywhere: a GPU run of a seed draws from the same distribution as a
        # CPU one (no bf16), so seeds run on either machine average together.
        accelerator=accelerator, precision="32-true",
    )
    cpu, wall = time.process_time(), time.perf_counter()
    with quiet_lightning():
        result = run(cfg, overwrite=True, progress=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    history = saved_history(result.run_dir / "checkpoints")
    m = result.metrics
    return {
        "strategy": strategy, "unfreeze": spec.get("unfreeze", ""), "epochs": epochs,
        "val_accuracy": m["val"]["accuracy"],
        "val_accuracy_epoch1": history[0].get("val_accuracy", "") if history else "",
        "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
        "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "status": "ok", "device": accelerator,
    }


def measure_signals(task_dir: Path, out: Path) -> None:
    """The recommender's full output on the task's train + val images (never test)."""
    from finetune.recommend import recommend

    if out.is_file():
        return
    found = discover(task_dir, seed=0, verify=False)
    splits = DataSplits(classes=found.classes, train=found.train, val=found.val, test=[],
                        source=found.source)
    rec = recommend(splits, BACKBONE, image_size=IMAGE_PX, data_label=str(task_dir), batch_size=32)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec.to_json(), indent=2) + "\n")
    print(f"  signals {task_dir}: {rec.strategy} ({rec.cell['amount']}, {rec.cell['similarity']}) "
          f"in {rec.seconds:.0f} s", file=sys.stderr, flush=True)


def possible_picks(rec: dict) -> list[str]:
    """The arms ``decide`` picks for these signals under every thresholds of the grid
    that regret.py calibrates over (in grid order), then under its registered candidates."""
    from dataclasses import replace
    from itertools import product

    from regret import CANDIDATES, GRID, recommended_arm

    from finetune.recommend import Thresholds

    grid = (replace(Thresholds(), **dict(zip(GRID, values, strict=True))) for values in product(*GRID.values()))
    # dict.fromkeys keeps the first occurrence's order: grid order, then the candidates'.
    candidates = (thresholds for _, thresholds in CANDIDATES.values())
    return list(dict.fromkeys(recommended_arm(rec, thr) for thr in [*grid, *candidates]))


def cell_arms(args: argparse.Namespace, task: str, size: int, task_dir: Path) -> list[str]:
    """``--arms``, and with ``--add-recommended`` the recommender's possible picks, for
    one (task, size); its signals are measured first where they are not stored yet."""
    signals = Path(args.signals_dir) / f"{task}-{size}.json"
    measure_signals(task_dir, signals)
    arms = list(args.arms)
    if args.add_recommended:
        arms += [a for a in possible_picks(json.loads(signals.read_text())) if a not in arms]
    return arms


def _lrs(args: argparse.Namespace, arm: str) -> tuple[float, ...]:
    grid = LR_GRID[ARMS[arm]["strategy"]]
    return grid if args.lrs == "grid" else grid[:1]


def pending_runs(args: argparse.Namespace, done: set[tuple]) -> Iterator[tuple[dict, Path]]:
    """The runs not yet done, in sweep order (task, size, arm, seed, lr): the row's key
    fields and the task folder. Each task is built, and its signals measured, as it comes."""
    for task in args.tasks:
        sizes = task_sizes(task, tuple(args.sizes))
        paths = build_task(task, args.root, sizes=tuple(sizes))
        for size in sizes:
            for arm in cell_arms(args, task, size, paths[size]):
                for seed in args.seeds:
                    for lr in _lrs(args, arm):
                        row = {"task": task, "size": size, "arm": arm, "seed": seed, "lr": f"{lr:g}"}
                        if _key(row) not in done:
                            yield row, paths[size]


def plan(args: argparse.Namespace, done: set[tuple]) -> list[str]:
    """The not-yet-done runs as sweep.sh jobs, TASK:SEED:ARM, cell by cell (task, then
    seed), so that a deadline cuts the last cells rather than every cell's last arms."""
    jobs = dict.fromkeys((row["task"], row["seed"], row["arm"]) for row, _ in pending_runs(args, done))
    order = {task: i for i, task in enumerate(args.tasks)}
    return [f"{t}:{seed}:{arm}" for t, seed, arm in sorted(jobs, key=lambda j: (order[j[0]], j[1]))]


def main(argv: list[str] | None = None) -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Run every strategy on every task (resumable).")
    parser.add_argument("--root", default="datasets/recommend-bench", help="where tasks.py builds the tasks")
    parser.add_argument("--csv", default=str(here / "results" / "oracle.csv"))
    parser.add_argument("--signals-dir", default=str(here / "results" / "signals"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--lrs", choices=("grid", "default"), default="grid",
                        help="grid: the arm's two learning rates; default: only the first")
    parser.add_argument("--add-recommended", action="store_true",
                        help="also run, per cell, every arm the recommender could pick there under "
                             "any thresholds of regret.py's calibration grid (so its picks are scored)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU may be shared)")
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: train on the GPU in float32 with TF32 off (more seeds in less "
                             "time); its cpu_s is then not comparable, and regret.py leaves it out")
    parser.add_argument("--done-csv", nargs="*", default=[],
                        help="other CSVs whose finished rows count as done (parallel sweeps)")
    parser.add_argument("--plan", action="store_true",
                        help="build the tasks and measure their signals, then print the runs not yet done "
                             "as TASK:SEED:ARM jobs for sweep.sh (one process per arm), and train nothing")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sizes) - set(EPOCHS))
    if unknown:
        parser.error(f"--sizes {unknown}: no epoch count for them; add them to oracle.EPOCHS "
                     f"(now {sorted(EPOCHS)}).")
    torch.set_num_threads(args.threads)
    if args.accelerator == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    csv_path = Path(args.csv)
    done = done_keys(csv_path).union(*(done_keys(Path(p)) for p in args.done_csv))
    if args.plan:
        for line in plan(args, done):
            print(line)
        return
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    columns = header_of(csv_path) or COLUMNS
    if args.accelerator != "cpu" and "device" not in columns:
        parser.error(f"{csv_path} has no 'device' column, so GPU rows appended to it would pass for CPU "
                     "rows in regret.py's CPU seconds; write them to a new --csv.")
    work_root = Path(tempfile.mkdtemp(prefix="oracle-"))
    cache = work_root / "features"
    try:
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if columns is COLUMNS:
                writer.writeheader()
            for row, task_dir in pending_runs(args, done):
                try:
                    row.update(one_run(task_dir, row["arm"], size=row["size"], seed=row["seed"],
                                       lr=float(row["lr"]), work=work_root, cache=cache,
                                       accelerator=args.accelerator))
                except Exception as err:  # recorded, and the sweep goes on
                    traceback.print_exc()
                    row.update(status=f"error: {type(err).__name__}: {err}"[:200])
                writer.writerow(row)
                f.flush()
                print(f"  {row['task']} {row['size']}/class {row['arm']:<11} seed {row['seed']} lr {row['lr']}: "
                      f"test {row.get('test_accuracy', '-')}, val {row.get('val_accuracy', '-')}, "
                      f"{row.get('cpu_s', '-')} CPU s", flush=True)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()

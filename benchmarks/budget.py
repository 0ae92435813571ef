"""Does `finetune run --strategy auto --budget MINUTES` finish within its budget + 10 %?

    python benchmarks/budget.py                          # builtin photos, glyphs, digits; 0.5 and 1 min
    python benchmarks/budget.py --data builtin:photos --budgets 1

Each run is the command a user types, in a fresh process, timed from outside (so Python's
start and the imports count, as they count against the budget), with an empty feature
cache (so a linear head pays its feature extraction). Beside each budgeted run, the same
data at auto's defaults (no budget) is timed too, for the cost the budget saves. Reports
per run: the wall time, its ratio to the budget, the recommender's measuring time and its
estimate of the chosen command's time, the strategy, image size and epochs auto
chose, the test accuracy, and the phases the budget stopped. Writes
benchmarks/results/budget.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_now, machine, table, write_results  # noqa: E402

DATASETS = ("builtin:photos", "builtin:glyphs", "builtin:digits")
TOLERANCE = 1.10  # the "budget + 10 %"


def timed_run(data: str, budget: float | None, work: Path) -> dict:
    """One `finetune run --strategy auto` in its own process and feature cache."""
    name = data.split(":")[-1] + (f"-budget-{budget:g}" if budget else "-defaults")
    out, cache = work / name, work / f"{name}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "finetune"), "run", "--data", data, "--strategy", "auto",
           "--output", str(out), "--overwrite", "-q"]
    if budget:
        cmd += ["--budget", f"{budget:g}"]
    load = load_now()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "FINETUNE_CACHE_DIR": str(cache)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    rec = json.loads((out / "recommendation.json").read_text())
    row = {"data": data, "budget_min": budget, "wall_s": round(wall, 1),
           "ratio": round(wall / (60 * budget), 3) if budget else None,
           "strategy": m["strategy"], "image_size": m["image_size"],
           # A linear head fitted by L-BFGS has no epochs.
           "epochs": None if m["strategy"] == "linear" else "+".join(str(p["epochs"]) for p in m["phases"]),
           "test_accuracy": m["test"]["accuracy"], "train_time_s": m["train_time_s"],
           "measuring_s": round(rec["seconds"], 1),
           # What the recommender expected the chosen command to take, start to end.
           "estimated_s": round(60 * rec["estimated_minutes"], 1),
           "stopped_at_budget": ",".join(m.get("budget", {}).get("stopped_at_budget", [])) or None,
           "load_before": load, "load_after": load_now(), "command": " ".join(cmd[1:])}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 1.0])
    parser.add_argument("--no-defaults", action="store_true", help="skip the runs without a budget")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results/budget.json)")
    args = parser.parse_args()
    env = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune-budget-") as tmp:
        for data in args.data:
            for budget in ([] if args.no_defaults else [None]) + args.budgets:
                rows.append(timed_run(data, budget, Path(tmp)))
    within = [r for r in rows if r["budget_min"]]
    held = sum(r["ratio"] <= TOLERANCE for r in within)
    columns = ["data", "budget_min", "wall_s", "ratio", "measuring_s", "estimated_s", "strategy", "image_size",
               "epochs", "test_accuracy", "stopped_at_budget", "load_before"]
    print(table(rows, columns))
    print(f"\nwithin budget + 10 %: {held} of {len(within)}; worst ratio "
          f"{max((r['ratio'] for r in within), default=float('nan')):.2f}")
    path = write_results("budget", {"tolerance": TOLERANCE, "held": held, "runs": len(within),
                                    "rows": rows}, args.out, env=env)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Run the commands of a recommendation's forecast table and score them: the best
strategy in hindsight, and the forecast's accuracy and time against what happened.

    python benchmarks/peers/hindsight.py RUN_DIR [--sizes 128 224] [--strategies lp-ft partial]

``RUN_DIR`` is a ``finetune run --strategy auto`` folder (its ``recommendation.json``
holds the table). Each selected row's command runs exactly as printed, in a fresh process
with a feature cache of its own, into ``RUN_DIR/../hindsight/<strategy>-<size>``. Reports
per row: the forecast accuracy and interval, the test accuracy, the estimated and the
actual wall time; then the best row, and where `auto`'s own choice stands against it.
Writes ``--out`` (JSON) after every row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_row(row: dict, out: Path) -> dict:
    """``row["command"]`` with an output folder and a fresh cache; its result."""
    cache = Path(str(out) + "-cache")
    shutil.rmtree(cache, ignore_errors=True)
    command = [*shlex.split(row["command"]), "--output", str(out), "--overwrite", "-q"]
    command[0] = str(Path(sys.executable).with_name("finetune"))  # this environment's CLI
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "FINETUNE_CACHE_DIR": str(cache)})
    wall = time.monotonic() - start
    result = {"strategy": row["strategy"], "unfreeze": row["unfreeze"], "image_size": row["image_size"],
              "forecast": row["accuracy"], "interval": row["interval"],
              "estimated_s": round(60 * row["minutes"], 1), "wall_s": round(wall, 1),
              "load_before": round(os.getloadavg()[0], 2), "command": shlex.join(command),
              "exit_code": proc.returncode}
    if proc.returncode == 0:
        metrics = json.loads((out / "metrics.json").read_text())
        result["test_accuracy"] = metrics["test"]["accuracy"]
    else:
        result["error"] = proc.stderr[-1000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a `finetune run --strategy auto` folder")
    parser.add_argument("--sizes", type=int, nargs="+", help="only these image sizes")
    parser.add_argument("--strategies", nargs="+", help="only these strategies")
    parser.add_argument("--out", type=Path, required=True, help="results file (JSON)")
    args = parser.parse_args()
    rec = json.loads((args.run_dir / "recommendation.json").read_text())
    auto = json.loads((args.run_dir / "metrics.json").read_text())
    done = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    rows = [r for r in rec["forecast"]
            if (not args.sizes or r["image_size"] in args.sizes)
            and (not args.strategies or r["strategy"] in args.strategies)]
    results = list(done)
    for row in rows:
        key = (row["strategy"], row["image_size"])
        if any((d["strategy"], d["image_size"]) == key and d["exit_code"] == 0 for d in done):
            continue
        out = args.run_dir.parent / "hindsight" / f"{row['strategy']}-{row['image_size']}"
        results.append(run_row(row, out))
        print(json.dumps(results[-1]), flush=True)
        scored = [r for r in results if r["exit_code"] == 0]
        best = max(scored, key=lambda r: r["test_accuracy"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "run_dir": str(args.run_dir), "data": rec["data"],
            "auto": {"strategy": auto["strategy"], "image_size": auto["image_size"],
                     "test_accuracy": auto["test"]["accuracy"]},
            "best": best, "auto_minus_best_points": round(100 * (auto["test"]["accuracy"] - best["test_accuracy"]), 2),
            "rows": results,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()

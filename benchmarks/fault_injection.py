"""Kill ``finetune run`` with SIGKILL at random points, resume it, and compare with the
same run uninterrupted: the table in benchmarks/REPORT.md's "Fault injection".

    python benchmarks/fault_injection.py            # 4 kill points each for full and lp-ft
    python benchmarks/fault_injection.py --n 10 --seed 1

Each strategy first runs uninterrupted (a tiny CPU run: EfficientNet-Lite0 at 32 px, 2
classes x 8 photos, batch 4, 3 epochs, augmentation on, one thread), counting its
moments: training and validation steps, checkpoints written, phase starts, evaluations.
Kill points are drawn from those after the first checkpoint, taking the places the run
has in turn (inside an epoch, between epochs, between phases, during evaluation). The child kills itself
at its point (tests/_faults.py), ``--resume`` finishes it, and the best and last
weights, the val loss and every test metric are compared with the uninterrupted run's.
"Lost" lists the files of the resumed run folder that are missing or do not load.

Writes benchmarks/results/fault_injection.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from _common import machine, table, write_results  # noqa: E402
from _faults import inject, place_of  # noqa: E402

from finetune.data.builtin import build_dataset  # noqa: E402

TOL = 1e-6


def tiny_data(root: Path) -> Path:
    """2 classes x 8 of the built-in photos, as the tests use."""
    photos = build_dataset("photos", root=root / "photos", per_class=16, size=96)
    data = root / "two"
    for name in ("brick", "cat"):
        (data / name).mkdir(parents=True)
        for src in sorted((photos / name).iterdir())[:8]:
            shutil.copy(src, data / name / src.name)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4, help="kill points per strategy")
    parser.add_argument("--seed", type=int, default=2026, help="draws the kill points")
    parser.add_argument("--strategies", nargs="+", default=["full", "lp-ft"])
    args = parser.parse_args(argv)
    env = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_data(Path(tmp))
        for strategy in args.strategies:
            for t in inject(data, Path(tmp) / "runs", strategy, n=args.n, seed=args.seed):
                rows.append({"strategy": strategy, "kill point": f"{t.kill_at} of {t.moments}",
                             "place": place_of(t.where), "where it fell": t.where,
                             "resume matched": "yes" if t.matched(TOL) else "NO",
                             "max difference": max(t.diff.values()),
                             "files lost": len(t.lost)})
    columns = ["strategy", "kill point", "place", "where it fell", "resume matched",
               "max difference", "files lost"]
    print(table(rows, columns))
    matched = sum(r["resume matched"] == "yes" for r in rows)
    lost = sum(r["files lost"] for r in rows)
    print(f"\n{len(rows)} kill points, {matched} resumes matched (within {TOL:g}), "
          f"files lost: {lost}. Machine: {env['cpu']}, {env['cpu_cores']} cores, torch "
          f"{env['torch']}.")
    write_results("fault_injection", {"tolerance": TOL, "rows": rows}, env=env)


if __name__ == "__main__":
    main()

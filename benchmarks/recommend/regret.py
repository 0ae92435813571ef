"""Regret of the recommender and of the baselines, from the oracle table.

    python benchmarks/recommend/regret.py                                   # full sweep
    python benchmarks/recommend/regret.py --csv benchmarks/recommend/results/oracle-pilot.csv \\
        --out benchmarks/recommend/results/regret-pilot
    python benchmarks/recommend/regret.py --check   # the committed reports regenerate byte for byte

Per (task, size) cell: each arm's accuracy is its test accuracy at the learning rate that
was best on *validation*, averaged over seeds; the oracle is the best arm. A method's
regret on a cell is oracle accuracy minus the accuracy of the arm it picks, in points.

Methods:
* recommender, thresholds calibrated leave-one-task-out: for each task, the thresholds
  that minimise mean regret on the *other* tasks (all their sizes) decide its cells;
* the same with the pre-registered grid around the pre-sweep defaults;
* recommender with each earlier set of defaults, frozen (FROZEN_DEFAULTS): those shipped
  before the sweep (PRE_SWEEP); lp-ft wherever the probe leaves headroom, set after the
  first ten tasks (LPFT_WITH_HEADROOM: held out on textures-small and photos-small-noise,
  then on photos-pixelate, fonts and grey-crops); the amount line at 100 and no headroom
  (LITTLE_BELOW_100: held out on photos-jpeg and glyphs-lower, then on the first
  100-per-class cells); the amount line at 200 (LITTLE_BELOW_200: recalibrated on the 63
  cells up to 100 per class, held out, frozen, on the 200-per-class cells, and still the
  current ones); the similarity line at 0.5 (SIMILAR_FROM_05: chosen on the 78 cells up
  to 200 per class, held out at 400, where it lost and was withdrawn); and with the
  current ones (finetune.recommend.Thresholds) (benchmarks/recommend/REPORT.md);
* recommender with a registered candidate that never shipped (CANDIDATES: the
  early-shift line);
* always-linear, always-full, always-lp-ft;
* the plain 2x2 rule: amount split at the median images per class and similarity at the
  median penultimate probe accuracy (medians of the other tasks' cells, as above);
  little+similar -> linear, large+similar -> partial (the backbone's default, 2 stages),
  large+different -> full, little+different -> linear (DESIGN.md's "trouble" cell);
* one epoch each: linear, partial-2, full and lp-ft, keep the one with the best
  validation accuracy after one epoch of its (final) phase; linear's whole run costs
  less CPU than one epoch of the others, so it is scored by its final validation
  accuracy ("equal CPU time"). Its CPU column adds the probes to the final run.

Then, for the recommender (calibrated and default), its regret minus each other method's
on the same cells, with a 95% bootstrap interval that resamples tasks (seeded, so the
report regenerates byte for byte); and the noise floor: what choosing each cell's arm on
its other seeds loses on the seed left out.

Per cell, a seed counts only where it ran every core arm, and an arm only where it ran on
every counted seed (load_oracle); seeds trained on a GPU (oracle.py --accelerator cuda)
count for accuracy, not for CPU seconds. A cell on which some core arm has not run yet
(a sweep's deadline) is left out of the calibration and of every score, and listed with
the arms that ran and its current pick minus lp-ft. ``--tasks`` scores a held-out set
alone while the other tasks still calibrate.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import random
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from finetune.recommend import Thresholds, decide

CANDIDATES_ONE_EPOCH = ("linear", "partial-2", "full", "lp-ft")
DEFAULT_PARTIAL = "partial-2"  # EfficientNet-Lite0's default_unfreeze
# The arms every sweep since the first runs on every cell (oracle.py --arms).
CORE_ARMS = frozenset({"linear", "lp-ft", "partial-1", "partial-2", "full", "surgical-1"})
# The thresholds calibrated leave-one-task-out, and their grids (defaults included).
GRID = {
    # 200 added before the first 100-per-class cell was scored: it lets the calibration
    # keep the large-data branches (partial, surgical, full) off at 100. 400 added before
    # the first 200-per-class cell ran (those count 250 per class with val): it lets the
    # calibration move the large-data branches above them too.
    "little_per_class": (10.0, 25.0, 50.0, 100.0, 200.0, 400.0),
    "similar_score": (0.5, 0.6, 0.7, 0.8),
    "headroom": (0.0, 0.02, 0.05),
    # 0.0 (always lp-ft, never full, on large + different data) added with
    # LPFT_WITH_HEADROOM, after the held-out tasks.
    "lpft_kappa": (0.0, 0.4, 0.6, 0.8),
    # Added after the first look at the 2026-11-26 sweep (docs/recommend.md says so):
    # whether little + similar data with probe error above this gets lp-ft (1.0: never;
    # 0.0, LPFT_WITH_HEADROOM's: whenever the probe leaves headroom), and whether under
    # 10 images per class always means a linear head (0: never).
    "little_similar_lpft_error": (0.0, 0.02, 0.05, 0.1, 1.0),
    "very_little_per_class": (0.0, 10.0),
}
# The grid fixed before the sweep ran, around the thresholds shipped then: its
# leave-one-task-out score is the honest one.
PREREGISTERED = {"little_per_class": (10.0, 25.0, 50.0, 100.0), "similar_score": (0.5, 0.6, 0.7, 0.8),
                 "headroom": (0.0, 0.02, 0.05), "lpft_kappa": (0.4, 0.6, 0.8)}
# Each frozen set names every threshold that has changed since it shipped, so that a later
# recalibration of finetune.recommend.Thresholds does not move its row. Each is named by
# the rule it encodes; the commit is where it became the defaults.
# The defaults shipped before the sweep: a linear head on little + similar data and under
# 10 images per class, full fine-tuning on large + different data below kappa 0.6.
PRE_SWEEP = Thresholds(very_little_per_class=10.0, little_per_class=50.0, headroom=0.02,
                       little_similar_lpft_error=1.0, lpft_kappa=0.6, similar_score=0.7)
# 63c6932: lp-ft wherever the probe leaves more than 2 % error, unless the data are large
# (50 per class) and similar. Frozen for the third held-out set (photos-pixelate, fonts,
# grey-crops); 0e1f313 then recalibrated little_per_class and headroom on all 15 tasks.
LPFT_WITH_HEADROOM = Thresholds(little_per_class=50.0, headroom=0.02, similar_score=0.7)
# 0e1f313: the amount line at 100 per class, a linear head only where the probe is
# perfect. Frozen for the first 100-per-class cells, which then moved the line to 200.
LITTLE_BELOW_100 = Thresholds(little_per_class=100.0, similar_score=0.7)
# 75a0124: the amount line at 200 per class. Frozen for the 200-per-class cells; the
# current defaults.
LITTLE_BELOW_200 = Thresholds(little_per_class=200.0, similar_score=0.7)
# d03ca3c, withdrawn in c2d1550: the similarity line at 0.5, frozen for the 400-per-class
# cells (registered in bca4f17). Its first two held-out cells lost to LITTLE_BELOW_200.
SIMILAR_FROM_05 = Thresholds(little_per_class=200.0, similar_score=0.5)
# Each earlier set of defaults is scored as its own row, beside the current defaults. The
# keys are the labels of those rows in the committed reports and of --loto-anchor.
FROZEN_DEFAULTS = {"pre-sweep": PRE_SWEEP, "session-5": LPFT_WITH_HEADROOM,
                   "session-6": LITTLE_BELOW_100, "session-7": LITTLE_BELOW_200,
                   "session-9": SIMILAR_FROM_05}
# Candidates that never shipped, each frozen when it was registered. The early-shift line:
# LITTLE_BELOW_200, with the 0.5 line only where the later stages' shift stays at or
# above semantic_hot after early AdaBN (results/registered-s12-early-shift.md, committed
# before its held-out cells ran: glyphs-400, then textures-pixelate at 200 and 400).
EARLY_SHIFT = Thresholds(little_per_class=200.0, similar_score=0.7, similar_score_shifted=0.5)
EARLY_SHIFT_ROW = "recommender (early-shift line, session 12)"
CANDIDATES = {EARLY_SHIFT_ROW: ("early-shift line pick", EARLY_SHIFT)}
# Every frozen rule set, each scored as its own row: row -> (its pick column's title, thresholds).
FROZEN_ROWS = {**{f"recommender ({name} defaults)": (f"{name} pick", thresholds)
                  for name, thresholds in FROZEN_DEFAULTS.items()}, **CANDIDATES}
CURRENT = "recommender (current defaults)"

Cell = tuple[str, int]  # (task, size)


def read_rows(csv_paths: list[Path]) -> list[dict]:
    """The ok rows of every CSV (parallel oracle processes each write their own)."""
    rows = []
    for path in csv_paths:
        with open(path, newline="") as f:
            rows += [row for row in csv.DictReader(f) if row["status"] == "ok"]
    return rows


def load_oracle(rows: list[dict]) -> dict[Cell, dict[str, dict]]:
    """cell -> arm -> {"acc", "cpu", "val", "val1", "epochs", "seeds", "by_seed"}: the lr
    chosen on val per seed, then means over the seeds that count (below); "by_seed" keeps
    each counted seed's test accuracy."""
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        runs[(row["task"], int(row["size"]), row["arm"], int(row["seed"]))].append(row)
    # Arms are compared on the same runs of the data: a seed counts in a cell only if it
    # ran every one of CORE_ARMS that the cell has (a sweep cut short by sweep.sh's
    # deadline leaves seeds with some arms only), and an arm stays in the cell only if it
    # ran on every seed that counts (the first sweep ran arms the later ones did not).
    seed_arms: dict[tuple, set[str]] = defaultdict(set)
    cell_arms: dict[Cell, set[str]] = defaultdict(set)
    for task, size, arm, seed in runs:
        seed_arms[(task, size, seed)].add(arm)
        cell_arms[(task, size)].add(arm)
    seeds_of: dict[Cell, set[int]] = defaultdict(set)
    for (task, size, seed), arms in seed_arms.items():
        if CORE_ARMS & cell_arms[(task, size)] <= arms:
            seeds_of[(task, size)].add(seed)
    per_seed: dict[tuple, list[dict]] = defaultdict(list)
    for (task, size, arm, seed), rows in runs.items():
        counted = seeds_of[(task, size)]
        if seed not in counted or not all(arm in seed_arms[(task, size, s)] for s in counted):
            continue
        best = max(rows, key=lambda r: float(r["val_accuracy"]))  # first on ties: grid order
        per_seed[(task, size, arm)].append(best)
    table: dict[Cell, dict[str, dict]] = defaultdict(dict)
    for (task, size, arm), rows in per_seed.items():
        val1 = [float(r["val_accuracy_epoch1"]) for r in rows if r["val_accuracy_epoch1"] not in ("", None)]
        # CPU seconds come from CPU runs only: a GPU run's process time measures
        # something else (oracle.py --accelerator cuda, used for extra seeds).
        cpu = [float(r["cpu_s"]) for r in rows if (r.get("device") or "cpu") == "cpu"]
        table[(task, size)][arm] = {
            "acc": statistics.mean(float(r["test_accuracy"]) for r in rows),
            "cpu": statistics.mean(cpu) if cpu else None,
            "val": statistics.mean(float(r["val_accuracy"]) for r in rows),
            "val1": statistics.mean(val1) if val1 else None,
            "epochs": int(rows[0]["epochs"]),
            "seeds": len(rows),
            "by_seed": {int(r["seed"]): float(r["test_accuracy"]) for r in rows},
        }
    return dict(table)


def load_signals(signals_dir: Path, cells: list[Cell]) -> dict[Cell, dict]:
    out = {}
    for task, size in cells:
        path = signals_dir / f"{task}-{size}.json"
        if path.is_file():
            out[(task, size)] = json.loads(path.read_text())
    return out


def arm_of(strategy: str, unfreeze: int | None) -> str:
    if strategy in ("partial", "surgical"):
        return f"{strategy}-{min(3, max(1, int(unfreeze or 1)))}"
    return strategy


def recommended_arm(rec: dict, thr: Thresholds) -> str:
    d = decide(rec["similarity"], rec["stats"], thr)
    return arm_of(d.strategy, d.unfreeze)


def regret_of(table: dict, picks: dict[Cell, str]) -> dict[Cell, float]:
    out = {}
    for cell, arm in picks.items():
        arms = table[cell]
        if arm in arms:
            out[cell] = 100.0 * (max(a["acc"] for a in arms.values()) - arms[arm]["acc"])
    return out


def noise_floor(table: dict, cells: list[Cell]) -> dict[Cell, float]:
    """Per cell with two seeds or more: the regret of an arm chosen, for each seed, by its
    mean test accuracy on the cell's *other* seeds and scored on the one left out. A
    method that knew every arm's accuracy, but only through other runs, loses this much
    to run-to-run noise; no method that picks from signals can expect to lose less."""
    out = {}
    for cell in cells:
        arms = table[cell]
        seeds = sorted(set.intersection(*(set(a["by_seed"]) for a in arms.values())))
        if len(seeds) < 2:
            continue
        got = []
        for seed in seeds:
            others = [s for s in seeds if s != seed]
            pick = max(sorted(arms), key=lambda a: statistics.mean(arms[a]["by_seed"][s] for s in others))
            got.append(arms[pick]["by_seed"][seed])
        out[cell] = 100.0 * (max(a["acc"] for a in arms.values()) - statistics.mean(got))
    return out


def summary(regrets: dict[Cell, float], picks: dict[Cell, str], table: dict, extra_cpu=None) -> dict:
    values = list(regrets.values())
    if not values:
        return {"cells": 0}
    cpu = [table[c][picks[c]]["cpu"] + (extra_cpu or {}).get(c, 0.0) for c in regrets
           if table[c][picks[c]]["cpu"] is not None]
    return {
        "cells": len(values),
        "mean": statistics.mean(values),
        "median": statistics.median(values),
        "worst": max(values),
        "hit_rate": sum(v <= 1e-9 for v in values) / len(values),
        "mean_cpu_s": statistics.mean(cpu) if cpu else None,  # over the cells run on a CPU
    }


def _thresholds_grid(base: Thresholds, grid: dict):
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield replace(base, **dict(zip(keys, values, strict=True)))


def _distance(thr: Thresholds, base: Thresholds, grid: dict) -> float:
    # Ties in training regret go to the thresholds closest to the defaults (relative change).
    return sum(abs(getattr(thr, k) - getattr(base, k)) / (abs(getattr(base, k)) or 1.0) for k in grid)


def calibrate(table: dict, signals: dict, cells: list[Cell], base: Thresholds,
              grid: dict = GRID) -> Thresholds:
    best, best_key = base, None
    for thr in _thresholds_grid(base, grid):
        picks = {c: recommended_arm(signals[c], thr) for c in cells}
        regrets = regret_of(table, picks)
        if not regrets:
            continue
        key = (statistics.mean(regrets.values()), _distance(thr, base, grid))
        if best_key is None or key < best_key:
            best, best_key = thr, key
    return best


def leave_one_task_out(table: dict, signals: dict, cells: list[Cell],
                       grid: dict = GRID, base: Thresholds | None = None) -> tuple[dict, dict]:
    """Per task, the thresholds of ``grid`` (the rest as in ``base``, default: the shipped
    defaults) that score best on the other tasks decide its cells."""
    base = base or Thresholds()
    picks, chosen = {}, {}
    tasks = sorted({t for t, _ in cells})
    for task in tasks:
        train = [c for c in cells if c[0] != task]
        thr = calibrate(table, signals, train, base, grid) if train else base
        chosen[task] = {k: getattr(thr, k) for k in grid}
        for c in cells:
            if c[0] == task:
                picks[c] = recommended_arm(signals[c], thr)
    return picks, chosen


def two_by_two(table: dict, signals: dict, cells: list[Cell]) -> dict[Cell, str]:
    picks = {}
    for cell in cells:
        others = [c for c in cells if c[0] != cell[0]] or cells
        amount_line = statistics.median(signals[c]["stats"]["per_class_median"] for c in others)
        probe_line = statistics.median(signals[c]["similarity"]["probe_accuracy"] for c in others)
        little = signals[cell]["stats"]["per_class_median"] < amount_line
        similar = signals[cell]["similarity"]["probe_accuracy"] >= probe_line
        picks[cell] = "linear" if little else (DEFAULT_PARTIAL if similar else "full")
    return picks


def one_epoch_each(table: dict, cells: list[Cell]) -> tuple[dict[Cell, str], dict[Cell, float]]:
    picks, probe_cpu = {}, {}
    for cell in cells:
        arms = table[cell]
        scored = []
        for arm in CANDIDATES_ONE_EPOCH:
            if arm not in arms:
                continue
            a = arms[arm]
            score = a["val"] if arm == "linear" else a["val1"]
            if score is not None:
                scored.append((score, -CANDIDATES_ONE_EPOCH.index(arm), arm))
        if not scored:
            continue
        picks[cell] = max(scored)[2]
        # One epoch of each candidate: its run's CPU divided by its epochs, linear's whole run.
        probe_cpu[cell] = sum((arms[a]["cpu"] or 0.0) / (1 if a == "linear" else max(1, arms[a]["epochs"]))
                              for _, _, a in scored)
    return picks, probe_cpu


def paired_differences(table: dict, picks_by_method: dict, reference: str, cells: list[Cell], *,
                       draws: int = 10_000, seed: int = 0) -> dict[str, dict]:
    """Regret of ``reference`` minus each other method's, cell by cell on the same cells
    (negative: ``reference`` is better), its mean, and a 95% interval from a bootstrap
    that resamples *tasks* with replacement: a task's sizes share their images and their
    signals, so its cells do not vary independently."""
    mine = regret_of(table, {c: picks_by_method[reference][c] for c in cells})
    rng = random.Random(seed)
    tasks = sorted({t for t, _ in cells})
    out = {}
    for name, picks in picks_by_method.items():
        if name == reference:
            continue
        theirs = regret_of(table, {c: picks[c] for c in cells})
        by_task: dict[str, list[float]] = defaultdict(list)
        for c in cells:
            by_task[c[0]].append(mine[c] - theirs[c])
        means = []
        for _ in range(draws):
            sample = [d for t in rng.choices(tasks, k=len(tasks)) for d in by_task[t]]
            means.append(statistics.mean(sample))
        means.sort()
        out[name] = {"mean": statistics.mean(d for ds in by_task.values() for d in ds),
                     "low": means[int(0.025 * draws)], "high": means[int(0.975 * draws) - 1]}
    return out


def incomplete_cells(incomplete: dict[Cell, dict], signals: dict) -> dict[Cell, dict]:
    """Per cell cut short: each arm that ran and its test accuracy, the current defaults'
    pick (None without signals) and, where lp-ft and that pick both ran, the pick's
    accuracy minus lp-ft's in points: the paired difference behind "better than
    always-lp-ft", which needs those two arms only."""
    out = {}
    for cell in sorted(incomplete):
        arms = {a: incomplete[cell][a]["acc"] for a in sorted(incomplete[cell])}
        pick = recommended_arm(signals[cell], Thresholds()) if cell in signals else None
        both = pick in arms and "lp-ft" in arms
        out[cell] = {"arms": arms, "current_pick": pick,
                     "pick_minus_lpft": 100.0 * (arms[pick] - arms["lp-ft"]) if both else None}
    return out


def signed(points: float) -> str:
    """Points with their sign, to two places. A difference that cancels to within float
    rounding (-6e-15) reads +0.00; a real one under half a hundredth keeps its sign."""
    return f"{0.0 if abs(points) < 1e-9 else points:+.2f}"


def markdown(results: dict, table: dict, picks_by_method: dict, cells: list[Cell], chosen: dict,
             signals: dict, differences: dict[str, dict[str, dict]]) -> str:
    lines = ["| method | cells | mean regret | median | worst | hit rate | mean CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in results.items():
        if not s.get("cells"):
            lines.append(f"| {name} | 0 | - | - | - | - | - |")
            continue
        cpu = "-" if s["mean_cpu_s"] is None else f"{s['mean_cpu_s']:.0f}"
        lines.append(f"| {name} | {s['cells']} | {s['mean']:.2f} | {s['median']:.2f} | {s['worst']:.2f} | "
                     f"{s['hit_rate']:.0%} | {cpu} |")
    for reference, diffs in differences.items():
        lines += ["", f"Mean regret of the {reference} minus each method's, on the same cells "
                  "(negative: the recommender is better), with a 95% bootstrap interval over tasks:", "",
                  "| method | difference | 95% interval |", "|---|---:|---|"]
        lines += [f"| {name} | {signed(d['mean'])} | {signed(d['low'])} to {signed(d['high'])} |"
                  for name, d in diffs.items()]
    arms = sorted({a for c in cells for a in table[c]})
    lines += ["", "| task | size | seeds | " + " | ".join(arms) + " | best | recommended (LOTO) |",
              "|---|---:|---:|" + "---:|" * len(arms) + "---|---|"]
    for cell in cells:
        row = table[cell]
        best = max(row, key=lambda a: row[a]["acc"])
        rec = picks_by_method.get("recommender (LOTO)", {}).get(cell, "-")
        accs = " | ".join(f"{100 * row[a]['acc']:.1f}" if a in row else "-" for a in arms)
        seeds = max(a["seeds"] for a in row.values())
        lines.append(f"| {cell[0]} | {cell[1]} | {seeds} | {accs} | {best} | {rec} |")
    pick_columns = [(title, row) for row, (title, _) in FROZEN_ROWS.items()]
    pick_columns += [("current pick", CURRENT), ("LOTO pick", "recommender (LOTO)")]
    lines += ["", "What the recommender measured (train + val images only) and what it picked:", "",
              "| task | size | probe acc. | kappa | similarity score | shift left after early AdaBN | cell | "
              + " | ".join(title for title, _ in pick_columns) + " |",
              "|---|---:|---:|---:|---:|---:|---|" + "---|" * len(pick_columns)]
    for cell in cells:
        sim = signals[cell]["similarity"]
        d = decide(sim, signals[cell]["stats"], Thresholds())
        after = sim.get("shift_later_after_early_adabn")
        picks = " | ".join(picks_by_method[method][cell] for _, method in pick_columns)
        lines.append(
            f"| {cell[0]} | {cell[1]} | {sim['probe_accuracy']:.3f} | {sim['kappa']:.2f} | {d.score:.2f} | "
            f"{'-' if after is None else f'{after:.2f}'} | {d.amount}, {d.similarity} | {picks} |")
    lines += ["", "Thresholds chosen leave-one-task-out (each used only on the task named):", ""]
    for task, thr in chosen.items():
        lines.append(f"- {task}: " + ", ".join(f"{k}={v:g}" for k, v in thr.items()))
    return "\n".join(lines)


# The committed reports that hold the benchmark's current figures, and what each adds to
# report_argv's options. Each scores every oracle CSV but the pilot's, with leave-one-task-
# out ties anchored at LITTLE_BELOW_200, fixed before any 200-per-class cell ran.
CURRENT_REPORTS = {
    "regret": [],
    "regret-200": ["--sizes", "200"],
    "regret-400": ["--sizes", "400"],
    "regret-heldout5": ["--tasks", "textures-pixelate", "grey-crops-pixelate", "photos-dither"],
}


def report_argv(results: Path, name: str, out: Path) -> list[str]:
    """The arguments that write ``CURRENT_REPORTS[name]`` to OUT.md and OUT.json, from the
    oracle CSVs and signals under ``results``."""
    csvs = sorted(str(p) for p in results.glob("oracle*.csv") if "pilot" not in p.name)
    return ["--csv", *csvs, "--signals-dir", str(results / "signals"), "--loto-anchor", "session-7",
            *CURRENT_REPORTS[name], "--out", str(out)]


def check(results: Path) -> list[str]:
    """Rewrites every report of CURRENT_REPORTS to a scratch folder; the names of the files
    under ``results`` that are missing or differ by a byte. A frozen rule set that followed
    a change of finetune.recommend.Thresholds, or a change to the scoring, shows here."""
    differ = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in CURRENT_REPORTS:
            out = Path(scratch) / name
            with contextlib.redirect_stdout(io.StringIO()):
                main(report_argv(results, name, out))
            for suffix in (".md", ".json"):
                committed = results / f"{name}{suffix}"
                if not committed.is_file() or committed.read_bytes() != out.with_suffix(suffix).read_bytes():
                    differ.append(committed.name)
    return differ


def main(argv: list[str] | None = None) -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Regret of the recommender and the baselines.")
    parser.add_argument("--csv", nargs="+", default=[str(here / "results" / "oracle.csv")],
                        help="oracle CSV(s); several when the sweep ran as parallel processes")
    parser.add_argument("--signals-dir", default=str(here / "results" / "signals"))
    parser.add_argument("--out", default=str(here / "results" / "regret"),
                        help="writes OUT.md and OUT.json")
    parser.add_argument("--tasks", nargs="+", help="score only these tasks' cells (a held-out set); "
                        "the other tasks still calibrate the LOTO thresholds and the 2x2 medians")
    parser.add_argument("--sizes", nargs="+", type=int,
                        help="score only the cells of these sizes (images per class); every cell calibrates")
    parser.add_argument("--loto-anchor", choices=["current", *FROZEN_DEFAULTS], default="current",
                        help="the defaults that leave-one-task-out ties go to (the grid value nearest "
                        "them). The current defaults were calibrated on every task, the one left out "
                        "included, so through ties they can carry its own cells' results into its fold; "
                        "a frozen set from before those cells ran cannot")
    parser.add_argument("--check", action="store_true",
                        help="rewrite the committed reports of CURRENT_REPORTS to a scratch folder "
                        "and exit 1 if any differs from results/ by a byte (the other options are ignored)")
    args = parser.parse_args(argv)
    if args.check:
        differ = check(here / "results")
        print("every committed report regenerates byte for byte" if not differ else
              "differ from what the committed CSVs and signals give now: " + ", ".join(differ))
        sys.exit(1 if differ else 0)

    def wanted(cell: Cell) -> bool:
        return (not args.tasks or cell[0] in args.tasks) and (not args.sizes or cell[1] in args.sizes)

    table = load_oracle(read_rows([Path(p) for p in args.csv]))
    signals = load_signals(Path(args.signals_dir), sorted(table))
    # A cell counts once every core arm has run on it: the best of the arms a deadline let
    # finish is not the cell's oracle, so a cell cut short neither calibrates nor is scored.
    # It is listed apart with the arms that did run (incomplete_cells).
    incomplete = {c: arms for c, arms in table.items() if not CORE_ARMS <= set(arms)}
    table = {c: arms for c, arms in table.items() if c not in incomplete}
    cells = sorted(c for c in table if c in signals)
    if not cells:
        sys.exit(f"No cell of {', '.join(args.csv)} ran every core arm and has signals in "
                 f"{args.signals_dir}; run oracle.py first.")

    picks_by_method: dict[str, dict[Cell, str]] = {}
    anchor = Thresholds() if args.loto_anchor == "current" else FROZEN_DEFAULTS[args.loto_anchor]
    picks_by_method["recommender (LOTO)"], chosen = leave_one_task_out(table, signals, cells, base=anchor)
    picks_by_method["recommender (LOTO, pre-registered grid)"], _ = leave_one_task_out(
        table, signals, cells, PREREGISTERED, PRE_SWEEP)
    for row, (_, thresholds) in FROZEN_ROWS.items():
        picks_by_method[row] = {c: recommended_arm(signals[c], thresholds) for c in cells}
    picks_by_method[CURRENT] = {c: recommended_arm(signals[c], Thresholds()) for c in cells}
    for arm in ("linear", "full", "lp-ft"):
        picks_by_method[f"always {arm}"] = {c: arm for c in cells}
    picks_by_method["2x2 rule (median split)"] = two_by_two(table, signals, cells)
    one_epoch, probe_cpu = one_epoch_each(table, cells)
    picks_by_method["one epoch each, keep the best"] = one_epoch
    # Every method is scored on the same cells: those where each method's pick was run
    # (a partial sweep may lack an arm some method picks). The others are listed.
    scored = [c for c in cells if all(c in p and p[c] in table[c] for p in picks_by_method.values())
              and wanted(c)]
    unscored = {f"{t}-{s}": sorted({p[(t, s)] for p in picks_by_method.values()
                                   if (t, s) in p and p[(t, s)] not in table[(t, s)]})
                for t, s in cells if (t, s) not in scored and wanted((t, s))}
    results = {}
    for name, picks in picks_by_method.items():
        extra = probe_cpu if name.startswith("one epoch") else None
        common = {c: a for c, a in picks.items() if c in scored}
        results[name] = summary(regret_of(table, common), common, table, extra)
    differences = {ref: paired_differences(table, picks_by_method, ref, scored)
                   for ref in ("recommender (LOTO)", CURRENT)}
    shown = [c for c in cells if wanted(c)]
    text = markdown(results, table, picks_by_method, shown, {t: v for t, v in chosen.items()
                                                              if any(c[0] == t for c in shown)},
                    signals, differences)
    text += f"\n\nLeave-one-task-out ties went to the grid values nearest the {args.loto_anchor} defaults."
    floor = noise_floor(table, scored)
    if floor:
        others = {name: statistics.mean(regret_of(table, {c: picks_by_method[name][c] for c in floor}).values())
                  for name in ("always lp-ft", CURRENT, "recommender (LOTO)")}
        results["noise floor"] = {"cells": len(floor), "mean": statistics.mean(floor.values()),
                                  "worst": max(floor.values()), "same_cells": others}
        text += (f"\n\nNoise floor, on the {len(floor)} cells with two seeds or more: an arm chosen on the "
                 f"other seeds' test accuracy, scored on the seed left out, loses "
                 f"{statistics.mean(floor.values()):.2f} points on average (worst {max(floor.values()):.2f}). "
                 "On the same cells: " + ", ".join(f"{n} {v:.2f}" for n, v in others.items()) + ".")
    cut_short = incomplete_cells({c: a for c, a in incomplete.items() if wanted(c)}, signals)
    if cut_short:
        text += ("\n\nCells not complete yet (a core arm has not run), left out of the calibration and of "
                 "every score above; the current defaults' pick against always-lp-ft where both ran:\n\n"
                 "| task | size | arms run (test %) | current pick | pick minus lp-ft |\n|---|---:|---|---|---:|")
        for (task, size), p in cut_short.items():
            ran = ", ".join(f"{arm} {100 * acc:.1f}" for arm, acc in p["arms"].items())
            diff = "-" if p["pick_minus_lpft"] is None else f"{p['pick_minus_lpft']:+.1f}"
            text += f"\n| {task} | {size} | {ran} | {p['current_pick'] or '-'} | {diff} |"
    if unscored:
        text += "\n\nCells left out of every method's score (a method picked an arm the sweep did not run):\n\n"
        text += "\n".join(f"- {cell}: {', '.join(arms)}" for cell, arms in unscored.items())
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "results": results,
        "differences": differences,
        "picks": {name: {f"{t}-{s}": a for (t, s), a in picks.items()} for name, picks in picks_by_method.items()},
        "thresholds_loto": chosen,
        "loto_anchor": args.loto_anchor,
        "unscored_cells": unscored,
        "incomplete_cells": {f"{t}-{s}": p for (t, s), p in cut_short.items()},
        "oracle": {f"{t}-{s}": arms for (t, s), arms in table.items()},
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()

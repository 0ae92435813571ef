"""Fit the recommender's accuracy forecast on the measured tasks, and score it held out.

    cd benchmarks/recommend
    python forecast.py                 # fit, print the leave-one-task-out table, write both files
    python forecast.py --check         # the committed files regenerate byte for byte

The model (finetune/recommend/forecast.py applies it): for each benchmark arm (linear,
lp-ft, partial-1, partial-2, full, surgical-1), the test accuracy minus the penultimate
probe's leave-one-out accuracy is a linear function of three signals,

    gain = b0 + b1 * (1 - probe) + b2 * log2(images per class) + b3 * shift after early AdaBN

fit by ridge least squares (a small penalty on b1..b3, none on b0) over every cell of
the oracle table (the test accuracy at the learning rate best on validation, averaged
over seeds). The interval is the 10th-90th percentile of the leave-one-task-out
residuals; the error reported is the leave-one-task-out mean absolute error: every
size of a task is held out together, so no cell is scored by a model that saw its task.

Writes ../../finetune/recommend/forecast_coefficients.py (the fitted numbers, as data)
and results/forecast.md (the held-out error per arm against the probe alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from regret import arm_of as benchmark_arm
from regret import load_oracle, load_signals, read_rows, regret_of, summary

from finetune.recommend import Thresholds, decide
from finetune.recommend.forecast import arm_of, features  # what a live recommendation uses
from finetune.recommend.options import CHEAP_MARGIN, CHEAP_RATIO

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COEFFICIENTS = HERE.parents[1] / "finetune" / "recommend" / "forecast_coefficients.py"
ARMS = ("linear", "lp-ft", "partial-1", "partial-2", "full", "surgical-1")
FEATURES = ("1", "headroom", "log2_per_class", "shift_after_early_adabn")
PENALTY = 0.1  # ridge strength on the slopes (x cells): of 1e-3, 1e-2 and 0.1, the lowest held-out error
INTERVAL = (10, 90)  # percentiles of the held-out residuals


def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge least squares with an unpenalised intercept (column 0)."""
    penalty = PENALTY * len(y) * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def dataset(csvs: list[Path]) -> tuple[list, dict, dict]:
    table = load_oracle(read_rows(csvs))
    cells = sorted(c for c in table if all(a in table[c] for a in ARMS))
    return cells, table, load_signals(RESULTS / "signals", cells)


def evaluate(cells: list, table: dict, signals: dict) -> dict[str, dict]:
    """Per arm: coefficients on every cell; held-out residuals, MAE, and the probe alone's MAE."""
    x = np.array([features(signals[c]["similarity"], signals[c]["stats"]) for c in cells])
    probe = np.array([signals[c]["similarity"]["probe_accuracy"] for c in cells])
    tasks = np.array([c[0] for c in cells])
    out = {}
    for arm in ARMS:
        acc = np.array([table[c][arm]["acc"] for c in cells])
        y = acc - probe
        held = np.empty_like(y)
        for task in np.unique(tasks):
            rows = tasks == task
            held[rows] = x[rows] @ fit(x[~rows], y[~rows])
        residual = y - held  # actual minus forecast
        lo, hi = np.percentile(residual, INTERVAL)
        out[arm] = {"coef": fit(x, y), "interval": (float(lo), float(hi)),
                    "mae": float(np.mean(np.abs(residual))),
                    "mae_probe_alone": float(np.mean(np.abs(acc - probe))),
                    "cells": len(cells), "tasks": len(np.unique(tasks))}
    return out


def held_out_forecasts(cells: list, table: dict, signals: dict) -> dict[str, np.ndarray]:
    """Per arm, each cell's forecast accuracy from the fit that left its task out."""
    x = np.array([features(signals[c]["similarity"], signals[c]["stats"]) for c in cells])
    probe = np.array([signals[c]["similarity"]["probe_accuracy"] for c in cells])
    tasks = np.array([c[0] for c in cells])
    out = {}
    for arm in ARMS:
        y = np.array([table[c][arm]["acc"] for c in cells]) - probe
        held = np.empty_like(y)
        for task in np.unique(tasks):
            rows = tasks == task
            held[rows] = x[rows] @ fit(x[~rows], y[~rows])
        out[arm] = probe + held
    return out


def choice_regret(cells: list, table: dict, signals: dict, result: dict) -> dict[str, dict]:
    """regret.py's summary (mean and worst regret, mean CPU s over the cells run on a CPU)
    of three ways to choose, each from held-out forecasts: the grid's pick (decide, shipped
    thresholds); the grid's pick replaced by an arm CHEAP_RATIO times cheaper whose forecast
    is within the pick's held-out error (what `recommend` does without a budget), and
    within half of it (the stricter alternative); the best forecast."""
    held = held_out_forecasts(cells, table, signals)
    picks: dict[str, dict] = {"grid": {}, "grid, cheaper within the error": {},
                              "grid, cheaper within half the error": {}, "best forecast": {}}
    for i, cell in enumerate(cells):
        d = decide(signals[cell]["similarity"], signals[cell]["stats"], Thresholds())
        grid = benchmark_arm(d.strategy, d.unfreeze)  # partial-3 where the grid asks for it
        fitted = arm_of(d.strategy, d.unfreeze)  # the fitted arm that forecasts it
        cpu = {a: table[cell][a]["cpu"] or float("inf") for a in {*ARMS, grid}}
        picks["grid"][cell] = grid
        for rule, margin in (("grid, cheaper within the error", CHEAP_MARGIN),
                             ("grid, cheaper within half the error", 0.5 * CHEAP_MARGIN)):
            cheaper = [a for a in ARMS if cpu[a] * CHEAP_RATIO <= cpu[grid]
                       and held[a][i] >= held[fitted][i] - margin * result[fitted]["mae"]]
            picks[rule][cell] = min(cheaper, key=cpu.get) if cheaper else grid
        picks["best forecast"][cell] = max(ARMS, key=lambda a: held[a][i])
    return {rule: summary(regret_of(table, p), p, table) for rule, p in picks.items()}


def coefficients_source(result: dict, csvs: list[Path]) -> str:
    lines = ['"""The accuracy forecast\'s fitted numbers: written by benchmarks/recommend/forecast.py',
             "from the oracle tables in benchmarks/recommend/results (do not edit by hand; rerun it).",
             "",
             "Per benchmark arm: test accuracy - probe accuracy = coef . (" + ", ".join(FEATURES) + ");",
             "interval: the 10th-90th percentile of the leave-one-task-out residuals; mae: their mean",
             'absolute value (held out), in accuracy (0-1)."""',
             "",
             f"FEATURES = {FEATURES!r}",
             f"SOURCES = {tuple(p.name for p in csvs)!r}",
             "ARMS = {"]
    for arm, r in result.items():
        coef = ", ".join(f"{v:.5f}" for v in r["coef"])
        lines.append(f'    "{arm}": {{"coef": ({coef}), "interval": ({r["interval"][0]:.4f}, '
                     f'{r["interval"][1]:.4f}), "mae": {r["mae"]:.4f}, "cells": {r["cells"]}}},')
    lines.append("}")
    return "\n".join(lines) + "\n"


def report(result: dict, csvs: list[Path], choices: dict[str, dict]) -> str:
    first = next(iter(result.values()))
    lines = ["# The accuracy forecast, held out", "",
             "`python forecast.py` (benchmarks/recommend/): leave-one-task-out over "
             f"{first['cells']} cells of {first['tasks']} tasks (every size of a task held out "
             "together). Points of test accuracy.", "",
             "| arm | forecast MAE | 80% interval (residual) | probe alone, MAE |",
             "|---|---:|---|---:|"]
    for arm, r in result.items():
        lo, hi = r["interval"]
        lines.append(f"| {arm} | {100 * r['mae']:.2f} | {100 * lo:+.1f} .. {100 * hi:+.1f} | "
                     f"{100 * r['mae_probe_alone']:.2f} |")
    lines += ["", "Choosing with held-out forecasts (regret: points below the cell's best arm; CPU "
              "seconds of the chosen arm's run, over the cells run on a CPU):", "",
              "| choice | mean regret | worst | CPU s |", "|---|---:|---:|---:|"]
    for rule, r in choices.items():
        lines.append(f"| {rule} | {r['mean']:.2f} | {r['worst']:.2f} | {r['mean_cpu_s']:.0f} |")
    lines += ["", "Sources: " + ", ".join(p.name for p in csvs) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    args = parser.parse_args(argv)
    csvs = sorted(p for p in RESULTS.glob("oracle*.csv") if "pilot" not in p.name)
    cells, table, signals = dataset(csvs)
    result = evaluate(cells, table, signals)
    choices = choice_regret(cells, table, signals, result)
    outputs = {COEFFICIENTS: coefficients_source(result, csvs),
               RESULTS / "forecast.md": report(result, csvs, choices)}
    if args.check:
        stale = [str(p) for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
        if stale:
            sys.exit(f"Stale: {', '.join(stale)}; rerun python forecast.py")
        return
    for path, text in outputs.items():
        path.write_text(text)
    print(outputs[RESULTS / "forecast.md"])


if __name__ == "__main__":
    main()

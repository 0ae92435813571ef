"""The benchmark's scoring (regret.py): learning rates chosen on validation, regret against
the best arm, thresholds calibrated without the task being scored, every method scored on
the same cells, and the earlier rule sets frozen as they shipped.

    pytest benchmarks/recommend        # outside the package's suite (tests/)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import regret

SIGNALS = Path(regret.__file__).resolve().parent / "results" / "signals"


def _row(task, size, arm, lr, val, test, seed=0, cpu=1.0):
    return {"task": task, "size": str(size), "arm": arm, "seed": str(seed), "lr": str(lr),
            "val_accuracy": str(val), "val_accuracy_epoch1": "", "test_accuracy": str(test),
            "cpu_s": str(cpu), "epochs": "5", "status": "ok"}


# The core arms, each at its default learning rate (listed in the order rows are made).
CORE_LRS = {"linear": 1e-2, "lp-ft": 3e-4, "partial-1": 1e-3, "partial-2": 1e-3, "full": 1e-3, "surgical-1": 1e-3}


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_learning_rate_is_chosen_on_validation_never_on_test():
    rows = [_row("t", 5, "full", 1e-3, val=0.9, test=0.5), _row("t", 5, "full", 3e-4, val=0.8, test=0.99),
            _row("t", 5, "full", 1e-3, val=0.7, test=0.6, seed=1),
            _row("t", 5, "full", 3e-4, val=0.75, test=0.8, seed=1)]
    table = regret.load_oracle(rows)
    # seed 0 keeps lr 1e-3 (val 0.9, test 0.5), seed 1 lr 3e-4 (val 0.75, test 0.8)
    assert table[("t", 5)]["full"]["acc"] == pytest.approx((0.5 + 0.8) / 2)
    assert table[("t", 5)]["full"]["seeds"] == 2


def test_regret_is_the_best_arm_minus_the_pick_in_points():
    table = {("t", 5): {"linear": {"acc": 0.90}, "full": {"acc": 0.95}}}
    assert regret.regret_of(table, {("t", 5): "linear"}) == {("t", 5): pytest.approx(5.0)}
    assert regret.regret_of(table, {("t", 5): "full"}) == {("t", 5): 0.0}
    assert regret.regret_of(table, {("t", 5): "lp-ft"}) == {}  # not run: not scored


def test_thresholds_are_calibrated_without_the_task_they_decide(monkeypatch):
    """A toy decision: linear below `little_per_class` images per class, full above.
    Tasks b and c want the line at 25 (full wins at 30/class); task a alone would want
    it at 100. Leave-one-task-out must give a the line the other two chose."""
    monkeypatch.setattr(regret, "GRID", {"little_per_class": (10.0, 25.0, 50.0, 100.0)})

    def toy(rec, thr):
        return "linear" if rec["per_class"] < thr.little_per_class else "full"

    monkeypatch.setattr(regret, "recommended_arm", toy)
    cells = [("a", 30), ("a", 60), ("b", 30), ("b", 60), ("c", 30), ("c", 60)]
    signals = {c: {"per_class": c[1]} for c in cells}
    best_full = {"linear": {"acc": 0.80}, "full": {"acc": 0.90}}
    best_linear = {"linear": {"acc": 0.90}, "full": {"acc": 0.80}}
    table = {c: (best_linear if c[0] == "a" else best_full) for c in cells}
    base = regret.Thresholds(little_per_class=50.0)
    picks, chosen = regret.leave_one_task_out(table, signals, cells, base=base)
    assert chosen["a"]["little_per_class"] <= 25  # from b and c: full at 30 and 60
    assert picks[("a", 30)] == picks[("a", 60)] == "full"  # so a, scored, has regret 10
    # For b, a and c disagree (every line costs a mean of 5 points): ties keep the base.
    assert chosen["b"]["little_per_class"] == chosen["c"]["little_per_class"] == 50.0
    # Calibrated on all three tasks (a wrong protocol), a's own wish would weigh in:
    everything = regret.calibrate(table, signals, [c for c in cells if c[0] == "a"], base)
    assert everything.little_per_class == 100.0


def test_one_epoch_baseline_picks_by_first_epoch_validation():
    table = {("t", 20): {
        "linear": {"acc": 0.8, "val": 0.70, "val1": 0.5, "cpu": 2.0, "epochs": 100},
        "full": {"acc": 0.9, "val": 0.95, "val1": 0.60, "cpu": 100.0, "epochs": 10},
        "lp-ft": {"acc": 0.85, "val": 0.90, "val1": 0.75, "cpu": 60.0, "epochs": 10},
    }}
    picks, probe_cpu = regret.one_epoch_each(table, [("t", 20)])
    assert picks == {("t", 20): "lp-ft"}  # 0.75 after one epoch beats linear's final 0.70
    assert probe_cpu[("t", 20)] == pytest.approx(2.0 + 100.0 / 10 + 60.0 / 10)


def test_paired_differences_resample_whole_tasks():
    """Task a: the recommender (linear) loses 10 points on both sizes against full;
    task b: it wins 10 on both. Mean difference 0; resampling tasks, a draw holds both
    of a task's cells or neither, so every draw's mean is -10, 0 or +10."""
    cells = [("a", 5), ("a", 20), ("b", 5), ("b", 20)]
    table = {c: ({"linear": {"acc": 0.8}, "full": {"acc": 0.9}} if c[0] == "a"
                 else {"linear": {"acc": 0.9}, "full": {"acc": 0.8}}) for c in cells}
    picks = {"rec": {c: "linear" for c in cells}, "always full": {c: "full" for c in cells}}
    diffs = regret.paired_differences(table, picks, "rec", cells, draws=2000, seed=1)
    assert list(diffs) == ["always full"]
    d = diffs["always full"]
    assert d["mean"] == pytest.approx(0.0)
    assert d["low"] == pytest.approx(-10.0) and d["high"] == pytest.approx(10.0)
    # The same seed gives the same interval (regret.md regenerates byte for byte).
    assert regret.paired_differences(table, picks, "rec", cells, draws=2000, seed=1) == diffs


def test_a_difference_that_cancels_reads_plus_zero():
    """Two cells of one task, -1.25 and +1.25 points apart on 160 test images, cancel in
    float arithmetic to about -6e-15: the report says +0.00, not -0.00, and real
    differences keep their sign."""
    cancelled = (100 * (141 / 160 - 143 / 160) + 100 * (142 / 160 - 140 / 160)) / 2
    assert cancelled < 0 and f"{cancelled:+.2f}" == "-0.00"
    assert regret.signed(cancelled) == "+0.00"
    assert regret.signed(-0.0) == "+0.00"
    assert regret.signed(-0.004) == "-0.00"  # a real, small loss
    assert regret.signed(-0.006) == "-0.01"
    assert regret.signed(1.25) == "+1.25"
    assert regret.signed(-3.3) == "-3.30"


def test_a_seed_counts_only_where_it_ran_every_core_arm():
    """Seed 1 was cut short before `full` ran: comparing linear over two seeds with full
    over one would compare different runs, so seed 1 is left out of the cell; an extra
    arm that only seed 0 ran stays (it ran on every seed that counts)."""
    rows = [_row("t", 5, "linear", 1e-2, 0.9, 0.90), _row("t", 5, "full", 1e-3, 0.9, 0.80),
            _row("t", 5, "surgical-3", 1e-3, 0.9, 0.85),
            _row("t", 5, "linear", 1e-2, 0.9, 0.60, seed=1)]
    cell = regret.load_oracle(rows)[("t", 5)]
    assert cell["linear"]["acc"] == pytest.approx(0.90) and cell["linear"]["seeds"] == 1
    assert set(cell) == {"linear", "full", "surgical-3"}
    rows.append(_row("t", 5, "full", 1e-3, 0.9, 0.70, seed=1))  # seed 1 complete: both count
    cell = regret.load_oracle(rows)[("t", 5)]
    assert cell["linear"]["acc"] == pytest.approx(0.75) and cell["full"]["acc"] == pytest.approx(0.75)
    assert "surgical-3" not in cell  # seed 0 only, while both seeds count


def test_gpu_rows_count_for_accuracy_not_for_cpu_seconds():
    rows = [_row("t", 5, "linear", 1e-2, 0.9, 0.90, cpu=10.0),
            {**_row("t", 5, "linear", 1e-2, 0.9, 0.80, seed=1, cpu=1.0), "device": "cuda"}]
    cell = regret.load_oracle(rows)[("t", 5)]
    assert cell["linear"]["acc"] == pytest.approx(0.85) and cell["linear"]["cpu"] == pytest.approx(10.0)


def test_noise_floor_picks_on_the_other_seeds_and_scores_on_the_left_out_one():
    """Arm a is best on seed 0, b on seed 1. Left-out seed 0 picks b (better on seed 1)
    and gets 0.80; left-out seed 1 picks a and gets 0.80: the oracle (means 0.85 both)
    loses 5 points to noise although each arm's mean is the best."""
    by_seed_a, by_seed_b = {0: 0.90, 1: 0.80}, {0: 0.80, 1: 0.90}
    table = {("t", 5): {"a": {"acc": 0.85, "by_seed": by_seed_a}, "b": {"acc": 0.85, "by_seed": by_seed_b}},
             ("t", 20): {"a": {"acc": 0.9, "by_seed": {0: 0.9}}}}
    floor = regret.noise_floor(table, [("t", 5), ("t", 20)])
    assert floor == {("t", 5): pytest.approx(5.0)}  # one seed: no floor


def test_sizes_scores_only_those_cells_while_every_cell_calibrates(tmp_path):
    """`--sizes 20` (the held-out size of a new sweep) scores the 20-per-class cells
    alone, on the committed signals of two tasks; the 5-per-class cells are not scored."""
    rows = [_row(task, size, arm, lr, 0.9, 0.5 + 0.05 * i + 0.01 * (size == 20))
            for task in ("digits", "photos") for size in (5, 20) for i, (arm, lr) in enumerate(CORE_LRS.items())]
    path = _write_csv(tmp_path / "oracle.csv", rows)
    out = tmp_path / "regret"
    regret.main(["--csv", str(path), "--sizes", "20", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["results"]["always lp-ft"]["cells"] == 2
    # surgical-1 (listed last) is the best arm everywhere: always-linear loses 25 points.
    assert saved["results"]["always linear"]["mean"] == pytest.approx(25.0)
    text = out.with_suffix(".md").read_text()
    assert "| digits | 20 |" in text and "| digits | 5 |" not in text
    # The signals table has a pick column for every frozen set, then current and LOTO.
    picks = [f"{name} pick" for name in regret.FROZEN_DEFAULTS] + ["early-shift line pick", "current pick",
                                                                    "LOTO pick"]
    assert "| cell | " + " | ".join(picks) + " |" in text


def test_loto_ties_go_to_the_anchor_defaults(tmp_path):
    """Where every arm scores the same, every grid point ties on the other tasks, so each
    fold keeps the grid values of the --loto-anchor set (here the pre-sweep defaults, none
    of which is the current default for all keys)."""
    rows = [_row(task, size, arm, lr, 0.9, 0.5) for task in ("digits", "photos") for size in (5, 20)
            for arm, lr in CORE_LRS.items()]
    path = _write_csv(tmp_path / "oracle.csv", rows)
    out = tmp_path / "regret"
    regret.main(["--csv", str(path), "--loto-anchor", "pre-sweep", "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    expected = {k: getattr(regret.PRE_SWEEP, k) for k in regret.GRID}
    assert saved["loto_anchor"] == "pre-sweep"
    assert saved["thresholds_loto"] == {"digits": expected, "photos": expected}
    assert "ties went to the grid values nearest the pre-sweep defaults" in out.with_suffix(".md").read_text()


def test_a_cell_cut_short_neither_calibrates_nor_is_scored_but_is_listed(tmp_path):
    """photos-20 ran only lp-ft and the current defaults' pick (linear), as a deadline
    can leave a registered cell: its best arm is not its oracle, so it is kept out of
    the calibration and of every score, and listed with the paired pick-minus-lp-ft."""
    rows = [_row(task, size, arm, lr, 0.9, 0.5 + 0.05 * i) for task, size in (("digits", 5), ("digits", 20),
            ("photos", 5)) for i, (arm, lr) in enumerate(CORE_LRS.items())]
    rows += [_row("photos", 20, "lp-ft", 3e-4, 0.9, 0.75), _row("photos", 20, "linear", 1e-2, 0.9, 0.8)]
    path = _write_csv(tmp_path / "oracle.csv", rows)
    out = tmp_path / "regret"
    regret.main(["--csv", str(path), "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["incomplete_cells"]["photos-20"] == {
        "arms": {"linear": 0.8, "lp-ft": 0.75}, "current_pick": "linear", "pick_minus_lpft": pytest.approx(5.0)}
    assert "photos-20" not in saved["oracle"] and "photos-20" not in saved["picks"]["recommender (LOTO)"]
    assert saved["results"]["always lp-ft"]["cells"] == 3
    assert "| photos | 20 | linear 80.0, lp-ft 75.0 | linear | +5.0 |" in out.with_suffix(".md").read_text()


# Each frozen set as it shipped, every field spelled out: a later change to a default in
# finetune.recommend.Thresholds must not move the rows that score the old sets. Keyed by
# the rows' labels in the committed reports.
SHIPPED = {
    "pre-sweep": {"little_per_class": 50.0, "very_little_per_class": 10.0, "little_similar_lpft_error": 1.0,
                  "headroom": 0.02, "lpft_kappa": 0.6, "similar_score": 0.7},
    "session-5": {"little_per_class": 50.0, "very_little_per_class": 0.0, "little_similar_lpft_error": 0.0,
                  "headroom": 0.02, "lpft_kappa": 0.0, "similar_score": 0.7},
    "session-6": {"little_per_class": 100.0, "very_little_per_class": 0.0, "little_similar_lpft_error": 0.0,
                  "headroom": 0.0, "lpft_kappa": 0.0, "similar_score": 0.7},
    "session-7": {"little_per_class": 200.0, "very_little_per_class": 0.0, "little_similar_lpft_error": 0.0,
                  "headroom": 0.0, "lpft_kappa": 0.0, "similar_score": 0.7},
    "session-9": {"little_per_class": 200.0, "very_little_per_class": 0.0, "little_similar_lpft_error": 0.0,
                  "headroom": 0.0, "lpft_kappa": 0.0, "similar_score": 0.5},
}
UNCHANGED_SINCE_THE_PILOT = {"probe_weight": 0.5, "shift_scale": 1.0, "similar_kappa_no_bn": 0.8, "plateau": 0.01,
                             "pixel_shift": 0.3, "pixel_share": 0.4, "semantic_hot": 0.6, "full_share": 0.5,
                             "similar_score_shifted": None}


@pytest.mark.parametrize("label", list(SHIPPED))
def test_frozen_default_sets_do_not_follow_the_current_defaults(label):
    assert regret.FROZEN_DEFAULTS[label].to_json() == {**UNCHANGED_SINCE_THE_PILOT, **SHIPPED[label]}


def test_the_registered_candidate_is_scored_as_frozen(tmp_path):
    """The early-shift line, on the committed signals of two 400-per-class cells: on
    glyphs (shift 1.01 left after early AdaBN, score 0.61) it picks partial-2 where the
    current defaults pick lp-ft; on photos-rotation (0.19, score 0.68) both pick lp-ft.
    Synthetic accuracies: partial-2 best on glyphs by 3 points, lp-ft on rotation."""
    assert regret.EARLY_SHIFT.to_json() == {**UNCHANGED_SINCE_THE_PILOT, **SHIPPED["session-7"],
                                            "similar_score_shifted": 0.5}
    acc = {"glyphs": {"partial-2": 0.93, "lp-ft": 0.90}, "photos-rotation": {"partial-2": 0.80, "lp-ft": 0.85}}
    rows = [_row(task, 400, arm, lr, 0.9, acc[task].get(arm, 0.7)) for task in acc for arm, lr in CORE_LRS.items()]
    out = tmp_path / "regret"
    regret.main(["--csv", str(_write_csv(tmp_path / "oracle.csv", rows)), "--out", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    row = regret.EARLY_SHIFT_ROW
    assert saved["picks"][row] == {"glyphs-400": "partial-2", "photos-rotation-400": "lp-ft"}
    assert saved["picks"][regret.CURRENT] == {"glyphs-400": "lp-ft", "photos-rotation-400": "lp-ft"}
    assert saved["results"][row]["mean"] == pytest.approx(0.0)
    assert saved["results"][regret.CURRENT]["mean"] == pytest.approx(1.5)
    assert saved["differences"][regret.CURRENT][row]["mean"] == pytest.approx(1.5)


def test_check_names_a_committed_report_that_no_longer_regenerates(tmp_path, monkeypatch):
    """`regret.py --check` on a copy of two tasks' results: the report it writes itself
    passes; one byte changed in the committed markdown, and that file is named."""
    results = tmp_path / "results"
    (results / "signals").mkdir(parents=True)
    rows = [_row(task, size, arm, lr, 0.9, 0.5 + 0.05 * i) for task in ("digits", "photos") for size in (5, 20)
            for i, (arm, lr) in enumerate(CORE_LRS.items())]
    _write_csv(results / "oracle-a.csv", rows)
    _write_csv(results / "oracle-pilot.csv", [_row("digits", 5, "full", 1e-3, 0.9, 1.0)])  # never read
    for task in ("digits", "photos"):
        for size in (5, 20):
            name = f"{task}-{size}.json"
            (results / "signals" / name).write_bytes((SIGNALS / name).read_bytes())
    monkeypatch.setattr(regret, "CURRENT_REPORTS", {"regret": [], "regret-20": ["--sizes", "20"]})
    for name in regret.CURRENT_REPORTS:
        regret.main(regret.report_argv(results, name, results / name))
    assert regret.check(results) == []
    text = (results / "regret-20.md").read_text()
    (results / "regret-20.md").write_text(text.replace("| digits | 20 |", "| digits | 21 |"))
    assert regret.check(results) == ["regret-20.md"]

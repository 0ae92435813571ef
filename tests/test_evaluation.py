"""Metrics against hand-worked cases and scikit-learn; the report folder parsed back."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from finetune.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    most_confused_pairs,
)
from finetune.evaluation.report import learning_curves_figure, phase_changes, write_report

REPO = Path(__file__).resolve().parents[1]

# Six samples, three classes. Predictions (argmax): 0 0 1 | 1 2 | 2.
#   confusion [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
#   class a: P = 2/2, R = 2/3, F1 = 0.8;  b: P = 1/2, R = 1/2, F1 = 0.5;
#   class c: P = 1/2, R = 1/1, F1 = 2/3.  macro-F1 = 59/90, balanced acc = 13/18.
CLASSES3 = ["a", "b", "c"]
Y3 = np.array([0, 0, 0, 1, 1, 2])
P3 = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.3, 0.5, 0.2],
        [0.2, 0.7, 0.1],
        [0.1, 0.4, 0.5],
        [0.1, 0.2, 0.7],
    ]
)
TRUE_CLASS_PROBS3 = [0.8, 0.6, 0.3, 0.7, 0.4, 0.7]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------- metrics


def test_three_class_metrics_match_hand_computation_and_sklearn():
    m = classification_metrics(Y3, P3, CLASSES3)

    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    assert m["balanced_accuracy"] == pytest.approx(13 / 18)
    assert m["num_samples"] == 6
    assert m["top5_accuracy"] is None
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    expected = {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1)}
    for label, (p, r, f, s) in expected.items():
        row = m["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f))
        assert row["support"] == s
    assert m["loss"] == pytest.approx(-np.mean(np.log(TRUE_CLASS_PROBS3)))

    y_pred = P3.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(Y3, y_pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y3, y_pred))
    assert m["loss"] == pytest.approx(log_loss(Y3, P3, labels=[0, 1, 2]))
    precision, recall, f1, _ = precision_recall_fscore_support(Y3, y_pred)
    assert [m["per_class"][c]["recall"] for c in CLASSES3] == pytest.approx(recall)
    assert [m["per_class"][c]["precision"] for c in CLASSES3] == pytest.approx(precision)


def test_metrics_are_plain_json():
    m = classification_metrics(Y3, P3, CLASSES3)
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert type(m["accuracy"]) is float and type(m["num_samples"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert type(m["per_class"]["a"]["support"]) is int


def test_given_loss_is_kept():
    assert classification_metrics(Y3, P3, CLASSES3, loss=0.125)["loss"] == 0.125


def test_loss_is_clipped_to_stay_finite():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    m = classification_metrics(np.array([1, 0]), probs, ["x", "y"])
    assert m["loss"] == pytest.approx((-math.log(1e-12) - math.log(0.5)) / 2)


def test_top5_is_none_up_to_five_classes():
    probs = softmax(np.random.default_rng(0).normal(size=(20, 5)))
    y = np.arange(20) % 5
    assert classification_metrics(y, probs, list("abcde"))["top5_accuracy"] is None


def test_top5_seven_classes_with_planted_ranks():
    # Row i puts the true class (0) at rank 1, 2, 5 and 7: top-1 1/4, top-5 3/4.
    ranks = [0, 1, 4, 6]
    probs = np.zeros((4, 7))
    for i, rank in enumerate(ranks):
        order = list(range(1, 7))
        order.insert(rank, 0)  # class order from most to least likely
        probs[i, order] = np.linspace(0.25, 0.04, 7)
    probs /= probs.sum(1, keepdims=True)
    y = np.zeros(4, dtype=int)
    m = classification_metrics(y, probs, [f"c{i}" for i in range(7)])
    assert m["accuracy"] == pytest.approx(0.25)
    assert m["top5_accuracy"] == pytest.approx(0.75)
    assert m["top5_accuracy"] == pytest.approx(top_k_accuracy_score(y, probs, k=5, labels=range(7)))


def test_absent_classes_are_reported_without_warnings():
    # a: P 1, R 1/2, F1 2/3; b: perfect; c: predicted once, never true (P 0, F1 0);
    # d: neither true nor predicted, so it is listed but not averaged.
    y = np.array([0, 0, 1, 1])
    probs = np.array(
        [
            [0.9, 0.05, 0.03, 0.02],
            [0.2, 0.1, 0.6, 0.1],
            [0.1, 0.8, 0.05, 0.05],
            [0.1, 0.7, 0.1, 0.1],
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, probs, ["a", "b", "c", "d"])
    assert m["confusion_matrix"] == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx(5 / 9)
    assert m["balanced_accuracy"] == pytest.approx(3 / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))


def test_single_sample():
    m = classification_metrics(np.array([2]), np.array([[0.1, 0.2, 0.7]]), CLASSES3)
    assert m["accuracy"] == 1.0
    assert m["balanced_accuracy"] == 1.0
    assert m["macro_f1"] == 1.0
    assert m["confusion_matrix"] == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert m["ece"] == pytest.approx(0.3)
    assert m["loss"] == pytest.approx(-math.log(0.7))


def test_integral_float_labels_are_accepted():
    m = classification_metrics(Y3.astype(np.float32), P3, CLASSES3)
    assert m["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ("y", "probs", "classes", "message"),
    [
        (Y3, np.random.default_rng(0).normal(size=(6, 3)), CLASSES3, "softmax"),
        (np.array([0]), np.array([[1.5, -0.5]]), ["x", "y"], "softmax"),
        (Y3, P3 * 3, CLASSES3, "softmax"),
        (Y3, P3, ["a", "b"], "2 classes"),
        (Y3[:5], P3, CLASSES3, "6 rows"),
        (np.array([0, 3]), P3[:2], CLASSES3, "class index 3"),
        (Y3 + 0.5, P3, CLASSES3, "integer"),
        (Y3, P3, ["a", "b", "a"], "unique"),
        (np.array([], dtype=int), np.zeros((0, 3)), CLASSES3, "empty"),
        (Y3, np.where(np.eye(6, 3) > 0, np.nan, P3), CLASSES3, "NaN"),
    ],
)
def test_bad_inputs_raise_with_the_reason(y, probs, classes, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, probs, classes)


def test_ece_perfectly_calibrated_is_zero():
    # 10 samples at confidence 0.7 with 7 right, 10 at 0.9 with 9 right.
    probs = np.array([[0.7, 0.2, 0.1]] * 10 + [[0.05, 0.9, 0.05]] * 10)
    y = np.array([0] * 7 + [1] * 3 + [1] * 9 + [2])
    assert expected_calibration_error(y, probs) == pytest.approx(0.0, abs=1e-12)


def test_ece_over_confident():
    probs = np.array([[0.99, 0.01]] * 10)
    y = np.array([0, 1] * 5)
    assert expected_calibration_error(y, probs) == pytest.approx(0.49)
    # Two bins: conf 0.9 and 50% right, conf 0.6 and all right; each holds half.
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    y = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    assert expected_calibration_error(y, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    # One bin: |accuracy - mean confidence| = |0.75 - 0.75|.
    assert expected_calibration_error(y, probs, n_bins=1) == pytest.approx(0.0, abs=1e-12)
    assert classification_metrics(y, probs, ["x", "y"])["ece"] == pytest.approx(0.4)


def test_ece_rejects_zero_bins():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(Y3, P3, n_bins=0)


def test_most_confused_pairs_are_directional_and_sorted():
    cm = [[5, 3, 0], [1, 4, 7], [0, 3, 2]]
    assert most_confused_pairs(cm, CLASSES3, k=3) == [("b", "c", 7), ("a", "b", 3), ("c", "b", 3)]
    assert most_confused_pairs([[2, 0], [0, 3]], ["x", "y"]) == []
    with pytest.raises(ValueError, match="3 classes"):
        most_confused_pairs([[1, 0], [0, 1]], CLASSES3)


# ------------------------------------------------------------------- report

HISTORY = [
    {
        "epoch": 0,
        "phase": "linear",
        "train_loss": 1.2,
        "val_loss": 1.0,
        "val_accuracy": 0.5,
        "lr": 1e-2,
    },
    {
        "epoch": 1,
        "phase": "linear",
        "train_loss": 0.9,
        "val_loss": 0.8,
        "val_accuracy": 0.6,
        "lr": 1e-2,
    },
    {
        "epoch": 2,
        "phase": "full",
        "train_loss": 0.6,
        "train_accuracy": 0.8,
        "val_loss": 0.7,
        "val_accuracy": 0.7,
        "lr": 1e-3,
    },
    {
        "epoch": 3,
        "phase": "full",
        "train_loss": 0.4,
        "train_accuracy": 0.9,
        "val_loss": 0.6,
        "val_accuracy": 0.75,
        "lr": 5e-4,
    },
]
SKIPPED = ["cats/broken.jpg", "dogs/truncated.png"]
EXPECTED_FILES = [
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "learning_curves.png",
    "per_class.csv",
    "summary.md",
    "skipped_files.txt",
]


def run_metrics(test: dict, val: dict | None = None, classes=CLASSES3, **extra) -> dict:
    metrics = {
        "backbone": "resnet18",
        "strategy": "lp-ft",
        "num_classes": len(classes),
        "trainable_params": 11_689_512,
        "total_params": 11_689_512,
        "train_time_s": 75.4,
        "images_per_s": 123.4,
        "weights_source": "file /tmp/resnet18.pth",
        "val": val if val is not None else test,
        "test": test,
        "skipped_files": list(SKIPPED),
    }
    metrics.update(extra)
    return metrics


@pytest.fixture
def metrics3() -> dict:
    val = classification_metrics(
        np.array([0, 1, 2, 2]),
        np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]]),
        CLASSES3,
    )
    return run_metrics(classification_metrics(Y3, P3, CLASSES3), val)


def test_write_report_writes_every_file(tmp_path, metrics3):
    paths = write_report(
        tmp_path, metrics3, HISTORY, CLASSES3, config={"lr": 1e-3, "data": tmp_path}
    )
    report_dir = tmp_path / "report"
    assert paths == [report_dir / name for name in EXPECTED_FILES]
    # Nothing else, in particular no temporary files left behind.
    assert sorted(p.name for p in report_dir.iterdir()) == sorted(EXPECTED_FILES)

    for name in EXPECTED_FILES[:3]:
        with Image.open(report_dir / name) as img:
            assert img.format == "PNG"
            width, height = img.size
            pixels = np.asarray(img.convert("L"), dtype=np.float64)
        assert 400 <= width <= 3000 and 300 <= height <= 3000, (name, img.size)
        assert pixels.std() > 10, f"{name} looks blank"
    with Image.open(report_dir / "learning_curves.png") as img:
        assert img.size[0] > 2 * img.size[1]  # three panels side by side

    assert (report_dir / "skipped_files.txt").read_text().splitlines() == SKIPPED


def test_per_class_csv_matches_metrics(tmp_path, metrics3):
    write_report(tmp_path, metrics3, HISTORY, CLASSES3)
    with open(tmp_path / "report" / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == CLASSES3
    for row in rows:
        expected = metrics3["test"]["per_class"][row["label"]]
        for key in ("precision", "recall", "f1"):
            assert float(row[key]) == expected[key]
        assert int(row["support"]) == expected["support"]
    assert float(rows[0]["f1"]) == pytest.approx(0.8)


def test_summary_is_readable(tmp_path, metrics3):
    metrics3["phases"] = [
        {"name": "linear", "epochs": 2},
        {"name": "full", "epochs": 2, "lr": 1e-3},
    ]
    metrics3["split_sizes"] = {"train": 1234, "val": 4, "test": 6}
    write_report(tmp_path, metrics3, HISTORY, CLASSES3, config={"lr": 1e-3, "data": tmp_path})
    text = (tmp_path / "report" / "summary.md").read_text()

    assert "`resnet18`" in text and "`lp-ft`" in text
    assert "file /tmp/resnet18.pth" in text
    assert "train 1,234, val 4, test 6" in text
    assert "11,689,512 trainable of 11,689,512 (100.00%)" in text
    assert "75.4 s (0:01:15)" in text and "123.4 images/s" in text
    # val accuracy 3/4, test accuracy 4/6; macro-F1 59/90; 3 classes, so no top-5 row.
    assert "| Accuracy | 75.00% | 66.67% |" in text
    assert "| Macro-F1 | 0.7778 | 0.6556 |" in text
    assert "ECE" in text
    assert "Top-5" not in text
    assert "| a | 1.0000 | 0.6667 | 0.8000 | 3 |" in text
    # The two mistakes: a -> b (1 of 3 a's), b -> c (1 of 2 b's).
    assert "| a | b | 1 | 33.33% |" in text and "| b | c | 1 | 50.00% |" in text
    assert "- **full**: epochs=2, lr=0.001" in text
    for name in SKIPPED:
        assert f"`{name}`" in text
    for png in EXPECTED_FILES[:3]:
        assert f"]({png})" in text
    assert f"data: {tmp_path}" in text


def test_summary_shows_top5_for_many_classes(tmp_path):
    rng = np.random.default_rng(1)
    classes = [f"species_{i:02d}_with_a_long_descriptive_name" for i in range(50)]
    y = np.arange(100) % 50
    logits = rng.normal(size=(100, 50))
    logits[np.arange(100), y] += 2.5
    metrics = classification_metrics(y, softmax(logits), classes)
    paths = write_report(
        tmp_path, run_metrics(metrics, classes=classes, skipped_files=[]), [], classes
    )
    text = (tmp_path / "report" / "summary.md").read_text()
    assert f"| Top-5 accuracy | {100 * metrics['top5_accuracy']:.2f}% |" in text
    assert "## Skipped files (0)\n\nnone" in text
    assert (tmp_path / "report" / "skipped_files.txt").read_bytes() == b""
    with Image.open(paths[0]) as img:
        assert img.size[0] >= 1500  # the figure grows with the class count
    assert len(list(csv.DictReader((tmp_path / "report" / "per_class.csv").open()))) == 50


def test_phase_changes():
    assert phase_changes(HISTORY) == [(1.5, "full")]
    # Epoch counting restarts in the second phase: the row index is used instead.
    restarted = [
        {"epoch": 0, "phase": "linear"},
        {"epoch": 1, "phase": "linear"},
        {"epoch": 0, "phase": "full"},
        {"epoch": 1, "phase": "full"},
    ]
    assert phase_changes(restarted) == [(1.5, "full")]
    # A row without a phase belongs to the phase before it.
    gaps = [{"epoch": 0, "phase": "a"}, {"epoch": 1}, {"epoch": 2, "phase": "b"}]
    assert phase_changes(gaps) == [(1.5, "b")]
    assert phase_changes([{"epoch": 0}, {"epoch": 1}]) == []


def test_learning_curves_mark_phases_and_skip_missing_series():
    fig = learning_curves_figure(HISTORY)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["Loss", "Accuracy", "Learning rate"]
    for ax in axes:
        vlines = [line for line in ax.get_lines() if list(line.get_xdata()) == [1.5, 1.5]]
        assert len(vlines) == 1
    # train_accuracy is missing in the linear phase: plotted as NaN gaps, not zeros.
    accuracy_lines = [line for line in axes[1].get_lines() if line.get_label() == "train"]
    assert np.isnan(accuracy_lines[0].get_ydata()[:2]).all()
    assert axes[2].get_yscale() == "log"

    no_acc = [{k: v for k, v in row.items() if "accuracy" not in k} for row in HISTORY]
    assert [ax.get_title() for ax in learning_curves_figure(no_acc).get_axes()] == [
        "Loss",
        "Learning rate",
    ]
    assert learning_curves_figure([]) is None
    assert learning_curves_figure([{"epoch": 0, "phase": "linear"}]) is None


def test_empty_history_still_writes_and_says_so(tmp_path, metrics3):
    write_report(tmp_path, metrics3, HISTORY, CLASSES3)
    assert (tmp_path / "report" / "learning_curves.png").exists()
    paths = write_report(tmp_path, metrics3, [], CLASSES3)
    assert [p.name for p in paths] == [n for n in EXPECTED_FILES if n != "learning_curves.png"]
    # The stale figure from the first report would contradict the new summary.
    assert not (tmp_path / "report" / "learning_curves.png").exists()
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "Learning curves: not drawn; no training history was recorded." in text
    assert "](learning_curves.png)" not in text

    write_report(tmp_path, metrics3, [{"epoch": 0, "phase": "linear"}], CLASSES3)
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "no loss, accuracy or learning-rate values" in text


def test_val_only_metrics_use_val_for_per_class(tmp_path, metrics3):
    metrics3.pop("test")
    write_report(tmp_path, metrics3, HISTORY, CLASSES3)
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "## Per-class results (val)" in text
    assert "| metric | val |\n" in text


def test_mismatched_classes_fail_before_writing(tmp_path, metrics3):
    with pytest.raises(ValueError, match="num_classes=3"):
        write_report(tmp_path, metrics3, HISTORY, ["a", "b"])
    metrics3.pop("num_classes")
    with pytest.raises(ValueError, match="missing \\['z'\\]"):
        write_report(tmp_path, metrics3, HISTORY, ["a", "b", "z"])
    assert not (tmp_path / "report").exists()


def test_crash_mid_write_leaves_whole_files(tmp_path, metrics3, monkeypatch):
    write_report(tmp_path, metrics3, HISTORY, CLASSES3)
    report_dir = tmp_path / "report"
    before = {p.name: p.read_bytes() for p in report_dir.iterdir()}

    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)  # what finetune.io.atomic_write_bytes calls
    metrics3["skipped_files"] = ["other/new.jpg"]
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, metrics3, HISTORY, CLASSES3)
    monkeypatch.undo()

    after = {p.name: p.read_bytes() for p in report_dir.iterdir()}
    # No temporary file left, every file is either the old or the new complete version.
    assert sorted(after) == sorted(before)
    assert after["confusion_matrix_normalized.png"] == before["confusion_matrix_normalized.png"]
    assert after["summary.md"] == before["summary.md"]


@pytest.mark.slow
def test_report_does_not_touch_pyplot(tmp_path, metrics3):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics3))
    code = (
        "import json, sys, matplotlib\n"
        "from pathlib import Path\n"
        "from finetune.evaluation.report import write_report\n"
        "backend = matplotlib.rcParams._get_backend_or_none()\n"
        f"run = Path({str(tmp_path)!r})\n"
        "write_report(run, json.loads((run / 'metrics.json').read_text()), [], ['a', 'b', 'c'])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams._get_backend_or_none() == backend\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["FINETUNE_OFFLINE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

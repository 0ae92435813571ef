"""The command line: clear one-line errors, and a run that prints its result."""

from __future__ import annotations

import json

import pytest


def test_missing_data_path(cli, one_clear_line, tmp_path):
    result = cli("run", "--data", str(tmp_path / "nope"), "-q")
    one_clear_line(result, str(tmp_path / "nope"))


def test_unknown_backbone_suggests_nearest(cli, one_clear_line):
    result = cli("run", "--backbone", "resnt50")
    one_clear_line(result, "Unknown backbone 'resnt50'", "'resnet50'")


def test_unknown_strategy_lists_choices(cli, one_clear_line):
    result = cli("run", "--strategy", "fine")
    one_clear_line(result, "'fine'", "linear", "lp-ft")


def test_weights_file_missing(cli, one_clear_line, tmp_path, photos_dir):
    result = cli("run", "--data", str(photos_dir), "--weights", str(tmp_path / "w.pth"),
                 "--output", str(tmp_path / "run"), "-q")
    one_clear_line(result, "w.pth", "--weights")


def test_run_and_evaluate_from_the_command_line(cli, tmp_path, photos_dir):
    out = tmp_path / "run"
    result = cli("run", "--data", str(photos_dir), "--image-size", "96", "--epochs", "5",
                 "--num-workers", "0", "--output", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and str(out) in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    result = cli("evaluate", str(out), "--json")
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    assert again["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_models_lists_registered_backbones(cli):
    result = cli("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["resnet50"]["params"] == 25_557_032
    assert rows["efficientnet_lite0"]["weights_offline"] is True

"""The learning-rate finder (finetune/training/lr_finder.py, ``finetune lr-find``,
``--lr find``) on real photos: its files, its range, that it trains nothing, that the
phase's ratios between parameter groups hold during the sweep, and that a run trains at
the rate it found."""

from __future__ import annotations

import json
import math

import pytest
import torch

from finetune.config import ConfigError, RunConfig, resolve_config
from finetune.training.lr_finder import (
    MAX_LR,
    MIN_LR,
    LrFindResult,
    _steepest,
    _SweepModule,
    find_lr,
    read_saved,
    saved_lrs,
    write_result,
)
from finetune.training.runner import Progress, _loaders, phase_data, prepare

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 15  # Lightning's suggestion skips the first 10 steps: 15 leave it 4 to choose from


def _cfg(data, out, **kw) -> RunConfig:
    values = dict(data=str(data), output=str(out), backbone="efficientnet_lite0", image_size=64,
                  batch_size=4, num_workers=0, lr_find_steps=STEPS)
    return RunConfig(**{**values, **kw})


def test_lr_find_writes_curve_and_json_with_a_suggestion_in_range(cli, brick_cat_dir, tmp_path):
    out = tmp_path / "find"
    result = cli("lr-find", "--data", brick_cat_dir, "--strategy", "linear", "--head-fit", "sgd",
                 "--image-size", 64, "--batch-size", 4, "--num-workers", 0,
                 "--lr-find-steps", STEPS, "--output", out, "-q")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "lr_find.json").read_text())
    (entry,) = saved["phases"]
    assert entry["phase"] == "linear" and entry["found"] is True
    assert entry["range"] == [MIN_LR, MAX_LR]
    assert MIN_LR <= entry["suggested_lr"] <= MAX_LR
    assert entry["suggested_lr"] in entry["lrs"]  # one of the rates the sweep ran
    assert entry["default_lr"] == 1e-2  # linear's default, for comparison
    assert entry["reason"].startswith("steepest descent of the smoothed loss against log10(lr) at ")
    assert MIN_LR <= entry["lightning_suggestion"] <= MAX_LR  # Lightning's own, for comparison
    assert (out / "lr_find" / "linear.png").read_bytes()[:8] == PNG_MAGIC
    # The printed command reruns the configuration at the found rate.
    assert f"--recipe {out / 'config.yaml'}" in entry["command"]
    assert entry["command"] in result.output
    assert f"--lr {entry['suggested_lr']:.3g}" in entry["command"]
    assert not (out / "checkpoints").exists()  # a single phase: nothing trained


def test_the_sweep_trains_nothing_and_keeps_the_groups_ratios(brick_cat_dir, tmp_path,
                                                              monkeypatch):
    cfg = _cfg(brick_cat_dir, tmp_path / "run", strategy="partial", unfreeze=2)
    prep = prepare(cfg, resume=False, overwrite=False)
    prep.lock.release()
    state = Progress(world_size=1)
    (phase,) = prep.phases
    phase_data(prep, phase, state, progress=False)
    model = prep.model
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BN statistics included
    grads_before = {k: p.requires_grad for k, p in model.named_parameters()}
    model.eval()

    seen: list[list[float]] = []
    step = _SweepModule.optimizer_step

    def record(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.trainer.optimizers[0].param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(_SweepModule, "optimizer_step", record)
    result = find_lr(model, phase, cfg, _loaders(prep, phase, state)[0],
                     classes=prep.splits.classes, progress=False)

    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads_before
    assert not model.training
    # Every step ran the phase's groups: head at the swept rate, the stages at their share.
    ratios = [g["lr"] / phase.lr for g in phase.param_groups(model, cfg)]
    assert len(seen) >= 2  # a step whose loss diverged makes no optimizer step
    for lrs, head in zip(seen, result.lrs, strict=False):
        assert lrs == pytest.approx([head * r for r in ratios], rel=1e-9)
    assert ratios[-1] == pytest.approx(cfg.backbone_lr_scale * cfg.layer_decay)  # 2nd stage
    assert result.lrs == sorted(result.lrs) and result.lrs[0] == pytest.approx(MIN_LR)


def test_run_lr_find_trains_each_phase_at_its_found_rate(cli, brick_cat_dir, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--data", brick_cat_dir, "--strategy", "lp-ft", "--lr", "find",
                 "--lr-find-steps", STEPS, "--lp-epochs", 1, "--epochs", 1, "--image-size", 64,
                 "--batch-size", 4, "--num-workers", 0, "--output", out, "-q")
    assert result.exit_code == 0, result.output
    found = {p["phase"]: p for p in json.loads((out / "lr_find.json").read_text())["phases"]}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p["name"] for p in metrics["phases"]] == ["linear", "full"] == list(found)
    for phase in metrics["phases"]:  # one curve per phase, its rate recorded
        assert (out / "lr_find" / f"{phase['name']}.png").read_bytes()[:8] == PNG_MAGIC
        assert phase["lr"] == found[phase["name"]]["suggested_lr"]
    # The optimizer of each phase started at that rate (the scheduler's base rate).
    for ckpt, name in ((out / "checkpoints" / "linear" / "last.ckpt", "linear"),
                       (out / "checkpoints" / "last.ckpt", "full")):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        head = state["optimizer_states"][0]["param_groups"][0]
        assert head["initial_lr"] == pytest.approx(found[name]["suggested_lr"])
    # config.yaml keeps `find`, so --recipe config.yaml finds again.
    assert resolve_config(out / "config.yaml").lr_find is True


def test_lr_find_and_a_rate_together_are_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: find\n")
    assert resolve_config(recipe).lr_find is True and resolve_config(recipe).lr is None
    with pytest.raises(ConfigError, match="give a rate or 'find', not both"):
        RunConfig(lr=1e-3, lr_find=True)


def test_cli_refuses_a_rate_that_is_neither_a_number_nor_find(cli):
    result = cli("run", "--lr", "fnd")
    assert result.exit_code == 2
    assert "'fnd' is neither a learning rate (e.g. 1e-3) nor 'find'" in result.output


def test_the_suggestion_is_the_steepest_fall_per_decade():
    # A loss that falls as a logistic curve of log10(lr), fastest at 1e-2, on the sweep's
    # exponential grid, with a little noise among the smallest rates.
    lrs = [MIN_LR * (MAX_LR / MIN_LR) ** (i / 99) for i in range(100)]
    losses = [2.0 - 1.5 / (1.0 + math.exp(-3.0 * (math.log10(lr) + 2.0))) for lr in lrs]
    losses = [v + (1e-4 if i % 2 and i < 30 else 0.0) for i, v in enumerate(losses)]
    i = _steepest(lrs, losses)
    assert math.log10(lrs[i]) == pytest.approx(-2.0, abs=0.1)
    assert _steepest(lrs[:11], losses[:11]) is None  # the first 10 are skipped: too few left


def test_lr_find_trains_the_probe_at_its_default_before_sweeping_the_next_phase(
        cli, brick_cat_dir, tmp_path):
    out = tmp_path / "find"
    result = cli("lr-find", "--data", brick_cat_dir, "--strategy", "surgical", "--unfreeze", 1,
                 "--lp-epochs", 1, "--image-size", 64, "--batch-size", 4, "--num-workers", 0,
                 "--lr-find-steps", STEPS, "--output", out, "-q")
    assert result.exit_code == 0, result.output
    probe, surgical = json.loads((out / "lr_find.json").read_text())["phases"]
    assert (probe["phase"], surgical["phase"]) == ("linear", "surgical")
    for entry in (probe, surgical):
        assert (out / "lr_find" / f"{entry['phase']}.png").read_bytes()[:8] == PNG_MAGIC
    assert "command" not in probe  # --lr sets the phase after the probe, not the probe
    assert surgical["note"] == "swept after training phase 'linear' at its default lr 0.01"
    assert (out / "checkpoints" / "linear" / "best.ckpt").is_file()  # the probe trained
    assert surgical["command"] in result.output


def _result(phase: str, lr: float) -> LrFindResult:
    return LrFindResult(phase, lr, default_lr=1e-2, min_lr=MIN_LR, max_lr=MAX_LR, found=True,
                        reason="steepest descent", lrs=[1e-4, lr, 1e-1], losses=[2.0, 1.0, 3.0])


def test_lr_find_json_is_read_by_one_function_for_writing_and_resuming(tmp_path):
    """A resume reads the rates back (saved_lrs) through the reader that write_result adds
    phases with; a phase written again replaces its entry, and a damaged file is one clear
    error naming it."""
    assert read_saved(tmp_path) == {"phases": []} and saved_lrs(tmp_path) == {}
    write_result(tmp_path, _result("linear", 3e-3))
    write_result(tmp_path, _result("full", 2e-4), note="swept after 'linear'")
    write_result(tmp_path, _result("linear", 5e-3))
    assert saved_lrs(tmp_path) == {"full": 2e-4, "linear": 5e-3}
    saved = read_saved(tmp_path)
    assert [p["phase"] for p in saved["phases"]] == ["full", "linear"]
    assert saved["phases"][0]["note"] == "swept after 'linear'"
    assert saved == json.loads((tmp_path / "lr_find.json").read_text())

    for damaged in ('{"phases": [{"phase": "linear"}]}', '{"phases": [{"phase": "linear", '
                    '"suggested_lr": "fast"}]}', "[1, 2]", "{not json"):
        (tmp_path / "lr_find.json").write_text(damaged)
        with pytest.raises(ValueError, match=r"lr_find.json' is not an lr_find.json as `--lr "
                           r"find` writes it .*Delete it"):
            saved_lrs(tmp_path)

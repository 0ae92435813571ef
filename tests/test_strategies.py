"""Strategies: what trains, at which learning rate, and frozen BatchNorm that never drifts.

The first tests run for every registered strategy: a new one is covered once it registers.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import pytorch_lightning as pl
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune.cli import main
from finetune.config import ConfigError, RunConfig, resolve_config
from finetune.models import create_backbone
from finetune.recommend import Decision
from finetune.recommend.plan import plan_hyperparameters
from finetune.recommend.timing import Speed
from finetune.strategies import (
    AUTO,
    Default,
    check_strategy,
    get_strategy,
    plan,
    register,
    strategy_names,
)
from finetune.training.module import FinetuneModule, count_trainable

STRATEGIES = strategy_names()


def _bn_state(modules) -> dict[str, torch.Tensor]:
    out = {}
    for i, module in enumerate(modules):
        for name, sub in module.named_modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                for key in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
                    out[f"{i}.{name}.{key}"] = getattr(sub, key).detach().clone()
    return out


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0", num_classes=5)


@pytest.fixture(scope="module")
def resnet18():
    return create_backbone("resnet18", num_classes=3)  # 5 stages, BatchNorm everywhere


def _trained_as_spec_says(spec, phase, stages):
    """The stages the spec's ``trains`` promises for this phase's unfreeze."""
    if spec.trains in ("none", "all"):
        return [] if spec.trains == "none" else stages
    k = int(phase.unfreeze)
    return stages[:k] if spec.trains == "first" else stages[len(stages) - k:]


# --------------------------------------------------------------------------- every strategy
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_plans_its_defaults_on_a_small_backbone(name, resnet18):
    spec = get_strategy(name)
    assert spec.name == name
    phases = plan(RunConfig(strategy=name, unfreeze=2 if spec.trains in ("last", "first") else None),
                  resnet18)
    last = phases[-1]
    defaults = {key: d.value for key, d in spec.defaults.items()}
    assert (last.epochs, last.lr, last.warmup_epochs) == (
        defaults["epochs"], defaults["lr"], defaults["warmup_epochs"])
    if not last.feature_cache:  # cached features see no augmentation, whatever the default
        assert last.augment == defaults["augment"]
    # What the recommender is told about the strategy is what the run does.
    stages = resnet18.stages()
    assert [s.name for s in last.trainable_stages(resnet18)] == [
        s.name for s in _trained_as_spec_says(spec, last, stages)]
    probe = phases[0]
    assert spec.probe_first == (len(phases) > 1 and probe.feature_cache and probe.unfreeze == 0)
    for phase in phases:
        phase.freeze(resnet18)
        trainable = sum(p.numel() for p in resnet18.parameters() if p.requires_grad)
        in_groups = sum(p.numel() for g in phase.param_groups(resnet18, RunConfig()) for p in g["params"])
        assert trainable == in_groups > 0, phase.name


@pytest.mark.parametrize("name", STRATEGIES)
def test_flags_win_over_every_strategys_defaults(name, resnet18):
    cfg = RunConfig(strategy=name, epochs=3, lr=7e-4, warmup_epochs=0.25, augment="strong",
                    feature_cache=False, unfreeze=1)
    last = plan(cfg, resnet18)[-1]
    assert (last.epochs, last.lr, last.warmup_epochs, last.augment) == (3, 7e-4, 0.25, "strong")


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_default_and_planned_value_has_a_reason(name):
    spec = get_strategy(name)
    assert spec.summary.strip() and "\n" not in spec.summary
    assert {"epochs", "lr", "warmup_epochs", "augment"} <= set(spec.defaults)
    for key, default in spec.defaults.items():
        assert key in RunConfig.keys(), key  # a flag or recipe value can override it
        assert default.reason.strip() and "\n" not in default.reason, key
    planned = spec.planning
    low, high = planned.epoch_limits
    assert 0 < low <= high and planned.target_steps > 0 and planned.lr > 0 and planned.lr_reason.strip()


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_recommender_plans_every_strategy(name, resnet18):
    spec = get_strategy(name)
    names = [s.name for s in resnet18.stages()]
    signals = {"stages": [{"name": n} for n in names], "has_batchnorm": True, "shift_pixel": 0.5}
    speed = Speed(image_size=64, forward_ms=10.0, train_ms=30.0, load_ms=1.0)
    amount = {"train_images": 640, "val_images": 100, "test_images": 100}
    unfreeze = 2 if spec.trains in ("last", "first") else None
    decision = Decision(strategy=name, unfreeze=unfreeze, amount="large", similarity="similar",
                        score=0.8, line=0.7, input_level=False, reasons=["the cell"])
    p = plan_hyperparameters(decision, signals, amount, model=resnet18, image_size=64,
                             batch_size=32, speed=speed)
    hp = {k: v["value"] for k, v in p.hyperparameters.items()}
    assert p.strategy == name
    if "head_fit" in spec.defaults and spec.defaults["head_fit"].value == "lbfgs":
        # Fit to convergence: no epochs or rate to plan.
        assert hp["head_fit"] == "lbfgs" and "epochs" not in hp and "lr" not in hp
    else:
        assert hp["lr"] == spec.planning.lr
        low, high = spec.planning.epoch_limits
        # 640 images at batch 32: 20 steps an epoch
        assert hp["epochs"] == min(high, max(low, math.ceil(spec.planning.target_steps / 20)))
    assert ("lp_epochs" in hp) == spec.probe_first and hp.get("unfreeze") == unfreeze
    assert p.estimated_minutes > 0


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_misspelt_strategy_names_the_nearest_one(name):
    typo = name[:-1]
    with pytest.raises(ConfigError, match=f"Invalid strategy '{typo}'. Did you mean '{name}'\\?") as err:
        get_strategy(typo)
    assert str(err.value).endswith(f"Choose one of: {', '.join(STRATEGIES)}, auto.")
    with pytest.raises(ConfigError, match=f"Did you mean '{name}'"):
        check_strategy(typo)
    assert check_strategy(name) == name and check_strategy(AUTO) == AUTO


def test_a_spec_without_a_default_or_its_reason_is_refused():
    spec = get_strategy("partial")
    defaults = dict(spec.defaults)
    with pytest.raises(ValueError, match=r"defaults miss \['lr'\]"):
        dataclasses.replace(spec, name="x", defaults={k: v for k, v in defaults.items() if k != "lr"})
    with pytest.raises(ValueError, match="a reason for every default"):
        dataclasses.replace(spec, name="x", defaults={**defaults, "lr": Default(1e-3, " ")})
    with pytest.raises(ValueError, match="give an EpochCost exactly when the backbone trains"):
        dataclasses.replace(spec, name="x", cost=None)
    with pytest.raises(ValueError, match="'partial' is registered twice"):
        register(spec)


def test_auto_is_resolved_before_planning(resnet18):
    with pytest.raises(ConfigError, match="'auto' is resolved by the recommender"):
        plan(RunConfig(strategy="auto"), resnet18)


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_cli_lists_every_strategy(name):
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{name}: {get_strategy(name).summary}" in text
    assert f"|{name}|" in text or f"[{name}|" in text  # the choices


@pytest.mark.parametrize("how", ["flag", "recipe"])
def test_a_misspelt_strategy_fails_before_anything_is_written(tmp_path, photos_dir, how):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier run, which --overwrite would replace
    args = ["run", "--data", str(photos_dir), "--output", str(out), "--overwrite", "-q"]
    if how == "flag":
        args += ["--strategy", "lienar"]
    else:
        recipe = tmp_path / "r.yaml"
        recipe.write_text("strategy: lienar\nepochs: 1\n")
        assert resolve_config(recipe).strategy == "lienar"  # the config layer cannot check it
        args += ["--recipe", str(recipe)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "'lienar'" in result.output and "Did you mean 'linear'?" in result.output
    assert "Traceback" not in result.output
    assert [f.name for f in out.iterdir()] == ["metrics.json"]


# --------------------------------------------------------------------------- the built-in ones
def test_linear_trains_only_the_head(lite0):
    phase = plan(RunConfig(strategy="linear"), lite0)[0]
    phase.freeze(lite0)
    assert count_trainable(lite0) == 1280 * 5 + 5
    assert phase.feature_cache and phase.augment == "none"


def test_partial_trains_last_stages_and_head(lite0):
    phase = plan(RunConfig(strategy="partial", unfreeze=2), lite0)[0]
    phase.freeze(lite0)
    stages = lite0.stages()
    expected = sum(s.num_params() for s in stages[-2:]) + 1280 * 5 + 5
    assert count_trainable(lite0) == expected
    # Frozen stages: no gradients and eval mode.
    for stage in stages[:-2]:
        assert not any(p.requires_grad for p in stage.parameters())


def test_partial_default_unfreeze_comes_from_backbone(lite0):
    phase = plan(RunConfig(strategy="partial"), lite0)[0]
    assert phase.unfreeze == lite0.default_unfreeze == 2
    resnet = create_backbone("resnet18", num_classes=3)
    assert plan(RunConfig(strategy="partial"), resnet)[0].unfreeze == 1


def test_full_trains_everything(lite0):
    phase = plan(RunConfig(strategy="full"), lite0)[0]
    phase.freeze(lite0)
    assert count_trainable(lite0) == sum(p.numel() for p in lite0.parameters())


def test_lp_ft_is_probe_then_full(lite0):
    phases = plan(RunConfig(strategy="lp-ft", lp_epochs=3, epochs=4, lr=1e-4), lite0)
    assert [p.name for p in phases] == ["linear", "full"]
    assert phases[0].epochs == 3 and phases[1].epochs == 4
    assert phases[1].lr == 1e-4 and phases[0].lr > phases[1].lr


def test_unfreeze_more_than_stages_is_a_clear_error(lite0):
    phase = plan(RunConfig(strategy="partial", unfreeze=99), lite0)[0]
    with pytest.raises(ValueError, match="more than the 8 stages"):
        phase.freeze(lite0)


def test_layerwise_lr_decays_from_head_to_stem():
    model = create_backbone("resnet18", num_classes=4)
    cfg = RunConfig(strategy="full", lr=1e-3, backbone_lr_scale=0.1, layer_decay=0.5)
    phase = plan(cfg, model)[0]
    phase.freeze(model)
    groups = {g["name"]: g for g in phase.param_groups(model, cfg)}
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    assert groups["layer4"]["lr"] == pytest.approx(1e-4)
    assert groups["layer3"]["lr"] == pytest.approx(5e-5)
    assert groups["stem"]["lr"] == pytest.approx(1e-4 * 0.5**4)
    # Norm parameters and biases never decay; conv weights do.
    assert groups["layer4.no_decay"]["weight_decay"] == 0.0
    assert groups["layer4"]["weight_decay"] == cfg.weight_decay
    # Every trainable parameter is in exactly one group.
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def _fit(model, cfg, epochs=2, n=24, size=64, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g) * 2 + 0.5  # far from ImageNet statistics
    y = torch.arange(n) % classes
    phase = plan(cfg, model)[0]
    module = FinetuneModule(model, phase, cfg, classes=[str(i) for i in range(classes)])
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    return module, phase


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_frozen_batchnorm_statistics_stay_bit_identical(backbone):
    model = create_backbone(backbone, num_classes=3)
    cfg = RunConfig(strategy="partial", unfreeze=1, feature_cache=False, epochs=2)
    phase = plan(cfg, model)[0]
    frozen = [m for s in phase.frozen_stages(model) for m in s.modules]
    trainable = [m for s in phase.trainable_stages(model) for m in s.modules]
    before_frozen, before_trainable = _bn_state(frozen), _bn_state(trainable)

    _fit(model, cfg)

    after_frozen = _bn_state(frozen)
    assert before_frozen.keys() == after_frozen.keys() and before_frozen
    for key in before_frozen:
        assert torch.equal(before_frozen[key], after_frozen[key]), key
    # The unfrozen stage's BatchNorm did train: the check above could have failed.
    after_trainable = _bn_state(trainable)
    changed = [k for k in before_trainable if not torch.equal(before_trainable[k], after_trainable[k])]
    assert any(k.endswith("running_mean") for k in changed)


def test_train_mode_reapplies_the_bn_policy():
    model = create_backbone("resnet18", num_classes=3)
    cfg = RunConfig(strategy="partial", unfreeze=1)
    phase = plan(cfg, model)[0]
    module = FinetuneModule(model, phase, cfg, classes=["a", "b", "c"])
    module.train()  # what Lightning does at every epoch
    assert not model.bn1.training and not model.layer3[0].bn1.training
    assert model.layer4[0].bn1.training and model.fc.training
    phase.check_bn_policy(model)
    model.bn1.train()  # a planted violation is caught
    with pytest.raises(RuntimeError, match="frozen stage 'stem'"):
        phase.check_bn_policy(model)


def test_warmup_then_cosine_schedule():
    model = create_backbone("resnet18", num_classes=3)
    cfg = RunConfig(strategy="full", lr=1e-3, warmup_epochs=1.0, epochs=4)
    module, _ = _fit(model, cfg, epochs=4)
    scheduler = module.trainer.lr_scheduler_configs[0].scheduler
    lam = scheduler.lr_lambdas[0]
    steps_per_epoch = 3  # 24 images / batch 8
    total = 4 * steps_per_epoch
    assert lam(0) == pytest.approx(1 / (steps_per_epoch + 1))
    assert lam(steps_per_epoch) == pytest.approx(1.0)
    mid = steps_per_epoch + (total - steps_per_epoch) / 2
    assert lam(int(mid)) == pytest.approx(0.5 * (1 + math.cos(math.pi * (int(mid) - 3) / 9)))
    assert lam(total) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("feature_cache", [True, False])
def test_a_linear_probe_trains_without_dropout(feature_cache):
    """The head-only phase runs the network in eval mode, dropout included, so that the
    uncached path (``--no-feature-cache``) trains the same head as cached features do."""
    model = create_backbone("efficientnet_lite0", pretrained=False, num_classes=3)
    assert model.drop_rate > 0  # the test needs a dropout to switch off
    cfg = RunConfig(strategy="linear", feature_cache=feature_cache)
    phase = plan(cfg, model)[0]
    module = FinetuneModule(model, phase, cfg, classes=["a", "b", "c"])
    module.train()
    assert not any(m.training for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    # a phase that trains the backbone keeps its dropout
    cfg = RunConfig(strategy="partial", unfreeze=1)
    module = FinetuneModule(model, plan(cfg, model)[0], cfg, classes=["a", "b", "c"])
    module.train()
    assert model.training
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("strategy", ["lp-ft", "surgical"])
def test_the_phase_after_the_probe_keeps_the_checkpoint_statistics(strategy):
    """lp-ft's and surgical's second phase trains its stages with the whole network in eval
    mode: a training step moves the weights, never a BatchNorm's running statistics, and
    no dropout fires, on every epoch (Lightning's train() included) and after a resume."""
    model = create_backbone("efficientnet_lite0", pretrained=False, num_classes=3)
    cfg = RunConfig(strategy=strategy)
    probe, second = plan(cfg, model)
    assert not probe.bn_eval and second.bn_eval and second.trainable_stages(model)
    module = FinetuneModule(model, second, cfg, classes=["a", "b", "c"])
    module.train()  # what every training epoch starts with
    assert not any(m.training for m in model.modules())
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    weight = next(p for p in second.trainable_stages(model)[0].parameters() if p.ndim > 1)
    before = weight.detach().clone()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)  # no dropout
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert not torch.equal(weight, before)
    for key, value in model.state_dict().items():
        if "running_" in key:
            assert torch.equal(value, stats[key]), key
    # `partial` and `full` train their BatchNorm layers with batch statistics.
    full = plan(RunConfig(strategy="full"), model)[0]
    assert not full.bn_eval

"""Strategies: what trains, at which learning rate, and frozen BatchNorm that never drifts."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune.config import RunConfig
from finetune.models import create_backbone
from finetune.strategies import plan
from finetune.training.module import FinetuneModule, count_trainable


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

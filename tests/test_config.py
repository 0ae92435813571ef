"""Recipes and flags: defaults < recipe < flags; unknown keys rejected with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config import ConfigError, RunConfig, load_recipe, resolve_config
from finetune.strategies import get_strategy

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_every_shipped_recipe_is_valid():
    assert len(RECIPES) >= 4
    for recipe in RECIPES:
        cfg = resolve_config(recipe)
        assert get_strategy(cfg.strategy).name == cfg.strategy, recipe  # registered, not auto


def test_flags_override_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("strategy: full\nepochs: 7\nlr: 1\n")
    cfg = resolve_config(recipe, epochs=3, lr=None)
    assert (cfg.strategy, cfg.epochs, cfg.lr) == ("full", 3, 1.0)
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize("key,suggestion", [("epoch", "epochs"), ("batchsize", "batch_size"),
                                            ("unfreez", "unfreeze")])
def test_unknown_key_suggests_nearest(tmp_path, key, suggestion):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{key}: 3\n")
    with pytest.raises(ConfigError, match=f"Unknown key '{key}'.*Did you mean '{suggestion}'"):
        load_recipe(recipe)


def test_bad_values_name_the_fix():
    with pytest.raises(ConfigError, match="Invalid augment 'medum'. Did you mean 'medium'"):
        RunConfig(augment="medum")
    with pytest.raises(ConfigError, match="Invalid head_fit 'lbgfs'. Did you mean 'lbfgs'"):
        RunConfig(head_fit="lbgfs")
    with pytest.raises(ConfigError, match="val_fraction"):
        RunConfig(val_fraction=0.6, test_fraction=0.5)


def test_yaml_is_loaded_safely(tmp_path):
    recipe = tmp_path / "evil.yaml"
    recipe.write_text("strategy: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(recipe)
    assert not (tmp_path / "pwned").exists()


def test_config_round_trips_through_yaml(tmp_path):
    from finetune.config import save_config

    cfg = RunConfig(strategy="partial", unfreeze=2, lr=3e-4, output="x")
    save_config(cfg, tmp_path / "config.yaml")
    assert resolve_config(tmp_path / "config.yaml") == cfg

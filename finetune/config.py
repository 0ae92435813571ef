"""The resolved configuration of a run: defaults < recipe file < command-line flags.

One frozen dataclass, written to ``config.yaml`` in the run folder so that the run can
be repeated exactly (``finetune run --recipe runs/x/config.yaml``). Recipes are plain
YAML read with the safe loader; an unknown key is an error that names the nearest key.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .io import atomic_write_text

AUGMENT_CHOICES = ("auto", "none", "light", "medium", "strong")
HEAD_FITS = ("sgd", "lbfgs")
# Lightning strategies this toolkit runs and tests (docs/scaling.md); FSDP and DeepSpeed
# shard models far larger than any backbone here, so they are left out.
DISTRIBUTED = ("auto", "ddp", "ddp_spawn")
# Experiment trackers (training/tracking.py): Lightning's loggers, or none at all.
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb", "none")


class ConfigError(ValueError):
    """A recipe or flag value the user must fix; the message says how."""


@dataclass(frozen=True)
class RunConfig:
    # --- what to train on, and with what
    data: str = "builtin:photos"  # a folder, a CSV manifest, or builtin:<name> (built offline)
    backbone: str = "efficientnet_lite0"  # the offline-available default
    # A registered strategy (finetune/strategies/, the grid in docs/design.md) or "auto": what
    # `finetune recommend` says. Checked by finetune.strategies.check_strategy, which the
    # config cannot import (it sits below the strategies' layer).
    strategy: str = "linear"
    weights: str = "pretrained"  # "pretrained" (offline first), "none" (random init), or a file
    output: str | None = None  # default runs/<data>-<backbone>-<strategy>

    # --- optimisation; None means "the strategy's default" (finetune/strategies/ says why)
    epochs: int | None = None
    lp_epochs: int | None = None  # the linear-probe phase of lp-ft and surgical
    batch_size: int = 32
    lr: float | None = None  # learning rate of the head; backbone stages get less
    # `lr: find` in a recipe (--lr find): each phase takes the rate Lightning's range test
    # suggests (training/lr_finder.py) over lr_find_steps batches; lr stays None then.
    lr_find: bool = False
    lr_find_steps: int = 100
    backbone_lr_scale: float = 0.1  # last unfrozen stage lr = lr * this (pretrained features move slowly)
    layer_decay: float = 0.7  # each earlier stage: x this again (layer-wise lr decay)
    weight_decay: float = 1e-4  # AdamW; never applied to biases and norm parameters
    warmup_epochs: float | None = None  # linear warm-up, then cosine to zero
    label_smoothing: float = 0.0
    # `partial`: how many last stages train (default per backbone); `surgical`: first stages
    unfreeze: int | None = None

    # --- data
    image_size: int | None = None  # default: the backbone's pretrained input size
    augment: str = "auto"  # auto grades by strategy: none for cached features, light, medium
    hflip: bool = True  # random horizontal flips; off for text, digits, anything chiral
    class_weights: str = "auto"  # auto: class-weighted loss when max/min class count > 3
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    num_workers: int | None = None  # default: half the CPU cores, at most 4
    feature_cache: bool = True  # `linear`: one backbone pass, then train the head on features
    feature_cache_dir: str | None = None  # default $FINETUNE_CACHE_DIR or ~/.cache/finetune/features
    # Backbone training: decode each image once into a memory-mapped store (data/image_cache.py)
    image_cache: bool = False
    image_cache_dir: str | None = None  # default $FINETUNE_IMAGE_CACHE_DIR or ~/.cache/finetune/images
    # How the head of a cached-feature phase trains: "sgd" = AdamW epochs through Lightning;
    # "lbfgs" = logistic regression to convergence, C swept on val (as CLIP / DINOv2 probes).
    # None: the strategy's default (`linear`: lbfgs; a probe before fine-tuning: sgd).
    head_fit: str | None = None
    # An lbfgs head that ends the run: after C is chosen on val, refit it on train + val.
    head_refit: bool = True

    # --- tracking and stopping
    loggers: tuple[str, ...] = ("csv",)  # any of LOGGERS; csv writes <run folder>/logs/
    tracking_uri: str | None = None  # mlflow: a server or store (default: ./mlflow.db)
    patience: int | None = None  # stop a phase after this many epochs without a lower val loss
    # Minutes for the whole run (docs/recommend.md): `auto` plans strategy, size and epochs to
    # fit; every strategy's phases stop at what is left (Lightning's max_time).
    budget: float | None = None

    # --- hardware (passed to Lightning)
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1  # machines, each running `devices` processes (torchrun / SLURM)
    distributed: str = "auto"  # Lightning strategy: auto, ddp (torchrun/SLURM), ddp_spawn
    precision: str | None = None  # default: bf16-mixed on GPU, 32-true on CPU
    compile: bool = False  # torch.compile the model for phases that train the backbone
    seed: int = 0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENT_CHOICES:
            raise ConfigError(_choice_error("augment", self.augment, AUGMENT_CHOICES))
        if self.head_fit is not None and self.head_fit not in HEAD_FITS:
            raise ConfigError(_choice_error("head_fit", self.head_fit, HEAD_FITS))
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(_choice_error("distributed", self.distributed, DISTRIBUTED))
        if self.class_weights not in ("auto", "on", "off"):
            raise ConfigError(_choice_error("class_weights", self.class_weights, ("auto", "on", "off")))
        _check_loggers(self.loggers)
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"budget must be a positive number of minutes, got {self.budget}.")
        if self.lr_find and self.lr is not None:
            raise ConfigError(f"lr is {self.lr} and lr_find is on: give a rate or 'find', not both.")
        for name in ("epochs", "lp_epochs", "batch_size", "unfreeze", "image_size", "num_nodes",
                     "lr_find_steps", "patience"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "lp_epochs" else 1):
                raise ConfigError(f"{name} must be a positive integer, got {value}.")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}.")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or (
            self.val_fraction + self.test_fraction >= 1
        ):
            raise ConfigError(
                f"val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) "
                f"must each be in [0, 1) and leave images for training."
            )

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "config") -> RunConfig:
        unknown = [k for k in values if k not in cls.keys()]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key.replace("-", "_"), cls.keys(), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown key '{key}' in {where}.{hint} Valid keys: {', '.join(cls.keys())}."
            )
        if values.get("lr") == "find":  # `lr: find`: the range test picks each phase's rate
            values = {**values, "lr": None, "lr_find": True}
        return cls(**{k: _coerce(k, v) for k, v in values.items()})


def _coerce(key: str, value: Any) -> Any:
    """YAML gives ints where floats are meant (lr: 1) and strings for paths: normalise."""
    if value is None:
        return None
    if key == "loggers":  # `loggers: tensorboard` or a list
        return (value,) if isinstance(value, str) else tuple(value)
    kind = {f.name: f.type for f in fields(RunConfig)}[key]
    if "float" in kind and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind.startswith("str") and not isinstance(value, str):
        return str(value)
    return value


def _check_loggers(loggers: tuple[str, ...]) -> None:
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(_choice_error("logger", name, LOGGERS))
    if "none" in loggers and len(loggers) > 1:
        raise ConfigError(f"loggers {list(loggers)}: 'none' turns tracking off and cannot go "
                          f"with other loggers; give 'none' alone, or leave it out.")


def _choice_error(name: str, value: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Invalid {name} '{value}'.{hint} Choose one of: {', '.join(choices)}."


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe '{path}' does not exist. See recipes/ for examples.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Recipe '{path}' is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe '{path}' must be a mapping of keys to values.")
    # A recipe may carry a description for people; it is not a setting.
    data.pop("description", None)
    RunConfig.from_mapping(data, where=str(path))  # validate early, with the file's name
    return data


def resolve_config(recipe: str | Path | None = None, **flags: Any) -> RunConfig:
    """Defaults, then the recipe, then every flag the user actually gave (not None)."""
    values: dict[str, Any] = {}
    if recipe is not None:
        values.update(load_recipe(recipe))
    values.update({k: v for k, v in flags.items() if v is not None})
    return RunConfig.from_mapping(values, where="flags" if recipe is None else str(recipe))


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))

"""Strategies by name: one frozen ``StrategySpec`` each, registered by its own file.

A spec is everything the toolkit knows about a strategy: the phases it runs, their
defaults (each with its reason), what ``finetune recommend`` needs to plan it, and what an
epoch of it costs. ``finetune run --strategy`` offers the registered names and ``auto``,
which is no spec: the recommender resolves it into one before planning.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, RunConfig
from ..models import Backbone
from .phase import Phase

AUTO = "auto"  # finetune.recommend.resolve_auto replaces it by a registered strategy
# Which stages the strategy's (last) phase trains: none (a head on frozen features), the
# last k, the first k (from the input), or all of them.
TRAINS = ("none", "last", "first", "all")
# Every phase needs these; a flag or recipe value overrides each.
PHASE_DEFAULTS = ("epochs", "lr", "warmup_epochs", "augment")

_SPECS: dict[str, StrategySpec] = {}


@dataclass(frozen=True)
class Default:
    value: Any
    reason: str  # one line: why this value


@dataclass(frozen=True)
class Planning:
    """What ``finetune recommend`` needs to plan the strategy's hyperparameters."""

    target_steps: int  # optimizer steps the (last) phase should get
    epoch_limits: tuple[int, int]  # (low, high): epochs whatever the data's size
    lr: float  # the head lr the recommender plans
    lr_reason: str
    # (unfreeze, signals, batch_size) -> the BatchNorm policy line, where the one that
    # `trains` gives (finetune/recommend/plan.py) leaves out what matters.
    bn_policy: Callable[[int | None, dict, int], str] | None = None


@dataclass(frozen=True)
class EpochCost:
    """Forward-pass equivalents one training image costs per epoch, ``fixed + per_share *
    share``, where ``share`` is the fraction of the backbone's stages that train."""

    fixed: float
    per_share: float

    def passes(self, share: float) -> float:
        return self.fixed + self.per_share * share


@dataclass(frozen=True)
class StrategySpec:
    name: str
    summary: str  # one line for `finetune run --help`
    build: Callable[[RunConfig, Backbone], list[Phase]]  # its phases, defaults filled in
    defaults: Mapping[str, Default]  # RunConfig keys -> default of the strategy's own phase
    trains: str  # one of TRAINS
    planning: Planning
    # None when no phase trains the backbone (the cost is one feature extraction).
    cost: EpochCost | None
    # A linear probe on cached features runs first, so the next phase starts from a
    # trained head (lp-ft, surgical): features are extracted once, lp_epochs is planned.
    probe_first: bool = False

    def __post_init__(self) -> None:
        where = f"Strategy '{self.name}'"
        if self.trains not in TRAINS:
            raise ValueError(f"{where}: trains='{self.trains}'; use one of {', '.join(TRAINS)}.")
        if (self.cost is None) != (self.trains == "none"):
            raise ValueError(f"{where}: give an EpochCost exactly when the backbone trains "
                             f"(trains='{self.trains}', cost={self.cost}).")
        missing = [k for k in PHASE_DEFAULTS if k not in self.defaults]
        unknown = [k for k in self.defaults if k not in RunConfig.keys()]
        if missing or unknown:
            raise ValueError(f"{where}: defaults miss {missing} or name keys RunConfig does not "
                             f"have {unknown}; give {', '.join(PHASE_DEFAULTS)}, each a RunConfig key.")
        if not self.summary.strip() or any(not d.reason.strip() for d in self.defaults.values()):
            raise ValueError(f"{where}: give a one-line summary and a reason for every default.")

    def phase(self, cfg: RunConfig, name: str, *, unfreeze: int | str, epochs: int | None,
              **fields: Any) -> Phase:
        """A phase from the flags and recipe, this spec's defaults where they leave a value
        unset; ``epochs`` is explicit (a probe phase takes ``--lp-epochs``), ``fields`` win."""
        d = {key: default.value for key, default in self.defaults.items()}
        values = {
            "epochs": epochs if epochs is not None else d["epochs"],
            "lr": cfg.lr if cfg.lr is not None else d["lr"],
            "warmup_epochs": cfg.warmup_epochs if cfg.warmup_epochs is not None else d["warmup_epochs"],
            "augment": cfg.augment if cfg.augment != "auto" else d["augment"],
            "feature_cache": False,
        }
        return Phase(name=name, unfreeze=unfreeze, **{**values, **fields})


def register(spec: StrategySpec) -> StrategySpec:
    """Add a strategy under its name; a strategy's file calls this once."""
    if spec.name == AUTO:
        raise ValueError("'auto' names the recommender's choice; give the strategy another name.")
    if spec.name in _SPECS:
        raise ValueError(f"Strategy '{spec.name}' is registered twice; give it another name.")
    _SPECS[spec.name] = spec
    return spec


def strategy_names() -> list[str]:
    """The registered strategies, in registration order (``auto`` is not one)."""
    return list(_SPECS)


def get_strategy(name: str) -> StrategySpec:
    """The spec of ``name``, or a ConfigError that suggests the nearest name."""
    if name in _SPECS:
        return _SPECS[name]
    if name == AUTO:
        raise ConfigError("Strategy 'auto' is resolved by the recommender before planning "
                          "(finetune.recommend.resolve_auto, called by `finetune run`); "
                          "plan a registered strategy instead.")
    choices = [*_SPECS, AUTO]
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"Invalid strategy '{name}'.{hint} Choose one of: {', '.join(choices)}.")


def check_strategy(name: str) -> str:
    """``name`` if ``finetune run`` takes it (a registered strategy or ``auto``), else
    get_strategy's error: a misspelt recipe fails before anything is written."""
    if name != AUTO:
        get_strategy(name)
    return name

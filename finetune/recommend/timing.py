"""How fast the backbone runs here: a few timed batches of inference and of a training
step (forward and backward through every layer) at an image size, and the wall time of
a plan from them.

The signals' own passes carry hooks on every BatchNorm layer, so their speed overstates
what a run costs; these batches run the bare network. A training step of a strategy that
trains part of the network costs the full step scaled by the strategy's ``EpochCost``
(gradients stop at the first trained stage).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..models import Backbone
from ..strategies import get_strategy

# Process start, model build, the run folder and the evaluation's loaders: measured on a
# 2-core CPU as the wall time of a linear run minus its training and evaluation.
STARTUP_S = 6.0


@dataclass(frozen=True)
class Speed:
    """Milliseconds per image at ``image_size``: inference, a full training step, decoding."""

    image_size: int
    forward_ms: float
    train_ms: float
    load_ms: float

    def to_json(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _timed(step, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``step(x)`` over ``repeats`` calls, after one warm-up call (the
    first call of a shape pays for kernel selection)."""
    step(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_speed(model: Backbone, image_size: int, *, batch_size: int, load_ms: float,
                  repeats: int = 2) -> Speed:
    """Time inference and a training step of a copy of ``model`` on random batches of
    ``min(batch_size, 8)`` images (speed does not depend on the pixels; per image, a CPU
    is as fast at 8 as at 32)."""
    n = max(2, min(batch_size, 8))
    x = torch.randn(n, 3, image_size, image_size)
    net = copy.deepcopy(model)

    def infer(batch: torch.Tensor) -> None:
        with torch.inference_mode():
            net(batch)

    def train(batch: torch.Tensor) -> None:
        net.zero_grad(set_to_none=True)
        net(batch).float().logsumexp(dim=1).mean().backward()

    net.eval()
    forward = _timed(infer, x, repeats)
    net.train()
    for p in net.parameters():
        p.requires_grad_(True)
    step = _timed(train, x, repeats)
    return Speed(image_size, 1000 * forward / n, 1000 * step / n, load_ms)


def estimate_seconds(strategy: str, unfreeze: int | None, epochs: int, *, amount: dict,
                     num_stages: int, speed: Speed) -> float:
    """Wall seconds of ``finetune run`` with this plan here: the feature extraction of a
    head on cached features (every split, once), each epoch's training steps and
    validation pass, the test pass, and the process's start."""
    spec = get_strategy(strategy)
    n_train, n_val, n_test = amount["train_images"], amount["val_images"], amount["test_images"]
    infer = speed.forward_ms + speed.load_ms
    total_ms = 0.0
    if spec.cost is None or spec.probe_first:
        total_ms += (n_train + n_val + n_test) * infer
    if spec.cost is not None:
        share = (unfreeze or num_stages) / max(1, num_stages)
        step = speed.train_ms * spec.cost.passes(share) / spec.cost.passes(1.0) + speed.load_ms
        total_ms += epochs * (n_train * step + n_val * infer) + n_test * infer
    return STARTUP_S + total_ms / 1000


__all__ = ["STARTUP_S", "Speed", "estimate_seconds", "measure_speed"]

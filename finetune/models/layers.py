"""Small building blocks shared by the model families.

Only pieces whose behaviour is the same everywhere live here: the activation lookup that
every family's ``act_layer`` option goes through, channel rounding, conv -> norm -> act
as an ``nn.Sequential``, and the classifier head that every family builds and resets. Each family keeps its own blocks, because the state_dict
keys of a block are the reference implementation's (torchvision's or timm's) and must
stay exactly those for the published weights to load.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

__all__ = [
    "ACT_LAYERS", "ActFactory", "ConvNormAct", "NormFactory", "create_classifier", "get_act_layer",
    "init_linear_head", "make_divisible",
]

ActFactory = Callable[[], nn.Module]
NormFactory = Callable[[int], nn.Module]

# The activations compared in the lecture, plus ReLU6, the MobileNets' default (it caps
# activations at 6, which keeps them in range for 8-bit inference on phones). In-place
# where the function allows it: each block's activations overwrite a tensor nobody reads
# again, which saves memory. PReLU learns its slope: one parameter per module.
ACT_LAYERS: dict[str, ActFactory] = {
    "relu": partial(nn.ReLU, inplace=True),
    "leaky_relu": partial(nn.LeakyReLU, negative_slope=0.01, inplace=True),
    "prelu": nn.PReLU,
    "elu": partial(nn.ELU, inplace=True),
    "selu": partial(nn.SELU, inplace=True),
    "relu6": partial(nn.ReLU6, inplace=True),
}


def get_act_layer(act_layer: str | type[nn.Module] | ActFactory) -> ActFactory:
    """A factory for fresh activation modules, from a name, a module class or a factory."""
    if isinstance(act_layer, str):
        key = act_layer.lower().replace("-", "_")
        if key not in ACT_LAYERS:
            raise ValueError(
                f"Unknown activation '{act_layer}'. Valid names: {', '.join(ACT_LAYERS)}."
            )
        return ACT_LAYERS[key]
    if isinstance(act_layer, type) and issubclass(act_layer, nn.Module):
        if "inplace" in inspect.signature(act_layer).parameters:
            return partial(act_layer, inplace=True)
        return act_layer
    if callable(act_layer):
        return act_layer
    raise TypeError(
        f"act_layer must be a name ({', '.join(ACT_LAYERS)}), an nn.Module class or a "
        f"factory, not {act_layer!r}."
    )


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (at least ``divisor``).

    Hardware runs channel counts that are multiples of 8 faster. With the default
    ``round_limit``, rounding down may not lose more than 10% of the channels
    (TensorFlow's rule, which timm and torchvision copy): the scaled widths of every
    EfficientNet / MobileNet checkpoint depend on it. timm sizes squeeze-and-excitation
    bottlenecks with ``round_limit=0`` (plain rounding).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


class ConvNormAct(nn.Sequential):
    """conv -> norm [-> act] as a Sequential, so the keys are torchvision's ``.0`` / ``.1``.

    No conv bias (the norm has its own shift); "same" padding for odd kernels.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
        act_layer: ActFactory | None = None,
    ) -> None:
        conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=(kernel_size - 1) // 2,
            groups=groups, bias=False,
        )
        layers = [conv, norm_layer(out_chs)]
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)


def init_linear_head(layer: nn.Module) -> None:
    """Fresh classifier: small normal weights, zero bias (what timm and torchvision do).

    Small logits at the start keep the first steps' gradients from the new head from
    swamping the pretrained layers below it.
    """
    if isinstance(layer, nn.Linear):
        nn.init.normal_(layer.weight, std=0.01)
        nn.init.zeros_(layer.bias)


def create_classifier(
    num_features: int,
    num_classes: int,
    *,
    like: torch.Tensor | None = None,
    init: bool = True,
) -> nn.Module:
    """The classifier head of every family: ``Linear(num_features, num_classes)``, or
    ``Identity`` for 0 classes, so that the model returns its pooled features.

    ``like`` gives the device and dtype: a head reset after ``model.cuda()`` or
    ``.half()`` lands where the model lives, and on the meta device it allocates
    nothing. ``init=False`` keeps PyTorch's default initialisation; a family's
    constructor asks for it because its own init pass then covers the head, in the
    reference's order of random draws, so seeded models stay the same.
    """
    if num_classes < 0:
        raise ValueError(
            f"num_classes must be 0 or more, got {num_classes}; "
            f"use 0 for a model that returns its pooled features."
        )
    if num_classes == 0:
        return nn.Identity()
    kwargs = {} if like is None else {"device": like.device, "dtype": like.dtype}
    layer = nn.Linear(num_features, num_classes, **kwargs)
    if init:
        init_linear_head(layer)
    return layer

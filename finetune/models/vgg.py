"""VGG (Simonyan & Zisserman 2015): stacks of 3x3 convolutions, five max-pools, an MLP.

``cfgs`` are the columns of the paper's Table 1: a number is a 3x3 convolution (padding
1) with that many filters, "M" a 2x2/2 max-pool. A (11 weight layers), B (13), D (16)
and E (19). The ``_bn`` variants put a BatchNorm between each convolution and its ReLU
(not in the paper; torchvision's later addition). Keys are torchvision's
(``features.N``, ``classifier.N``), so its ImageNet weights load strictly.

    block1..block5: convolutions then a pool, each halving H and W   (B, 512, H/32, W/32)
    avgpool to 7x7 (identity at 224 px)                              (B, 512, 7, 7)
    fc6 4096 -> fc7 4096 (pre_logits) -> fc8 num_classes
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from .layers import ActFactory, create_classifier, get_act_layer, init_linear_head

__all__ = ["VGG", "cfgs"]

cfgs: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}


class VGG(Backbone):
    """VGG built from a column of the paper's table.

    Args:
        layers: a ``cfgs`` column, e.g. ``cfgs["D"]`` for VGG-16.
        num_classes: outputs of the last Linear; 0 makes it an Identity.
        batch_norm: BatchNorm after every convolution (the ``_bn`` variants).
        act_layer: "relu" (default), "leaky_relu", "prelu", "elu", "selu", or an nn.Module
            class; used after every convolution and hidden Linear.
        drop_rate: dropout after fc6 and fc7 while training (0.5 in the paper).
    """

    default_unfreeze = 2  # the MLP and block5
    classifier_path = "classifier.6"  # fc8

    def __init__(
        self,
        layers: Sequence[int | str] = cfgs["D"],
        *,
        num_classes: int = 1000,
        batch_norm: bool = False,
        act_layer: str | type[nn.Module] | ActFactory = "relu",
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        act = get_act_layer(act_layer)
        modules: list[nn.Module] = []
        # (first, end) index of each block inside ``features``: a block ends with its pool.
        self._block_bounds: list[tuple[int, int]] = []
        first, in_chs = 0, 3
        for value in layers:
            if value == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
                self._block_bounds.append((first, len(modules)))
                first = len(modules)
                continue
            if not isinstance(value, int):
                raise ValueError(f"Invalid VGG cfg entry {value!r}: use a channel count or 'M'.")
            modules.append(nn.Conv2d(in_chs, value, kernel_size=3, padding=1))
            if batch_norm:
                modules.append(nn.BatchNorm2d(value))
            modules.append(act())
            in_chs = value
        if first != len(modules):
            raise ValueError(f"A VGG cfg ends with a max-pool 'M'; got {list(layers)}.")
        self.features = nn.Sequential(*modules)

        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.num_features = 4096
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Linear(in_chs * 7 * 7, 4096),  # fc6
            act(),
            nn.Dropout(p=drop_rate),
            nn.Linear(4096, 4096),  # fc7
            act(),
            nn.Dropout(p=drop_rate),
            create_classifier(4096, num_classes, init=False),  # fc8
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation lets the 16- and 19-layer nets train from scratch without the
        # paper's trick of initialising them from the trained 11-layer net.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                init_linear_head(module)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, H, W) -> (B, 512, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512 * 7 * 7)
        x = self.classifier[:-1](x)  # fc6, fc7: (B, 4096)
        return x if pre_logits else self.classifier[-1](x)

    def stages(self) -> list[Stage]:
        blocks = [
            Stage(f"block{index + 1}", list(self.features[first:end]))
            for index, (first, end) in enumerate(self._block_bounds)
        ]
        # fc6 and fc7 with their activations (PReLU holds parameters) and dropout.
        return blocks + [Stage("pre_logits", list(self.classifier[:-1]))]


def _tv_cfg(url: str, top1: float) -> PretrainedCfg:
    """torchvision's IMAGENET1K_V1 weights: 224 px, bilinear, resize 256 + centre crop 224."""
    return PretrainedCfg(
        url=url, source="torchvision", license="bsd-3-clause",
        extra={"imagenet_top1": top1, "weights": "IMAGENET1K_V1"},
    )


_CFGS: dict[str, PretrainedCfg] = {
    "vgg11": _tv_cfg("https://download.pytorch.org/models/vgg11-8a719046.pth", 69.020),
    "vgg11_bn": _tv_cfg("https://download.pytorch.org/models/vgg11_bn-6002323d.pth", 70.370),
    "vgg13": _tv_cfg("https://download.pytorch.org/models/vgg13-19584684.pth", 69.928),
    "vgg13_bn": _tv_cfg("https://download.pytorch.org/models/vgg13_bn-abd245e5.pth", 71.586),
    "vgg16": _tv_cfg("https://download.pytorch.org/models/vgg16-397923af.pth", 71.592),
    "vgg16_bn": _tv_cfg("https://download.pytorch.org/models/vgg16_bn-6c64b313.pth", 73.360),
    "vgg19": _tv_cfg("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", 72.376),
    "vgg19_bn": _tv_cfg("https://download.pytorch.org/models/vgg19_bn-c79401a0.pth", 74.218),
}


def _create_vgg(variant: str, *, pretrained: bool = False, **kwargs) -> VGG:
    return build_backbone(VGG, variant, _CFGS[variant], pretrained=pretrained, **kwargs)


@register_model
def vgg11(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-11 (configuration A): 132,863,336 parameters."""
    model_args = dict(layers=cfgs["A"])
    return _create_vgg("vgg11", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vgg11_bn(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-11 with BatchNorm: 132,868,840 parameters."""
    model_args = dict(layers=cfgs["A"], batch_norm=True)
    return _create_vgg("vgg11_bn", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vgg13(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-13 (configuration B): 133,047,848 parameters."""
    model_args = dict(layers=cfgs["B"])
    return _create_vgg("vgg13", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vgg13_bn(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-13 with BatchNorm: 133,053,736 parameters."""
    model_args = dict(layers=cfgs["B"], batch_norm=True)
    return _create_vgg("vgg13_bn", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vgg16(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-16 (configuration D): 138,357,544 parameters."""
    model_args = dict(layers=cfgs["D"])
    return _create_vgg("vgg16", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vgg16_bn(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-16 with BatchNorm: 138,365,992 parameters."""
    model_args = dict(layers=cfgs["D"], batch_norm=True)
    return _create_vgg("vgg16_bn", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-19 (configuration E): 143,667,240 parameters."""
    model_args = dict(layers=cfgs["E"])
    return _create_vgg("vgg19", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_bn(*, pretrained: bool = False, **kwargs) -> VGG:
    """VGG-19 with BatchNorm: 143,678,248 parameters."""
    model_args = dict(layers=cfgs["E"], batch_norm=True)
    return _create_vgg("vgg19_bn", pretrained=pretrained, **dict(model_args, **kwargs))

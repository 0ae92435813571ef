"""DenseNet-BC (Huang et al. 2017): every layer sees the feature maps of all layers before
it in its block, concatenated.

Layer names and shapes are torchvision's, so its ImageNet checkpoints load strictly and
give the same outputs (``adapt_state_dict`` also reads the old ``norm.1`` key names those
checkpoint files still use).

    stem:        conv0 7x7/2 -> norm0 -> relu0 -> pool0 3x3/2      (B, 2k, H/4, W/4)
    denseblock1: n1 dense layers, each adding k channels             (B, c1, H/4, W/4)
    transition1: BN -> act -> 1x1 conv halving channels -> avgpool/2 (B, c1/2, H/8, W/8)
    denseblock2 / transition2 / denseblock3 / transition3 / denseblock4
    norm5 -> relu5                                                   (B, C, H/32, W/32)
    head:        global average pool -> classifier                   (B, num_classes)

where k is the growth rate and a dense layer is BN -> act -> 1x1 conv (to 4k, the "B" of
BC) -> BN -> act -> 3x3 conv (to k): pre-activation, as in the paper.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import nn

from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from ._weights import StateDict
from .layers import create_classifier, get_act_layer, init_linear_head

__all__ = ["DENSENET_ARCHS", "DenseBlock", "DenseLayer", "DenseNet", "DenseNetArch", "Transition"]

ActFactory = Callable[[], nn.Module]


class DenseLayer(nn.Module):
    """BN -> act -> 1x1 conv (bn_size * k) -> BN -> act -> 3x3 conv (k): k new channels.

    Takes the list of all earlier feature maps of its block and concatenates them itself,
    so that ``memory_efficient`` can recompute the concatenation in the backward pass
    instead of storing it (it grows quadratically with the block's depth).
    """

    def __init__(
        self,
        in_chs: int,
        *,
        growth_rate: int,
        bn_size: int,
        act_layer: ActFactory,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        mid_chs = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.relu1 = act_layer()  # torchvision's name, whatever the activation
        self.conv1 = nn.Conv2d(in_chs, mid_chs, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid_chs)
        self.relu2 = act_layer()
        self.conv2 = nn.Conv2d(mid_chs, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        x = torch.cat(features, dim=1)  # (B, in_chs, H, W)
        return self.conv1(self.relu1(self.norm1(x)))  # (B, bn_size * k, H, W)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and any(f.requires_grad for f in features):
            x = checkpoint.checkpoint(self.bottleneck, *features, use_reentrant=False)
        else:
            x = self.bottleneck(*features)
        x = self.conv2(self.relu2(self.norm2(x)))  # (B, k, H, W)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; the output is the input and every layer's k channels.

    (B, C, H, W) -> (B, C + num_layers * k, H, W)
    """

    def __init__(self, num_layers: int, in_chs: int, *, growth_rate: int, **layer_args) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_chs + i * growth_rate, growth_rate=growth_rate, **layer_args)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """BN -> act -> 1x1 conv -> 2x2 average pool: halves the resolution (and, in
    DenseNet-BC, the channels: compression 0.5) between dense blocks."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: ActFactory) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.relu = act_layer()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(Backbone):
    """DenseNet-BC: a stem, four dense blocks joined by transitions, a BN, a classifier.

    Args:
        growth_rate: k, the channels each dense layer adds (32; 48 in DenseNet-161).
        block_config: dense layers per block, e.g. (6, 12, 24, 16) for DenseNet-121.
        num_init_features: stem channels (2k in the paper).
        bn_size: bottleneck width as a multiple of k (4: the 1x1 conv gives 4k channels).
        num_classes: classifier outputs; 0 leaves no classifier (Identity).
        act_layer: "relu" (the default, torchvision's), "leaky_relu", "prelu", "elu",
            "selu", or an nn.Module class.
        drop_rate: dropout on each dense layer's new channels while training
            (torchvision's meaning of ``drop_rate`` for DenseNet).
        memory_efficient: recompute each layer's concatenation and bottleneck in the
            backward pass instead of storing them (Pleiss et al. 2017): much less memory
            when fine-tuning, about 15-20 % slower. The weights are the same.
    """

    default_unfreeze = 1
    classifier_path = "classifier"

    def __init__(
        self,
        *,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        num_classes: int = 1000,
        act_layer: str | type[nn.Module] | ActFactory = "relu",
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        act = get_act_layer(act_layer)
        self.num_blocks = len(block_config)

        stem = [
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", act()),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
        self.features = nn.Sequential(OrderedDict(stem))

        chs = num_init_features
        for i, num_layers in enumerate(block_config, start=1):
            block = DenseBlock(
                num_layers, chs, growth_rate=growth_rate, bn_size=bn_size, act_layer=act,
                drop_rate=drop_rate, memory_efficient=memory_efficient,
            )
            self.features.add_module(f"denseblock{i}", block)
            chs += num_layers * growth_rate
            if i < len(block_config):
                self.features.add_module(f"transition{i}", Transition(chs, chs // 2, act))
                chs //= 2
        # The blocks are pre-activation, so the last one's output still needs BN and the
        # activation before pooling (torchvision applies the ReLU functionally in forward;
        # as a module it has no weights, so the keys stay the same).
        self.features.add_module("norm5", nn.BatchNorm2d(chs))
        self.features.add_module("relu5", act())

        self.num_features = chs
        self.num_classes = num_classes
        self.classifier = create_classifier(chs, num_classes, init=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        init_linear_head(self.classifier)

    def adapt_state_dict(self, state: StateDict) -> StateDict:
        """Read torchvision's checkpoint files, which predate dots being banned from
        module names: ``denselayer1.norm.1.weight`` is ``denselayer1.norm1.weight`` here."""
        return {_OLD_KEY.sub(r"\1\2", key): value for key, value in state.items()}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, H, W) -> (B, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, num_features)
        return x if pre_logits else self.classifier(x)

    def stages(self) -> list[Stage]:
        # Each transition belongs to the block before it (the paper's Table 1 order); the
        # final norm5 / relu5 to the last block, whose output they normalise.
        f = self.features
        stages = [Stage("stem", [f.conv0, f.norm0, f.relu0, f.pool0])]
        for i in range(1, self.num_blocks + 1):
            name = f"denseblock{i}"
            tail = [getattr(f, f"transition{i}")] if i < self.num_blocks else [f.norm5, f.relu5]
            stages.append(Stage(name, [getattr(f, name), *tail]))
        return stages


# torchvision's old names: "<...>.denselayerN.norm.1.weight" -> "<...>.denselayerN.norm1.weight".
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


@dataclass(frozen=True)
class DenseNetArch:
    """One column of the paper's Table 1 (DenseNet-161 is torchvision's wider variant)."""

    growth_rate: int  # k
    block_config: tuple[int, int, int, int]  # dense layers in blocks 1-4
    num_init_features: int  # stem channels, 2k


DENSENET_ARCHS: dict[str, DenseNetArch] = {
    "densenet121": DenseNetArch(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
    "densenet161": DenseNetArch(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96),
    "densenet169": DenseNetArch(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64),
    "densenet201": DenseNetArch(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64),
}


def _tv_cfg(url: str, top1: float) -> PretrainedCfg:
    """torchvision's IMAGENET1K_V1 weights (ported from LuaTorch): 224 px, bilinear,
    resize 256 + centre crop 224."""
    return PretrainedCfg(
        url=url, source="torchvision", license="bsd-3-clause",
        extra={"imagenet_top1": top1, "weights": "IMAGENET1K_V1"},
    )


_CFGS: dict[str, PretrainedCfg] = {
    "densenet121": _tv_cfg("https://download.pytorch.org/models/densenet121-a639ec97.pth", 74.434),
    "densenet161": _tv_cfg("https://download.pytorch.org/models/densenet161-8d451a50.pth", 77.138),
    "densenet169": _tv_cfg("https://download.pytorch.org/models/densenet169-b2777c0a.pth", 75.600),
    "densenet201": _tv_cfg("https://download.pytorch.org/models/densenet201-c1103571.pth", 76.896),
}


def _create_densenet(variant: str, *, pretrained: bool = False, **kwargs) -> DenseNet:
    arch = DENSENET_ARCHS[variant]
    model_args = dict(
        growth_rate=arch.growth_rate, block_config=arch.block_config,
        num_init_features=arch.num_init_features,
    )
    return build_backbone(
        DenseNet, variant, _CFGS[variant], pretrained=pretrained, **dict(model_args, **kwargs)
    )


@register_model
def densenet121(*, pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-121: k=32, blocks (6, 12, 24, 16), 8.0 M parameters."""
    return _create_densenet("densenet121", pretrained=pretrained, **kwargs)


@register_model
def densenet161(*, pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-161: k=48, blocks (6, 12, 36, 24), 28.7 M parameters."""
    return _create_densenet("densenet161", pretrained=pretrained, **kwargs)


@register_model
def densenet169(*, pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-169: k=32, blocks (6, 12, 32, 32), 14.1 M parameters."""
    return _create_densenet("densenet169", pretrained=pretrained, **kwargs)


@register_model
def densenet201(*, pretrained: bool = False, **kwargs) -> DenseNet:
    """DenseNet-201: k=32, blocks (6, 12, 48, 32), 20.0 M parameters."""
    return _create_densenet("densenet201", pretrained=pretrained, **kwargs)

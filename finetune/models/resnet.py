"""ResNet (He et al. 2016) and its descendants: Wide ResNet, ResNeXt, and SE / ECA / CBAM
attention as block options.

Layer names and shapes are torchvision's, so its ImageNet checkpoints load strictly and
give the same outputs; blocks with attention name it ``se`` as timm does, so timm's
``seresnet50`` checkpoints load too.

    stem:    conv1 7x7/2 -> bn1 -> act1 -> maxpool 3x3/2         (B, 64, H/4, W/4)
    layer1:  blocks at  64 planes, stride 1                      (B,  64·e, H/4,  W/4)
    layer2:  blocks at 128 planes, stride 2                      (B, 128·e, H/8,  W/8)
    layer3:  blocks at 256 planes, stride 2                      (B, 256·e, H/16, W/16)
    layer4:  blocks at 512 planes, stride 2                      (B, 512·e, H/32, W/32)
    head:    global average pool -> fc                           (B, num_classes)

where e is the block's expansion (1 for BasicBlock, 4 for Bottleneck).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from .attention import create_attn
from .layers import ACT_LAYERS, ActFactory, create_classifier, get_act_layer, init_linear_head

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "get_act_layer"]


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that follows has its own shift.
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        act_layer: ActFactory = ACT_LAYERS["relu"],
        attn_layer: str | None = None,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(
                f"BasicBlock supports groups=1 and width_per_group=64 only (got groups={groups}, "
                f"width_per_group={base_width}); use a Bottleneck model (resnet50, resnext50_32x4d, "
                f"wide_resnet50_2) for grouped or wide blocks."
            )
        if stride_in_1x1:
            raise ValueError(
                "stride_in_1x1=True applies to Bottleneck blocks only; BasicBlock has no 1x1 conv."
            )
        self.conv1 = _conv3x3(in_chs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = act_layer()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = create_attn(attn_layer, planes)  # timm's name, whatever the attention kind
        self.act2 = act_layer()
        self.downsample = downsample

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.act2(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (grouped for ResNeXt) -> 1x1 expand by 4, and a shortcut.

    ``stride_in_1x1=False`` strides in the 3x3 conv (torchvision's "v1.5", about 0.5 %
    more top-1 at a few more FLOPs); ``True`` strides in the first 1x1 conv as the paper's
    v1 does. The parameters are the same, so either loads the other's weights.
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        act_layer: ActFactory = ACT_LAYERS["relu"],
        attn_layer: str | None = None,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        # ResNeXt and Wide ResNet widen the 3x3 layer only: width = planes * (base_width / 64) * groups.
        width = int(planes * base_width / 64) * groups
        out_chs = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv1x1(in_chs, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = act_layer()
        self.conv2 = _conv3x3(width, width, stride_3x3, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = act_layer()
        self.conv3 = _conv1x1(width, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.se = create_attn(attn_layer, out_chs)  # timm's name, whatever the attention kind
        self.act3 = act_layer()
        self.downsample = downsample

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.act3(out + shortcut)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}

# Planes of layer1..layer4; each stage after the first halves the resolution.
_STAGE_PLANES = (64, 128, 256, 512)


class ResNet(Backbone):
    """ResNet, Wide ResNet and ResNeXt, optionally with attention in every block.

    Args:
        block: ``BasicBlock`` / ``Bottleneck`` or their names "basic" / "bottleneck".
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: classifier outputs; 0 leaves no classifier (``fc`` is Identity).
        groups: 3x3 convolution groups (ResNeXt's cardinality, 32 in resnext50_32x4d).
        width_per_group: channels per group at 64 planes (4 in resnext50_32x4d,
            128 in wide_resnet50_2, 64 in plain ResNet).
        act_layer: "relu" (nn.ReLU, the default), "leaky_relu", "prelu", "elu", "selu",
            or an nn.Module class.
        attn_layer: None, "se", "eca" or "cbam": applied to each block's residual branch
            after its last BatchNorm, before the addition (as timm does).
        stride_in_1x1: stride in the bottleneck's first 1x1 conv (paper v1) instead of
            its 3x3 conv (torchvision v1.5, the default; the weights are the same shapes).
        zero_init_last: start each residual branch's last BatchNorm at zero so every
            block begins as the identity (Goyal et al. 2017): trains better from scratch,
            and is irrelevant once pretrained weights load.
        drop_rate: dropout before the classifier while training.
    """

    default_unfreeze = 1
    classifier_path = "fc"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck] | str,
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        act_layer: str | type[nn.Module] | ActFactory = "relu",
        attn_layer: str | None = None,
        stride_in_1x1: bool = False,
        zero_init_last: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(block, str):
            if block not in _BLOCKS:
                raise ValueError(f"Unknown block '{block}'. Valid names: {', '.join(_BLOCKS)}.")
            block = _BLOCKS[block]
        if len(layers) != len(_STAGE_PLANES):
            raise ValueError(f"layers needs {len(_STAGE_PLANES)} block counts, got {tuple(layers)}.")
        act = get_act_layer(act_layer)
        self.drop_rate = drop_rate

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = act()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        block_args = dict(
            groups=groups, base_width=width_per_group, act_layer=act,
            attn_layer=attn_layer, stride_in_1x1=stride_in_1x1,
        )
        in_chs = 64
        for index, (planes, depth) in enumerate(zip(_STAGE_PLANES, layers, strict=True)):
            stride = 1 if index == 0 else 2
            stage, in_chs = self._make_stage(block, in_chs, planes, depth, stride, block_args)
            self.add_module(f"layer{index + 1}", stage)

        self.num_features = in_chs
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.fc = create_classifier(in_chs, num_classes, init=False)
        self._init_weights(zero_init_last)

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck],
        in_chs: int,
        planes: int,
        depth: int,
        stride: int,
        block_args: dict,
    ) -> tuple[nn.Sequential, int]:
        out_chs = planes * block.expansion
        downsample = None
        if stride != 1 or in_chs != out_chs:
            # Projection shortcut (the paper's option B): only where the shape changes.
            downsample = nn.Sequential(_conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))
        blocks = [block(in_chs, planes, stride=stride, downsample=downsample, **block_args)]
        blocks += [block(out_chs, planes, **block_args) for _ in range(1, depth)]
        return nn.Sequential(*blocks), out_chs

    def _init_weights(self, zero_init_last: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    module.zero_init_last()
        init_linear_head(self.fc)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # (B, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, num_features)
        if pre_logits:
            return x
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)

    def stages(self) -> list[Stage]:
        # act1 belongs to the stem: with PReLU it holds a parameter.
        return [
            Stage("stem", [self.conv1, self.bn1, self.act1]),
            Stage("layer1", [self.layer1]),
            Stage("layer2", [self.layer2]),
            Stage("layer3", [self.layer3]),
            Stage("layer4", [self.layer4]),
        ]


def _tv_cfg(url: str, top1: float) -> PretrainedCfg:
    """torchvision's IMAGENET1K_V1 weights: 224 px, bilinear, resize 256 + centre crop 224."""
    return PretrainedCfg(
        url=url, source="torchvision", license="bsd-3-clause",
        extra={"imagenet_top1": top1, "weights": "IMAGENET1K_V1"},
    )


_CFGS: dict[str, PretrainedCfg] = {
    "resnet18": _tv_cfg("https://download.pytorch.org/models/resnet18-f37072fd.pth", 69.758),
    "resnet34": _tv_cfg("https://download.pytorch.org/models/resnet34-b627a593.pth", 73.314),
    "resnet50": _tv_cfg("https://download.pytorch.org/models/resnet50-0676ba61.pth", 76.130),
    "resnet101": _tv_cfg("https://download.pytorch.org/models/resnet101-63fe2227.pth", 77.374),
    "resnet152": _tv_cfg("https://download.pytorch.org/models/resnet152-394f9c45.pth", 78.312),
    "wide_resnet50_2": _tv_cfg("https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth", 78.468),
    "wide_resnet101_2": _tv_cfg("https://download.pytorch.org/models/wide_resnet101_2-32ee1156.pth", 78.848),
    "resnext50_32x4d": _tv_cfg("https://download.pytorch.org/models/resnext50_32x4d-7cdf4587.pth", 77.618),
    "resnext101_32x8d": _tv_cfg("https://download.pytorch.org/models/resnext101_32x8d-8ba56ff5.pth", 79.312),
    # timm's RandAugment-trained SE-ResNet-50 ("ra2_in1k"): same keys as ours, 224 px, bicubic.
    "seresnet50": PretrainedCfg(
        interpolation="bicubic",
        hf_hub_id="timm/seresnet50.ra2_in1k",
        url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/seresnet50_ra_224-8efdb4bb.pth",
        source="timm", license="apache-2.0",
    ),
    # No published ImageNet weights with a plain stem: train them, or load a file with weights=.
    "ecaresnet50": PretrainedCfg(),
    "cbam_resnet50": PretrainedCfg(),
}


def _create_resnet(
    variant: str,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs,
) -> ResNet:
    return build_backbone(
        ResNet, variant, _CFGS[variant],
        pretrained=pretrained, weights=weights, num_classes=num_classes, **kwargs,
    )


@register_model
def resnet18(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2), 11.7 M parameters."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet("resnet18", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-34: BasicBlock x (3, 4, 6, 3), 21.8 M parameters."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet("resnet34", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50: Bottleneck x (3, 4, 6, 3), 25.6 M parameters."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_resnet("resnet50", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-101: Bottleneck x (3, 4, 23, 3), 44.5 M parameters."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return _create_resnet("resnet101", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnet152(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-152: Bottleneck x (3, 8, 36, 3), 60.2 M parameters."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return _create_resnet("resnet152", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def wide_resnet50_2(*, pretrained: bool = False, **kwargs) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): ResNet-50 with 3x3 layers twice as wide."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), width_per_group=128)
    return _create_resnet("wide_resnet50_2", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def wide_resnet101_2(*, pretrained: bool = False, **kwargs) -> ResNet:
    """Wide ResNet-101-2: ResNet-101 with 3x3 layers twice as wide."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3), width_per_group=128)
    return _create_resnet("wide_resnet101_2", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnext50_32x4d(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017): 32 groups of 4 channels in the first stage's 3x3."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4)
    return _create_resnet("resnext50_32x4d", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def resnext101_32x8d(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d: 32 groups of 8 channels in the first stage's 3x3."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=32, width_per_group=8)
    return _create_resnet("resnext101_32x8d", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def seresnet50(*, pretrained: bool = False, **kwargs) -> ResNet:
    """SE-ResNet-50 (Hu et al. 2018): ResNet-50 with squeeze-and-excitation, 28.1 M parameters."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), attn_layer="se")
    return _create_resnet("seresnet50", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def ecaresnet50(*, pretrained: bool = False, **kwargs) -> ResNet:
    """ECA-ResNet-50 (Wang et al. 2020): ResNet-50 plus 86 parameters of channel attention."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), attn_layer="eca")
    return _create_resnet("ecaresnet50", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def cbam_resnet50(*, pretrained: bool = False, **kwargs) -> ResNet:
    """CBAM-ResNet-50 (Woo et al. 2018): channel then spatial attention, 28.09 M parameters."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), attn_layer="cbam")
    return _create_resnet("cbam_resnet50", pretrained=pretrained, **dict(model_args, **kwargs))

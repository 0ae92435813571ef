"""ShuffleNet v2 (Ma et al. 2018): cheap blocks that split the channels in two, transform
one half, and shuffle the halves together so that information crosses between them.

Layer names and shapes are torchvision's, so its ImageNet checkpoints load strictly and
give the same outputs.

    stem:    conv1 3x3/2 -> BN -> ReLU -> maxpool 3x3/2    (B, 24, H/4, W/4)
    stage2:  a stride-2 unit, then stride-1 units         (B, c2, H/8, W/8)
    stage3:                                                (B, c3, H/16, W/16)
    stage4:                                                (B, c4, H/32, W/32)
    conv5:   1x1 conv -> BN -> ReLU                        (B, c5, H/32, W/32)
    head:    global average pool -> fc                     (B, num_classes)

with the widths c2..c5 of each size in ``SHUFFLENET_V2_CHANNELS`` (the paper's Table 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from .layers import create_classifier, init_linear_head

__all__ = [
    "SHUFFLENET_V2_CHANNELS",
    "SHUFFLENET_V2_REPEATS",
    "ShuffleNetV2",
    "ShuffleUnit",
    "channel_shuffle",
]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups.

    With 2 groups, channels [a0 a1 a2 | b0 b1 b2] become [a0 b0 a1 b1 a2 b2]: after the
    next split each half holds channels of both branches, so the two branches of the
    following unit see each other's features.
    """
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)  # (B, g, C/g, H, W)
    x = x.transpose(1, 2).contiguous()  # (B, C/g, g, H, W)
    return x.view(batch, channels, height, width)  # (B, C, H, W), groups interleaved


def _depthwise(chs: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(chs, chs, 3, stride, padding=1, groups=chs, bias=False)


def _pointwise(in_chs: int, out_chs: int) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, bias=False)


class ShuffleUnit(nn.Module):
    """The ShuffleNet v2 unit (the paper's Fig. 3c / 3d), torchvision's ``InvertedResidual``.

    stride 1: split the channels in half; the left half passes untouched, the right goes
        through 1x1 -> 3x3 depthwise -> 1x1 (``branch2``).
    stride 2: no split; both branches see the whole input and halve the resolution:
        3x3 depthwise/2 -> 1x1 (``branch1``), and 1x1 -> 3x3 depthwise/2 -> 1x1 (``branch2``),
        so the channels double.
    Then the halves are concatenated and channel-shuffled. The depthwise convs have no
    activation after them (as in the paper: it would add cost for no accuracy).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleUnit stride must be 1 or 2, got {stride}.")
        branch_chs = out_chs // 2
        if stride == 1 and in_chs != 2 * branch_chs:
            raise ValueError(
                f"A stride-1 ShuffleUnit keeps its width: in_chs ({in_chs}) must equal "
                f"out_chs ({out_chs}), an even number."
            )
        self.stride = stride
        self.branch1: nn.Module | None = None
        if stride == 2:
            self.branch1 = nn.Sequential(
                _depthwise(in_chs, stride),
                nn.BatchNorm2d(in_chs),
                _pointwise(in_chs, branch_chs),
                nn.BatchNorm2d(branch_chs),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            _pointwise(in_chs if stride == 2 else branch_chs, branch_chs),
            nn.BatchNorm2d(branch_chs),
            nn.ReLU(inplace=True),
            _depthwise(branch_chs, stride),
            nn.BatchNorm2d(branch_chs),
            _pointwise(branch_chs, branch_chs),
            nn.BatchNorm2d(branch_chs),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            left, right = x.chunk(2, dim=1)  # (B, C/2, H, W) each
            out = torch.cat((left, self.branch2(right)), dim=1)  # (B, C, H, W)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)  # (B, C_out, H/2, W/2)
        return channel_shuffle(out, 2)


# Units per stage (stage2, stage3, stage4), the same for every width (Table 5).
SHUFFLENET_V2_REPEATS: tuple[int, int, int] = (4, 8, 4)

# Output channels of the stem, stage2, stage3, stage4 and conv5 per width (Table 5).
SHUFFLENET_V2_CHANNELS: dict[str, tuple[int, int, int, int, int]] = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


class ShuffleNetV2(Backbone):
    """ShuffleNet v2: stem, three stages of shuffle units, a 1x1 conv, a classifier.

    Args:
        stages_repeats: units in stage2, stage3, stage4 (``SHUFFLENET_V2_REPEATS``).
        stages_out_channels: output channels of the stem, the three stages and conv5,
            one of ``SHUFFLENET_V2_CHANNELS``.
        num_classes: classifier outputs; 0 leaves no classifier (Identity).
    """

    default_unfreeze = 2
    classifier_path = "fc"

    def __init__(
        self,
        *,
        stages_repeats: Sequence[int] = SHUFFLENET_V2_REPEATS,
        stages_out_channels: Sequence[int] = SHUFFLENET_V2_CHANNELS["x1_0"],
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(stages_repeats) != 3 or len(stages_out_channels) != 5:
            raise ValueError(
                f"ShuffleNetV2 needs 3 stage repeats and 5 channel counts (stem, stage2-4, "
                f"conv5), got {tuple(stages_repeats)} and {tuple(stages_out_channels)}."
            )
        stem_chs, *stage_chs, last_chs = stages_out_channels
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem_chs, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_chs),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        chs = stem_chs
        for index, (repeats, out_chs) in enumerate(zip(stages_repeats, stage_chs, strict=True)):
            units = [ShuffleUnit(chs, out_chs, 2)]
            units += [ShuffleUnit(out_chs, out_chs, 1) for _ in range(repeats - 1)]
            self.add_module(f"stage{index + 2}", nn.Sequential(*units))  # the paper's numbering
            chs = out_chs

        self.conv5 = nn.Sequential(
            _pointwise(chs, last_chs),
            nn.BatchNorm2d(last_chs),
            nn.ReLU(inplace=True),
        )
        self.num_features = last_chs
        self.num_classes = num_classes
        self.fc = create_classifier(last_chs, num_classes, init=False)
        init_linear_head(self.fc)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))  # (B, 24, H/4, W/4)
        x = self.stage2(x)  # (B, c2, H/8, W/8)
        x = self.stage3(x)  # (B, c3, H/16, W/16)
        x = self.stage4(x)  # (B, c4, H/32, W/32)
        return self.conv5(x)  # (B, c5, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, num_features)
        return x if pre_logits else self.fc(x)

    def stages(self) -> list[Stage]:
        # conv5 joins stage4: unfreezing the last stage includes the layer that produces
        # the pooled features.
        return [
            Stage("stem", [self.conv1, self.maxpool]),
            Stage("stage2", [self.stage2]),
            Stage("stage3", [self.stage3]),
            Stage("stage4", [self.stage4, self.conv5]),
        ]


def _tv_cfg(url: str, top1: float, resize: int = 256) -> PretrainedCfg:
    """torchvision's IMAGENET1K_V1 weights: 224 px, bilinear, resize ``resize`` + centre
    crop 224 (x1.5 and x2.0 were trained later, with a 232 px resize)."""
    return PretrainedCfg(
        crop_pct=224 / resize, url=f"https://download.pytorch.org/models/{url}",
        source="torchvision", license="bsd-3-clause",
        extra={"imagenet_top1": top1, "weights": "IMAGENET1K_V1"},
    )


_CFGS: dict[str, PretrainedCfg] = {
    "shufflenet_v2_x0_5": _tv_cfg("shufflenetv2_x0.5-f707e7126e.pth", 60.552),
    "shufflenet_v2_x1_0": _tv_cfg("shufflenetv2_x1-5666bf0f80.pth", 69.362),
    "shufflenet_v2_x1_5": _tv_cfg("shufflenetv2_x1_5-3c479a10.pth", 72.996, resize=232),
    "shufflenet_v2_x2_0": _tv_cfg("shufflenetv2_x2_0-8be3c8ee.pth", 76.230, resize=232),
}


def _create_shufflenet(variant: str, *, pretrained: bool = False, **kwargs) -> ShuffleNetV2:
    width = variant.removeprefix("shufflenet_v2_")  # "x1_0"
    model_args = dict(
        stages_repeats=SHUFFLENET_V2_REPEATS, stages_out_channels=SHUFFLENET_V2_CHANNELS[width],
    )
    return build_backbone(
        ShuffleNetV2, variant, _CFGS[variant], pretrained=pretrained, **dict(model_args, **kwargs)
    )


@register_model
def shufflenet_v2_x0_5(*, pretrained: bool = False, **kwargs) -> ShuffleNetV2:
    """ShuffleNet v2 0.5x: 1.4 M parameters."""
    return _create_shufflenet("shufflenet_v2_x0_5", pretrained=pretrained, **kwargs)


@register_model
def shufflenet_v2_x1_0(*, pretrained: bool = False, **kwargs) -> ShuffleNetV2:
    """ShuffleNet v2 1.0x: 2.3 M parameters."""
    return _create_shufflenet("shufflenet_v2_x1_0", pretrained=pretrained, **kwargs)


@register_model
def shufflenet_v2_x1_5(*, pretrained: bool = False, **kwargs) -> ShuffleNetV2:
    """ShuffleNet v2 1.5x: 3.5 M parameters."""
    return _create_shufflenet("shufflenet_v2_x1_5", pretrained=pretrained, **kwargs)


@register_model
def shufflenet_v2_x2_0(*, pretrained: bool = False, **kwargs) -> ShuffleNetV2:
    """ShuffleNet v2 2.0x: 7.4 M parameters."""
    return _create_shufflenet("shufflenet_v2_x2_0", pretrained=pretrained, **kwargs)

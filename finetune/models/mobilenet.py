"""MobileNet v1, v2 and v3: small networks built from depthwise-separable convolutions.

* v1 (Howard et al. 2017): a 3x3 depthwise conv then a 1x1 pointwise conv, each with
  BN and ReLU6, replacing every full 3x3 conv. Layout and keys are timm's
  ``mobilenetv1_100`` (``conv_stem``, ``bn1``, ``blocks.i.j.conv_dw`` ...), whose
  ImageNet weights load strictly.
* v2 (Sandler et al. 2018): the inverted residual, 1x1 expand by t -> 3x3 depthwise ->
  1x1 *linear* projection, with a shortcut between the narrow ends. Keys are
  torchvision's ``mobilenet_v2`` (``features.N.conv...``, ``classifier.1``).
* v3 (Howard et al. 2019): v2's block found by architecture search, with 5x5 kernels,
  squeeze-excitation gated by a hard sigmoid, hard-swish in the deeper half, and a
  1x1 conv + hard-swish "pre-logits" layer after the pooling. Keys are torchvision's
  ``mobilenet_v3_small`` / ``mobilenet_v3_large`` (``features.N.block...``,
  ``classifier.0`` / ``classifier.3``).

The architectures are the papers' tables, as data below: ``MOBILENET_V1_STAGES``,
``MOBILENET_V2_ROWS`` (t, c, n, s) and ``MOBILENET_V3_LARGE`` / ``MOBILENET_V3_SMALL``
(kernel, exp size, #out, SE, NL, s).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ._base import INCEPTION_MEAN, INCEPTION_STD, Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from .layers import (
    ActFactory,
    ConvNormAct,
    NormFactory,
    create_classifier,
    get_act_layer,
    init_linear_head,
    make_divisible,
)

__all__ = [
    "MOBILENET_V1_STAGES",
    "MOBILENET_V2_ROWS",
    "MOBILENET_V3_LARGE",
    "MOBILENET_V3_SMALL",
    "Bneck",
    "BneckRow",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "DsRow",
    "InvertedResidual",
    "IrRow",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3",
    "SqueezeExcite",
]



# --------------------------------------------------------------------------- helpers


def _init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet init: He-normal (fan-out) convs, BN at identity, small
    normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_linear_head(m)


# ------------------------------------------------------------------------ MobileNet v1


class DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise conv -> BN -> act -> 1x1 pointwise conv -> BN -> act (timm's keys).

    (B, C_in, H, W) -> (B, C_in, H/s, W/s) -> (B, C_out, H/s, W/s). The depthwise conv
    filters each channel on its own, the pointwise conv mixes channels: together about
    k^2 times cheaper than one full k x k conv. No shortcut in v1.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, *, act_layer: ActFactory) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride, padding=1, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))  # (B, C_in, H/s, W/s)
        return self.act2(self.bn2(self.conv_pw(x)))  # (B, C_out, H/s, W/s)


@dataclass(frozen=True)
class DsRow:
    """Depthwise-separable layers of the v1 paper's Table 1 that share an output width."""

    channels: int  # output channels of the pointwise convs
    stride: int  # of the first depthwise conv
    repeats: int


# Table 1 of Howard et al. (2017), after the stem (conv 3x3/2, 32 channels), grouped by
# resolution as timm's blocks.0-4 are. Then average pool and the classifier.
MOBILENET_V1_STAGES: tuple[DsRow, ...] = (
    DsRow(channels=64, stride=1, repeats=1),  # 112x112
    DsRow(channels=128, stride=2, repeats=2),  # 112 -> 56
    DsRow(channels=256, stride=2, repeats=2),  # 56 -> 28
    DsRow(channels=512, stride=2, repeats=6),  # 28 -> 14
    DsRow(channels=1024, stride=2, repeats=2),  # 14 -> 7
)
V1_STEM_CHANNELS = 32


class MobileNetV1(Backbone):
    """MobileNet v1 in timm's layout: conv_stem/bn1 -> blocks.0-4 -> pool -> classifier.

    Args:
        num_classes: classifier outputs; 0 leaves no classifier (Identity).
        width_mult: the paper's width multiplier alpha (channels rounded to multiples of 8).
        act_layer: "relu6" (the default), "relu", "leaky_relu", "prelu", "elu", "selu",
            or an nn.Module class.
        drop_rate: dropout before the classifier while training (timm's default: none).
        rows: the architecture table; ``MOBILENET_V1_STAGES`` is the paper's.
    """

    default_unfreeze = 2
    classifier_path = "classifier"

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        act_layer: str | type[nn.Module] | ActFactory = "relu6",
        drop_rate: float = 0.0,
        rows: Sequence[DsRow] = MOBILENET_V1_STAGES,
    ) -> None:
        super().__init__()
        act = get_act_layer(act_layer)
        self.drop_rate = drop_rate
        chs = make_divisible(V1_STEM_CHANNELS * width_mult)
        self.conv_stem = nn.Conv2d(3, chs, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(chs)
        self.act1 = act()

        blocks = []
        for row in rows:
            out_chs = make_divisible(row.channels * width_mult)
            stage = []
            for i in range(row.repeats):
                stage.append(DepthwiseSeparableConv(chs, out_chs, row.stride if i == 0 else 1, act_layer=act))
                chs = out_chs
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)

        self.num_features = chs
        self.num_classes = num_classes
        self.classifier = create_classifier(chs, num_classes, init=False)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))  # (B, 32, H/2, W/2)
        return self.blocks(x)  # (B, 1024, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, num_features)
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def stages(self) -> list[Stage]:
        stages = [Stage("stem", [self.conv_stem, self.bn1, self.act1])]
        return stages + [Stage(f"blocks.{i}", [stage]) for i, stage in enumerate(self.blocks)]


# ------------------------------------------------------------------------ MobileNet v2


class InvertedResidual(nn.Module):
    """v2's block in torchvision's layout: ``conv`` = [1x1 expand], 3x3 depthwise, 1x1 project.

    (B, C_in, H, W) -> (B, C_in * t, H, W) -> (B, C_in * t, H/s, W/s) -> (B, C_out, H/s, W/s)
    The projection has no activation: a ReLU on the narrow output would destroy
    information (the paper's "linear bottleneck"). The shortcut joins the narrow ends,
    where the shape allows (stride 1, C_in == C_out). With t = 1 there is no expansion.
    """

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, expand_ratio: float, *, act_layer: ActFactory,
    ) -> None:
        super().__init__()
        mid_chs = int(round(in_chs * expand_ratio))
        self.use_res_connect = stride == 1 and in_chs == out_chs
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_chs, mid_chs, 1, act_layer=act_layer))
        layers += [
            ConvNormAct(mid_chs, mid_chs, 3, stride=stride, groups=mid_chs, act_layer=act_layer),
            nn.Conv2d(mid_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


@dataclass(frozen=True)
class IrRow:
    """One row of the v2 paper's Table 2: bottleneck with expansion t, c output channels,
    repeated n times, the first with stride s."""

    t: int
    c: int
    n: int
    s: int


# Table 2 of Sandler et al. (2018), between the stem (conv 3x3/2 to 32) and the head
# (conv 1x1 to 1280, pool, classifier).
MOBILENET_V2_ROWS: tuple[IrRow, ...] = (
    IrRow(t=1, c=16, n=1, s=1),  # 112x112
    IrRow(t=6, c=24, n=2, s=2),  # 112 -> 56
    IrRow(t=6, c=32, n=3, s=2),  # 56 -> 28
    IrRow(t=6, c=64, n=4, s=2),  # 28 -> 14
    IrRow(t=6, c=96, n=3, s=1),  # 14
    IrRow(t=6, c=160, n=3, s=2),  # 14 -> 7
    IrRow(t=6, c=320, n=1, s=1),  # 7
)
V2_STEM_CHANNELS = 32
V2_HEAD_CHANNELS = 1280


class MobileNetV2(Backbone):
    """MobileNet v2 in torchvision's layout.

    features.0 (stem) -> features.1-17 (the table's rows; stage k of ``stages()`` is row
    k) -> features.18 (1x1 conv to 1280) -> pool -> classifier (dropout, linear).

    Args:
        num_classes: classifier outputs; 0 leaves no classifier (Identity).
        width_mult: the paper's width multiplier; the 1280-channel head only grows
            (width_mult > 1), never shrinks, as in the paper.
        act_layer: "relu6" (the default), "relu", "leaky_relu", "prelu", "elu", "selu",
            or an nn.Module class.
        dropout: before the classifier while training (torchvision's 0.2).
        rows: the architecture table; ``MOBILENET_V2_ROWS`` is the paper's.
    """

    default_unfreeze = 2
    classifier_path = "classifier.1"  # after the dropout

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        act_layer: str | type[nn.Module] | ActFactory = "relu6",
        dropout: float = 0.2,
        rows: Sequence[IrRow] = MOBILENET_V2_ROWS,
    ) -> None:
        super().__init__()
        act = get_act_layer(act_layer)
        chs = make_divisible(V2_STEM_CHANNELS * width_mult)
        features: list[nn.Module] = [ConvNormAct(3, chs, 3, stride=2, act_layer=act)]
        self._spans: list[tuple[int, int]] = []  # features[start:end] of each row
        for row in rows:
            out_chs = make_divisible(row.c * width_mult)
            start = len(features)
            for i in range(row.n):
                features.append(InvertedResidual(chs, out_chs, row.s if i == 0 else 1, row.t, act_layer=act))
                chs = out_chs
            self._spans.append((start, len(features)))
        self.num_features = make_divisible(V2_HEAD_CHANNELS * max(1.0, width_mult))
        features.append(ConvNormAct(chs, self.num_features, 1, act_layer=act))
        self.features = nn.Sequential(*features)

        self.num_classes = num_classes
        head = create_classifier(self.num_features, num_classes, init=False)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), head)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, H, W) -> (B, 1280, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[0](x.mean((2, 3)))  # (B, 1280), dropped out while training
        return x if pre_logits else self.classifier[1](x)

    def stages(self) -> list[Stage]:
        return _stages_from_spans(self.features, self._spans)


def _stages_from_spans(features: nn.Sequential, spans: list[tuple[int, int]]) -> list[Stage]:
    """stem = features[0]; stage k = features[start:end]; the 1x1 head conv, features[-1],
    joins the last stage: unfreezing "the last stage" should include the layer that
    produces the pooled features."""
    stages = [Stage("stem", [features[0]])]
    stages += [Stage(f"stage{k}", list(features[a:b])) for k, (a, b) in enumerate(spans, start=1)]
    stages[-1].modules.append(features[-1])
    return stages


# ------------------------------------------------------------------------ MobileNet v3


class SqueezeExcite(nn.Module):
    """v3's squeeze-excitation: mean -> 1x1 conv -> ReLU -> 1x1 conv -> hard sigmoid.

    (B, C, H, W) -> (B, C, 1, 1) gate -> x * gate. The hard sigmoid, relu6(x + 3) / 6,
    is the piecewise-linear stand-in that v3 uses for speed on phones; the sigmoid gate
    of ``attention.SEModule`` would give other outputs with the same weights. Keys
    ``fc1`` / ``fc2`` as torchvision's ``SqueezeExcitation``.
    """

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * F.hardsigmoid(self.fc2(self.act(self.fc1(gate))))


@dataclass(frozen=True)
class BneckRow:
    """One "bneck" row of the v3 paper's Tables 1 and 2."""

    kernel: int  # depthwise kernel, k x k
    exp: int  # "exp size": channels after the 1x1 expansion
    out: int  # "#out"
    se: bool  # squeeze-excitation after the depthwise conv
    nl: str  # non-linearity: "RE" (ReLU) or "HS" (hard-swish)
    stride: int


_NL: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}

# Table 1 of Howard et al. (2019): MobileNetV3-Large. Stem: conv 3x3/2 to 16, HS.
# Head: conv 1x1 to 960, HS; pool; conv 1x1 (no BN) to 1280, HS; conv 1x1 to k classes.
MOBILENET_V3_LARGE: tuple[BneckRow, ...] = (
    BneckRow(kernel=3, exp=16, out=16, se=False, nl="RE", stride=1),  # 112x112
    BneckRow(kernel=3, exp=64, out=24, se=False, nl="RE", stride=2),  # 112 -> 56
    BneckRow(kernel=3, exp=72, out=24, se=False, nl="RE", stride=1),
    BneckRow(kernel=5, exp=72, out=40, se=True, nl="RE", stride=2),  # 56 -> 28
    BneckRow(kernel=5, exp=120, out=40, se=True, nl="RE", stride=1),
    BneckRow(kernel=5, exp=120, out=40, se=True, nl="RE", stride=1),
    BneckRow(kernel=3, exp=240, out=80, se=False, nl="HS", stride=2),  # 28 -> 14
    BneckRow(kernel=3, exp=200, out=80, se=False, nl="HS", stride=1),
    BneckRow(kernel=3, exp=184, out=80, se=False, nl="HS", stride=1),
    BneckRow(kernel=3, exp=184, out=80, se=False, nl="HS", stride=1),
    BneckRow(kernel=3, exp=480, out=112, se=True, nl="HS", stride=1),
    BneckRow(kernel=3, exp=672, out=112, se=True, nl="HS", stride=1),
    BneckRow(kernel=5, exp=672, out=160, se=True, nl="HS", stride=2),  # 14 -> 7
    BneckRow(kernel=5, exp=960, out=160, se=True, nl="HS", stride=1),
    BneckRow(kernel=5, exp=960, out=160, se=True, nl="HS", stride=1),
)

# Table 2: MobileNetV3-Small. Stem as Large. Head: conv 1x1 to 576, HS; pool; conv 1x1
# (no BN) to 1024, HS; conv 1x1 to k classes.
MOBILENET_V3_SMALL: tuple[BneckRow, ...] = (
    BneckRow(kernel=3, exp=16, out=16, se=True, nl="RE", stride=2),  # 112 -> 56
    BneckRow(kernel=3, exp=72, out=24, se=False, nl="RE", stride=2),  # 56 -> 28
    BneckRow(kernel=3, exp=88, out=24, se=False, nl="RE", stride=1),
    BneckRow(kernel=5, exp=96, out=40, se=True, nl="HS", stride=2),  # 28 -> 14
    BneckRow(kernel=5, exp=240, out=40, se=True, nl="HS", stride=1),
    BneckRow(kernel=5, exp=240, out=40, se=True, nl="HS", stride=1),
    BneckRow(kernel=5, exp=120, out=48, se=True, nl="HS", stride=1),
    BneckRow(kernel=5, exp=144, out=48, se=True, nl="HS", stride=1),
    BneckRow(kernel=5, exp=288, out=96, se=True, nl="HS", stride=2),  # 14 -> 7
    BneckRow(kernel=5, exp=576, out=96, se=True, nl="HS", stride=1),
    BneckRow(kernel=5, exp=576, out=96, se=True, nl="HS", stride=1),
)
V3_STEM_CHANNELS = 16


class Bneck(nn.Module):
    """v3's block in torchvision's layout: ``block`` = [1x1 expand], k x k depthwise,
    [SE], 1x1 linear project; a shortcut where the shape allows.

    (B, C_in, H, W) -> (B, exp, H, W) -> (B, exp, H/s, W/s) -> (B, C_out, H/s, W/s)
    """

    def __init__(
        self, in_chs: int, exp_chs: int, out_chs: int, kernel_size: int, stride: int, *,
        use_se: bool, act_layer: type[nn.Module], norm_layer: NormFactory,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_chs == out_chs
        act = partial(act_layer, inplace=True)
        layers: list[nn.Module] = []
        if exp_chs != in_chs:
            layers.append(ConvNormAct(in_chs, exp_chs, 1, norm_layer=norm_layer, act_layer=act))
        layers.append(ConvNormAct(
            exp_chs, exp_chs, kernel_size, stride=stride, groups=exp_chs,
            norm_layer=norm_layer, act_layer=act,
        ))
        if use_se:
            # A quarter of the expanded channels, rounded to a multiple of 8 (section 5.3).
            layers.append(SqueezeExcite(exp_chs, make_divisible(exp_chs // 4)))
        layers.append(ConvNormAct(exp_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


class MobileNetV3(Backbone):
    """MobileNet v3 in torchvision's layout.

    features.0 (stem, HS) -> features.1..n (the bneck rows) -> features.n+1 (1x1 conv to
    6x the last width, HS) -> pool -> classifier: 0 linear to ``head_channels``, 1 HS,
    2 dropout, 3 linear to classes. ``classifier.0-2`` are the pre-logits layers (the
    paper's 1x1 conv without BN after the pooling): ``forward_head(pre_logits=True)``
    returns their output, ``num_features`` is ``head_channels``, and ``stages()`` puts
    them in the last stage. The rows are grouped into stages by output width.

    Args:
        rows: ``MOBILENET_V3_LARGE`` or ``MOBILENET_V3_SMALL``.
        head_channels: the pre-logits width before width scaling (1280 Large, 1024 Small).
        num_classes: classifier outputs; 0 leaves no classifier (Identity).
        width_mult: channel multiplier (rounded to multiples of 8).
        dropout: before the classifier while training (torchvision's 0.2).
    """

    default_unfreeze = 2
    classifier_path = "classifier.3"  # after the hidden layer and dropout

    def __init__(
        self,
        *,
        rows: Sequence[BneckRow] = MOBILENET_V3_LARGE,
        head_channels: int = 1280,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        # TensorFlow's BatchNorm settings, with which the architecture search trained it.
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        chs = make_divisible(V3_STEM_CHANNELS * width_mult)
        hardswish = partial(nn.Hardswish, inplace=True)
        features: list[nn.Module] = [
            ConvNormAct(3, chs, 3, stride=2, norm_layer=norm_layer, act_layer=hardswish)
        ]
        outs = []
        for row in rows:
            out_chs = make_divisible(row.out * width_mult)
            features.append(Bneck(
                chs, make_divisible(row.exp * width_mult), out_chs, row.kernel, row.stride,
                use_se=row.se, act_layer=_NL[row.nl], norm_layer=norm_layer,
            ))
            outs.append(out_chs)
            chs = out_chs
        self._spans = _spans_by_width(outs, offset=1)
        last_conv = 6 * chs  # 960 Large, 576 Small
        features.append(ConvNormAct(chs, last_conv, 1, norm_layer=norm_layer, act_layer=hardswish))
        self.features = nn.Sequential(*features)

        self.num_features = make_divisible(head_channels * width_mult)
        self.num_classes = num_classes
        head = create_classifier(self.num_features, num_classes, init=False)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, self.num_features),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            head,
        )
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, H, W) -> (B, 960 | 576, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, 960 | 576)
        x = self.classifier[2](self.classifier[1](self.classifier[0](x)))  # (B, num_features)
        return x if pre_logits else self.classifier[3](x)

    def stages(self) -> list[Stage]:
        stages = _stages_from_spans(self.features, self._spans)
        stages[-1].modules += [self.classifier[0], self.classifier[1], self.classifier[2]]
        return stages


def _spans_by_width(outs: list[int], offset: int) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive blocks with the same output width; block i
    is features[offset + i]. v3's rows come one block at a time, this groups them the way
    timm's stages do (Large: 16 | 24 | 40 | 80 | 112 | 160)."""
    spans, start = [], offset
    for _, run in itertools.groupby(outs):
        end = start + len(list(run))
        spans.append((start, end))
        start = end
    return spans


# ------------------------------------------------------------------- pretrained configs


def _tv_cfg(url: str, top1: float) -> PretrainedCfg:
    """torchvision's IMAGENET1K_V1 weights: 224 px, bilinear, resize 256 + centre crop 224."""
    return PretrainedCfg(
        url=f"https://download.pytorch.org/models/{url}", source="torchvision",
        license="bsd-3-clause", extra={"imagenet_top1": top1, "weights": "IMAGENET1K_V1"},
    )


_CFGS: dict[str, PretrainedCfg] = {
    # timm's mobilenetv1_100.ra4_e3600_r224_in1k: trained with Inception mean / std and
    # bicubic resizing; timm evaluates it at 256 px with crop 0.95.
    "mobilenet_v1": PretrainedCfg(
        mean=INCEPTION_MEAN, std=INCEPTION_STD, interpolation="bicubic", crop_pct=0.875,
        hf_hub_id="timm/mobilenetv1_100.ra4_e3600_r224_in1k", source="timm",
        license="apache-2.0", extra={"test_input_size": (3, 256, 256), "test_crop_pct": 0.95},
    ),
    "mobilenet_v2": _tv_cfg("mobilenet_v2-b0353104.pth", 71.878),
    "mobilenet_v3_small": _tv_cfg("mobilenet_v3_small-047dcff4.pth", 67.668),
    "mobilenet_v3_large": _tv_cfg("mobilenet_v3_large-8738ca79.pth", 74.042),
}

_MODEL_CLASSES: dict[str, type[Backbone]] = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": MobileNetV3,
    "mobilenet_v3_large": MobileNetV3,
}


def _create_mobilenet(variant: str, *, pretrained: bool = False, **kwargs) -> Backbone:
    return build_backbone(
        _MODEL_CLASSES[variant], variant, _CFGS[variant], pretrained=pretrained, **kwargs
    )


@register_model
def mobilenet_v1(*, pretrained: bool = False, **kwargs) -> MobileNetV1:
    """MobileNet v1, width 1.0 (timm's mobilenetv1_100): 4.2 M parameters."""
    return _create_mobilenet("mobilenet_v1", pretrained=pretrained, **kwargs)


@register_model
def mobilenet_v2(*, pretrained: bool = False, **kwargs) -> MobileNetV2:
    """MobileNet v2, width 1.0: 3.5 M parameters."""
    return _create_mobilenet("mobilenet_v2", pretrained=pretrained, **kwargs)


@register_model
def mobilenet_v3_small(*, pretrained: bool = False, **kwargs) -> MobileNetV3:
    """MobileNet v3 Small (Table 2): 2.5 M parameters."""
    model_args = dict(rows=MOBILENET_V3_SMALL, head_channels=1024)
    return _create_mobilenet("mobilenet_v3_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def mobilenet_v3_large(*, pretrained: bool = False, **kwargs) -> MobileNetV3:
    """MobileNet v3 Large (Table 1): 5.5 M parameters."""
    model_args = dict(rows=MOBILENET_V3_LARGE, head_channels=1280)
    return _create_mobilenet("mobilenet_v3_large", pretrained=pretrained, **dict(model_args, **kwargs))

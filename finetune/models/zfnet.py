"""ZFNet (Zeiler & Fergus 2013, "Visualizing and Understanding Convolutional Networks").

ZFNet is AlexNet retuned with the paper's deconvnet visualisations: AlexNet's conv1
(11x11, stride 4) learnt very high or very low frequency filters, some of them dead, and
its large stride caused aliasing in conv2. So ZFNet's conv1 is 7x7 with stride 2, and
conv2 strides 2 (AlexNet's strides 1).
This is the larger variant (512, 1024, 512 filters in conv3-5 instead of 384, 384,
256), one tower, no groups. At 224 px (Figure 3 of the paper):

    conv1   96 7x7/2 pad 1 -> ReLU -> pool 3x3/2 -> LRN   (B,   96, 110, 110) -> (B, 96, 55, 55)
    conv2  256 5x5/2       -> ReLU -> pool 3x3/2 -> LRN   (B,  256,  26,  26) -> (B, 256, 13, 13)
    conv3  512 3x3 pad 1                                  (B,  512,  13,  13)
    conv4 1024 3x3 pad 1                                  (B, 1024,  13,  13)
    conv5  512 3x3 pad 1   -> pool 3x3/2                  (B,  512,  13,  13) -> (B, 512, 6, 6)
    fc6 4096 -> fc7 4096 -> fc8 1000, dropout 0.5 before fc6 and fc7

The figure's sizes (110 -> 55, 26 -> 13, 13 -> 6) come from pools that round up, as the
cuda-convnet / Caffe code of the time did, so the model pools with ``ceil_mode=True``.
The paper normalises after pooling ("pooled ... and contrast normalized across feature
maps"), the reverse of AlexNet's order; it gives no LRN constants, so AlexNet's are
used. The model class is AlexNet's.
"""

from __future__ import annotations

from ._base import PretrainedCfg
from ._builder import build_backbone
from ._registry import register_model
from .alexnet import AlexNet, ConvLayer

__all__ = ["cfgs"]

cfgs: dict[str, tuple[ConvLayer, ...]] = {
    "zfnet": (
        ConvLayer(96, 7, stride=2, padding=1, after=("pool", "lrn")),
        ConvLayer(256, 5, stride=2, after=("pool", "lrn")),
        ConvLayer(512, 3, padding=1),
        ConvLayer(1024, 3, padding=1),
        ConvLayer(512, 3, padding=1, after=("pool",)),
    ),
}

# No published weights; the paper trained on 224 px crops of images resized to 256.
_CFGS: dict[str, PretrainedCfg] = {"zfnet": PretrainedCfg(input_size=(3, 224, 224), source="none")}


def _create_zfnet(variant: str, *, pretrained: bool = False, **kwargs) -> AlexNet:
    return build_backbone(AlexNet, variant, _CFGS[variant], pretrained=pretrained, **kwargs)


@register_model
def zfnet(*, pretrained: bool = False, **kwargs) -> AlexNet:
    """ZFNet with 512-1024-512 filters in conv3-5: 107,627,624 parameters, 224 px."""
    model_args = dict(layers=cfgs["zfnet"], ceil_mode=True)
    return _create_zfnet("zfnet", pretrained=pretrained, **dict(model_args, **kwargs))

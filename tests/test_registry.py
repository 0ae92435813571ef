"""Every registered backbone gets the same checks, as timm tests its registry.

Structure (all 49, on the meta device, so VGG's 138 M parameters cost nothing): the
3-class head, the head reset, stages + classifier covering every parameter exactly once,
a sane pretrained configuration, the summary's totals and output shape. Real forward
passes (output shape, no NaN) for all but the heaviest, at 64 px; one training step
with a gradient for every parameter for the small ones (<= 8 M parameters).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from finetune.models import create_backbone, list_models
from finetune.models.summary import meta_backbone, summarize

ALL = list_models()

# Seconds per forward pass on two cores even at 64 px, or hundreds of MB to initialise:
# these get the meta-device checks only (their blocks are shared with smaller siblings).
HEAVY = {
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "wide_resnet50_2",
    "wide_resnet101_2", "resnext101_32x8d", "densenet161", "densenet201", "resnet152",
}
GRAD_MAX_PARAMS = 8_000_000
# Smallest inputs that survive the downsampling: AlexNet's unpadded 11x11/4 conv and three
# 3x3/2 pools need 67 px (torchvision's padded variant 63); every other model runs at 16.
SIZE = {"alexnet_2012": 67}
INTERPOLATIONS = {"bilinear", "bicubic", "nearest"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small are not worth splitting across cores: with two threads, the
    OpenMP hand-offs cost more than the work (and far more on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _size(name: str) -> int:
    return SIZE.get(name, 64)


def test_the_zoo_is_complete():
    assert len(ALL) == 49
    assert {"alexnet_2012", "zfnet", "vgg16_bn", "googlenet", "cbam_resnet50", "densenet161",
            "mobilenet_v3_small", "shufflenet_v2_x2_0", "efficientnet_b7",
            "efficientnet_lite4"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_structure(name):
    model = meta_backbone(name, num_classes=3)
    params = list(model.parameters())
    assert params and all(p.is_meta for p in params)  # nothing was allocated

    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 3 and model.num_classes == 3
    assert head.in_features == model.num_features

    # stages() + the classifier hold every parameter exactly once.
    stages = model.stages()
    counts = Counter(id(p) for stage in stages for p in stage.parameters())
    counts.update(id(p) for p in head.parameters())
    assert set(counts) == {id(p) for p in params}
    assert max(counts.values()) == 1
    assert len({s.name for s in stages}) == len(stages) >= 2
    assert 1 <= model.default_unfreeze <= len(stages)

    cfg = model.pretrained_cfg
    assert len(cfg.input_size) == 3 and cfg.input_size[0] == 3 and cfg.image_size >= 64
    assert len(cfg.mean) == len(cfg.std) == 3 and all(0 < s < 1 for s in cfg.std)
    assert cfg.interpolation in INTERPOLATIONS and 0 < cfg.crop_pct <= 1
    assert cfg.num_classes == 1000
    assert cfg.has_weights == (cfg.source != "none")

    # The summary: shapes flow to the 3-class output, rows add up to the parameters.
    summary = summarize(model, input_size=_size(name))
    assert summary["layers"][-1]["output_shape"] == [3]
    assert sum(r["params"] for r in summary["layers"]) == summary["total_params"]
    assert summary["total_params"] == sum(p.numel() for p in params)
    assert summary["macs"] > 0

    model.reset_classifier(5)
    new_head = model.get_classifier()
    assert new_head is not head and new_head.out_features == 5 and model.num_classes == 5
    assert new_head.in_features == model.num_features
    assert new_head.weight.is_meta  # the new head lives where the model lives
    assert sum(st.num_params() for st in model.stages()) == sum(st.num_params() for st in stages)


@pytest.mark.parametrize("name", [n for n in ALL if n not in HEAVY])
def test_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=3)
    x = torch.randn(2, 3, _size(name), _size(name))

    model.eval()
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert pooled.shape == (2, model.num_features)
    assert torch.allclose(logits, out, atol=1e-5)

    if sum(p.numel() for p in model.parameters()) > GRAD_MAX_PARAMS:
        return
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 2]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.get_classifier().weight.grad.abs().sum() > 0


def test_a_backbone_missing_an_interface_method_cannot_be_built():
    from finetune.models import Backbone

    class NoStages(Backbone):
        def forward_features(self, x):
            return x

        def forward_head(self, x, pre_logits=False):
            return x

        def get_classifier(self):
            return torch.nn.Identity()

        def reset_classifier(self, num_classes):
            pass

    with pytest.raises(TypeError, match="stages"):
        NoStages()

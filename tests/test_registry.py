"""Every registered backbone gets the same checks, as timm tests its registry.

Structure (every registered model, on the meta device, so VGG's 138 M parameters cost nothing): the
3-class head, the head reset, stages + classifier covering every parameter exactly once,
a sane pretrained configuration, the summary's totals and output shape. Real forward
passes (output shape, no NaN) for all but the heaviest, at 64 px; one training step
with a gradient for every parameter for the small ones (<= 8 M parameters). The shared
``reset_classifier``: the head's size, init, place and dtype, the body untouched, and
0 classes returning the pooled features.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from finetune.models import create_backbone, list_models, model_family
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
# Up to ResNet-50's 25.6 M parameters the head reset is checked on real values; AlexNet's
# 61 M or ResNet-101's 44.5 M take seconds each to initialise and get the meta checks.
RESET_REAL_MAX_PARAMS = 30_000_000
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
    """Every classic family of the toolkit, and the extremes of each, is registered."""
    assert {model_family(n) for n in ALL} >= {
        "alexnet", "zfnet", "vgg", "googlenet", "resnet", "densenet", "mobilenet",
        "shufflenet", "efficientnet"}
    assert {"wide_resnet50_2", "resnext50_32x4d", "seresnet50", "ecaresnet50", "alexnet_2012", "zfnet", "vgg16_bn", "googlenet", "cbam_resnet50", "densenet161",
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


def _head_prefix(model: nn.Module) -> str:
    head = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is head)


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier(name):
    """The one reset every family shares: a fresh head of the asked size in the old one's
    place (the reference's keys), the body untouched, and 0 classes giving the pooled
    features. Models too big to initialise in a blink get the same checks on the meta
    device in float64 (no values, but the new head must follow the dtype)."""
    model = meta_backbone(name, num_classes=3).to(torch.float64)
    heavy = sum(p.numel() for p in model.parameters()) > RESET_REAL_MAX_PARAMS
    if not heavy:
        torch.manual_seed(0)
        model = create_backbone(name, num_classes=3)
    model.eval()
    like = next(model.parameters())
    prefix = _head_prefix(model)
    old_head = model.get_classifier()
    before = model.state_dict(keep_vars=True)
    body = {k: v for k, v in before.items() if not k.startswith(prefix + ".")}
    assert len(body) < len(before)  # the head held tensors, so the split found it
    x = torch.randn(2, 3, _size(name), _size(name), device=like.device, dtype=like.dtype)
    with torch.no_grad():
        pooled = model.pooled_features(x)
    assert pooled.shape == (2, model.num_features)

    model.reset_classifier(7)
    head = model.get_classifier()
    assert head is not old_head and isinstance(head, nn.Linear)
    assert (head.weight.device, head.weight.dtype) == (like.device, like.dtype)
    assert (head.in_features, head.out_features) == (model.num_features, 7)
    assert model.num_classes == 7 and _head_prefix(model) == prefix
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)  # same keys in the same order: reference weights still load
    assert all(after[k] is v for k, v in body.items())  # the body's very tensors, untouched
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    if not heavy:
        # The shared init: N(0, 0.01) weights, zero bias, whatever the family's own init.
        assert 0.008 < head.weight.std().item() < 0.012
        assert torch.equal(head.bias, torch.zeros(7))
        with torch.no_grad():
            assert torch.equal(model.pooled_features(x), pooled)

    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    assert list(model.state_dict()) == list(body)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, model.num_features)
    if not heavy:
        assert torch.equal(out, pooled)



def test_a_backbone_that_names_no_classifier_cannot_be_defined():
    from finetune.models import Backbone

    with pytest.raises(TypeError, match="NoHead names no classifier: set classifier_path"):
        class NoHead(Backbone):
            def forward_features(self, x):
                return x

            def forward_head(self, x, pre_logits=False):
                return x

            def stages(self):
                return []

"""ResNet family: torchvision / timm weight compatibility, parameter counts, the backbone
interface, weight resolution offline, and the activation / attention options.

Reference models get realistic BatchNorm statistics (one calibration pass, random affine
parameters) before their weights are copied, so that "outputs match" compares
well-scaled numbers and a wrong layer order or stride could not pass by accident.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from finetune.models import WeightsNotFoundError, count_params, create_backbone, list_models
from finetune.models.attention import EcaModule, eca_kernel_size
from finetune.models.resnet import _CFGS, ResNet

TORCHVISION_VARIANTS = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d",
]
# The ones whose outputs are compared (the 101/152-layer ones differ only in depth).
COMPARED_VARIANTS = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2"]
ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "elu": nn.ELU, "selu": nn.SELU,
}


@torch.no_grad()
def _calibrate(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters, and running statistics from one batch of noise."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    model(torch.randn(2, 3, 64, 64, generator=gen))
    return model.eval()


def _uninitialised(name: str, **kwargs) -> nn.Module:
    """Our model with storage but no initialisation, for tests that load every tensor
    (skipping the random init of tens of millions of weights saves seconds)."""
    with torch.device("meta"):
        model = create_backbone(name, **kwargs)
    return model.to_empty(device="cpu")


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert ref.std() > 0.05, "reference output too small for the comparison to mean anything"
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4, f"max abs difference {diff}"


# ---------------------------------------------------------------- torchvision compatibility


@pytest.mark.parametrize("name", COMPARED_VARIANTS)
def test_torchvision_weights_load_strictly_and_outputs_match(name, images):
    reference = _calibrate(getattr(torchvision.models, name)())
    model = _uninitialised(name)
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval()
    with torch.no_grad():
        _assert_close(model(images), reference(images))


def test_parameter_counts_equal_torchvision():
    with torch.device("meta"):  # no memory, no initialisation: counting only
        for name in TORCHVISION_VARIANTS:
            ours = count_params(create_backbone(name))
            theirs = count_params(getattr(torchvision.models, name)())
            assert ours == theirs, name
    with torch.device("meta"):
        assert count_params(create_backbone("resnet18")) == 11_689_512
        assert count_params(create_backbone("resnet50")) == 25_557_032


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
def test_pretrained_cfg_is_torchvisions_v1(name):
    cfg = _CFGS[name]
    expected = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    assert cfg.url == expected.url
    assert (cfg.input_size, cfg.interpolation, cfg.crop_pct) == ((3, 224, 224), "bilinear", 0.875)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.source == "torchvision"


def test_stride_in_1x1_uses_the_same_weights_at_another_place(images):
    v15 = _calibrate(create_backbone("resnet50"))
    v1 = _uninitialised("resnet50", stride_in_1x1=True)
    v1.load_state_dict(v15.state_dict(), strict=True)
    v1.eval()
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    with torch.no_grad():
        a, b = v1(images), v15(images)
    assert a.shape == b.shape == (2, 1000)
    assert (a - b).abs().max() > 1e-3  # a different network, not a renamed one


# ---------------------------------------------------------------- attention variants


def test_seresnet50_matches_timm(images):
    reference = _calibrate(timm.create_model("seresnet50", pretrained=False))
    model = _uninitialised("seresnet50")
    assert count_params(model) == count_params(reference) == 28_088_024
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval()
    with torch.no_grad():
        _assert_close(model(images), reference(images))


def test_eca_and_cbam_parameter_counts():
    with torch.device("meta"):
        eca = count_params(create_backbone("ecaresnet50"))
        cbam = count_params(create_backbone("cbam_resnet50"))
    # ECA kernels for 256 / 512 / 1024 / 2048 channels are 5 / 5 / 5 / 7 wide, over
    # 3 / 4 / 6 / 3 blocks: 15 + 20 + 30 + 21 = 86 weights on top of ResNet-50.
    assert eca == 25_557_032 + 86
    # CBAM per block: the SE-sized MLP with biases (as SE-ResNet-50 adds: 2,530,992),
    # plus a 7x7 conv over 2 maps (98) and its BatchNorm (2), 16 blocks: 1,600.
    assert cbam == 28_088_024 + 1_600


def test_eca_kernel_sizes_follow_the_paper_and_match_timm():
    assert [eca_kernel_size(c) for c in (64, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 7]
    ours = EcaModule(2048)
    theirs = timm.layers.EcaModule(channels=2048)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 2048, 3, 3)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)


@pytest.mark.parametrize("name", ["ecaresnet50", "cbam_resnet50"])
def test_attention_variants_run(name, images):
    model = create_backbone(name, num_classes=3).eval()
    with torch.no_grad():
        out = model(images)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_unknown_attention_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown attention layer 'sk'.*cbam, eca, se"):
        create_backbone("resnet50", attn_layer="sk")


# ---------------------------------------------------------------- the backbone interface


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {"act_layer": "prelu"}),  # PReLU: the activations hold parameters too
    ("cbam_resnet50", {}),
    ("resnext50_32x4d", {}),
])
def test_stages_and_classifier_cover_every_parameter_once(name, kwargs):
    with torch.device("meta"):
        model = create_backbone(name, **kwargs)
    stages = model.stages()
    assert [s.name for s in stages] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    ids = [id(p) for s in stages for p in s.parameters()]
    ids += [id(p) for p in model.get_classifier().parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_forward_head_and_reset_classifier(images):
    model = create_backbone("resnet18").eval()
    assert (model.num_features, model.num_classes, model.default_unfreeze) == (512, 1000, 1)
    with torch.no_grad():
        feats = model.forward_features(images)
        assert feats.shape == (2, 512, 2, 2)
        pooled = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(pooled, feats.mean((2, 3)), atol=1e-6)
        model.reset_classifier(7)
        assert model.get_classifier().out_features == 7 and model.num_classes == 7
        assert model.get_classifier().weight.std() < 0.05  # small-normal fresh head
        assert model(images).shape == (2, 7)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert torch.allclose(model(images), pooled, atol=1e-6)


def test_registry_lists_the_family():
    expected = set(TORCHVISION_VARIANTS) | {"seresnet50", "ecaresnet50", "cbam_resnet50"}
    assert expected <= set(list_models("resnet"))


# ---------------------------------------------------------------- weight resolution


def test_explicit_weights_file_loads_with_new_head(tmp_path, images):
    reference = _calibrate(torchvision.models.resnet18())
    path = tmp_path / "my_resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_backbone("resnet18", weights=path, num_classes=5).eval()
    reference.fc = nn.Identity()
    with torch.no_grad():
        assert model(images).shape == (2, 5)
        _assert_close(model.pooled_features(images), reference(images))
    assert str(path) in model.weights_source


def test_pretrained_offline_without_cache_names_the_missing_file(torch_home):
    with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
        create_backbone("resnet18", pretrained=True)


def test_pretrained_offline_finds_the_torch_hub_cache(torch_home, images):
    reference = _calibrate(torchvision.models.resnet18())
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    reloaded = torchvision.models.resnet18()
    reloaded.load_state_dict(torch.load(cached, weights_only=True))
    model = create_backbone("resnet18", pretrained=True).eval()
    assert "torch hub cache" in model.weights_source
    with torch.no_grad():
        _assert_close(model(images), reloaded.eval()(images))


def test_variants_without_weights_say_so():
    with pytest.raises(WeightsNotFoundError, match="no published pretrained weights"):
        create_backbone("ecaresnet50", pretrained=True)


# ---------------------------------------------------------------- activation variants


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activation_variants_build_train_and_run(act):
    model = create_backbone("resnet18", act_layer=act, num_classes=4)
    assert isinstance(model.act1, ACTIVATIONS[act])
    assert isinstance(model.layer3[1].act2, ACTIVATIONS[act])
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    out.square().mean().backward()  # in-place activations must leave autograd intact
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    assert all(p.grad is not None for p in model.parameters())


def test_prelu_adds_one_parameter_per_activation():
    with torch.device("meta"):
        prelu = count_params(create_backbone("resnet18", act_layer="prelu"))
    # The stem's activation plus two in each of ResNet-18's eight blocks.
    assert prelu == 11_689_512 + 17


def test_unknown_activation_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown activation 'swish'.*relu, leaky_relu, prelu, elu, selu"):
        create_backbone("resnet18", act_layer="swish")


def test_basic_block_refuses_grouped_widths():
    with pytest.raises(ValueError, match="groups=32"):
        ResNet("basic", (2, 2, 2, 2), groups=32, width_per_group=4)

"""DenseNet, MobileNet v1/v2/v3 and ShuffleNet v2: equal to their torchvision / timm
references (keys, shapes, parameter counts, outputs), the backbone interface, DenseNet's
old checkpoint key names, channel shuffle, and the activation options.

Reference models get realistic BatchNorm statistics and random classifier weights before
their weights are copied, so that "outputs match" compares well-scaled numbers and a
wrong layer order, stride or activation could not pass by accident.
"""

from __future__ import annotations

import functools
import re

import pytest
import timm
import torch
import torchvision
from torch import nn

# Importing the family modules registers their models: explicit here, so the tests do not
# depend on finetune/models/__init__.py importing them.
from finetune.models import (
    count_params,
    create_backbone,
    densenet,
    list_models,
    mobilenet,
    shufflenet,
)
from finetune.models.densenet import DenseNet
from finetune.models.shufflenet import channel_shuffle

TORCHVISION_VARIANTS = [
    "densenet121", "densenet161", "densenet169", "densenet201",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
]
TIMM_REFERENCES = {"mobilenet_v1": "mobilenetv1_100"}
ALL_VARIANTS = TORCHVISION_VARIANTS + list(TIMM_REFERENCES)
COMPARED_VARIANTS = [
    "densenet121", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
]
ACTIVATIONS = {
    "relu6": nn.ReLU6, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU,
    "elu": nn.ELU, "selu": nn.SELU,
}


def _reference(name: str, **kwargs) -> nn.Module:
    if name in TIMM_REFERENCES:
        return timm.create_model(TIMM_REFERENCES[name], pretrained=False, **kwargs)
    return getattr(torchvision.models, name)(**kwargs)


@torch.no_grad()
def _calibrate(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and linear weights, BN statistics from one noise batch."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
        elif isinstance(module, nn.Linear):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    model.train()
    model(torch.randn(4, 3, 64, 64, generator=gen))
    return model.eval()


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert ref.std() > 0.05, "reference output too small for the comparison to mean anything"
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4, f"max abs difference {diff}"


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


# ---------------------------------------------------------------- reference equality


@pytest.mark.parametrize("name", COMPARED_VARIANTS)
@torch.no_grad()
def test_reference_weights_load_strictly_and_outputs_match(name, images):
    reference = _calibrate(_reference(name))
    model = create_backbone(name)
    assert _shapes(model) == _shapes(reference)
    model.load_state_dict(reference.state_dict(), strict=True)
    model.eval()
    _assert_close(model(images), reference(images))

    # get_classifier() is the reference's last Linear, and pre_logits is exactly its input.
    head = _module_name(model, model.get_classifier())
    parent, _, leaf = head.rpartition(".")
    assert isinstance(reference.get_submodule(head), nn.Linear)
    setattr(reference.get_submodule(parent), leaf, nn.Identity())
    _assert_close(model.pooled_features(images), reference(images))
    assert model.num_features == model.get_classifier().in_features


@functools.cache
def _meta_backbone(name: str) -> nn.Module:
    """Built once on the meta device (no memory, no initialisation): for counting and
    for inspecting structure, never for running."""
    with torch.device("meta"):
        return create_backbone(name)


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_parameter_counts_equal_the_references(name):
    with torch.device("meta"):
        reference = _reference(name)
    ours = count_params(_meta_backbone(name))
    assert ours == count_params(reference)
    if name in TORCHVISION_VARIANTS:  # and the number torchvision publishes
        assert ours == torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta["num_params"]


def test_parameter_counts_known_numbers():
    assert count_params(_meta_backbone("densenet121")) == 7_978_856
    assert count_params(_meta_backbone("mobilenet_v2")) == 3_504_872


@pytest.mark.parametrize("name,width,reference", [
    ("mobilenet_v1", 1.25, lambda: timm.create_model("mobilenetv1_125")),
    ("mobilenet_v2", 0.5, lambda: torchvision.models.mobilenet_v2(width_mult=0.5)),
    ("mobilenet_v3_large", 0.75, lambda: torchvision.models.mobilenet_v3_large(width_mult=0.75)),
])
def test_width_multiplier_matches_the_reference(name, width, reference):
    with torch.device("meta"):
        ours, theirs = create_backbone(name, width_mult=width), reference()
    assert _shapes(ours) == _shapes(theirs)


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
def test_pretrained_cfg_is_torchvisions_v1(name):
    cfg = {**densenet._CFGS, **mobilenet._CFGS, **shufflenet._CFGS}[name]
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    preset = weights.transforms()
    assert cfg.url == weights.url
    assert cfg.input_size == (3, *preset.crop_size * 2)
    assert cfg.crop_pct == pytest.approx(preset.crop_size[0] / preset.resize_size[0])
    assert cfg.interpolation == preset.interpolation.value == "bilinear"
    assert (list(cfg.mean), list(cfg.std)) == (preset.mean, preset.std)
    assert cfg.source == "torchvision"


def test_mobilenet_v1_cfg_is_timms():
    with torch.device("meta"):
        timm_cfg = timm.create_model("mobilenetv1_100").pretrained_cfg
    cfg = mobilenet._CFGS["mobilenet_v1"]
    assert cfg.hf_hub_id == timm_cfg["hf_hub_id"] == "timm/mobilenetv1_100.ra4_e3600_r224_in1k"
    assert (cfg.mean, cfg.std) == (timm_cfg["mean"], timm_cfg["std"])
    assert (cfg.input_size, cfg.interpolation, cfg.crop_pct) == (
        timm_cfg["input_size"], timm_cfg["interpolation"], timm_cfg["crop_pct"],
    )
    assert cfg.source == "timm"


def test_registry_lists_the_families():
    assert list_models("densenet") == ["densenet121", "densenet161", "densenet169", "densenet201"]
    assert list_models("mobilenet") == [
        "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    ]
    assert list_models("shufflenet") == [
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    ]


# ---------------------------------------------------------------- DenseNet's old checkpoint keys


def _old_style(key: str) -> str:
    """torchvision's checkpoint files name ``denselayer1.norm1`` as ``denselayer1.norm.1``."""
    return re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)


@pytest.fixture(scope="module")
def densenet_reference() -> nn.Module:
    return _calibrate(torchvision.models.densenet121())


@pytest.fixture
def old_style_state(densenet_reference) -> dict[str, torch.Tensor]:
    # Like the real 2017 files: old names, and no num_batches_tracked (BatchNorm fills it in).
    state = {
        _old_style(k): v for k, v in densenet_reference.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    assert "features.denseblock1.denselayer1.norm1.weight" not in state
    return state


@torch.no_grad()
def test_densenet_old_style_checkpoint_file_loads(tmp_path, old_style_state, densenet_reference, images):
    path = tmp_path / "densenet121_old.pth"
    torch.save(old_style_state, path)
    model = create_backbone("densenet121", weights=path).eval()
    _assert_close(model(images), densenet_reference(images))
    assert str(path) in model.weights_source


@torch.no_grad()
def test_densenet_pretrained_reads_old_style_file_from_torch_hub_cache(
    torch_home, old_style_state, densenet_reference, images,
):
    cached = torch_home / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    cached.parent.mkdir(parents=True)
    torch.save(old_style_state, cached)
    model = create_backbone("densenet121", pretrained=True, num_classes=3).eval()
    assert "torch hub cache" in model.weights_source
    expected = densenet_reference.features(images).relu().mean((2, 3))  # torchvision's pre-logits
    _assert_close(model.pooled_features(images), expected)
    assert model(images).shape == (2, 3)


def test_densenet_adapt_state_dict_renames_only_old_keys(densenet_reference, old_style_state):
    model = DenseNet(num_classes=1000)
    new_style = densenet_reference.state_dict()
    assert model.adapt_state_dict(dict(new_style)).keys() == new_style.keys()
    adapted = model.adapt_state_dict(old_style_state)
    expected = {k for k in new_style if not k.endswith("num_batches_tracked")}
    assert set(adapted) == expected


def test_densenet_memory_efficient_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    small = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, num_classes=5)
    plain = DenseNet(**small)
    efficient = DenseNet(**small, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for model in (plain, efficient):
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for p, q in zip(plain.parameters(), efficient.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)


# ---------------------------------------------------------------- channel shuffle


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)  # channels 0..5
    # 2 groups [0 1 2 | 3 4 5] -> [0 3 1 4 2 5]; 3 groups [0 1 | 2 3 | 4 5] -> [0 2 4 1 3 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    y = torch.randn(2, 8, 3, 5)
    assert torch.equal(channel_shuffle(y, 2), torchvision.models.shufflenetv2.channel_shuffle(y, 2))
    assert torch.equal(channel_shuffle(channel_shuffle(y, 2), 4), y)  # 2 x 4: the inverse


# ---------------------------------------------------------------- the backbone interface

STAGE_NAMES = {
    "densenet": ["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4"],
    "mobilenet_v1": ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"],
    "mobilenet_v2": ["stem"] + [f"stage{i}" for i in range(1, 8)],
    "mobilenet_v3_large": ["stem"] + [f"stage{i}" for i in range(1, 7)],  # 16|24|40|80|112|160
    "mobilenet_v3_small": ["stem"] + [f"stage{i}" for i in range(1, 6)],  # 16|24|40|48|96
    "shufflenet": ["stem", "stage2", "stage3", "stage4"],
}
DEFAULT_UNFREEZE = {"densenet": 1, "mobilenet": 2, "shufflenet": 2}


def _assert_stages_cover_every_parameter_once(model: nn.Module) -> None:
    ids = [id(p) for s in model.stages() for p in s.parameters()]
    ids += [id(p) for p in model.get_classifier().parameters()]
    assert len(ids) == len(set(ids)), "a parameter is in two stages"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is in no stage"


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_stages_and_classifier_cover_every_parameter_once(name):
    model = _meta_backbone(name)
    _assert_stages_cover_every_parameter_once(model)
    key = next(k for k in STAGE_NAMES if name.startswith(k))
    assert [s.name for s in model.stages()] == STAGE_NAMES[key]
    assert model.default_unfreeze == DEFAULT_UNFREEZE[name.split("_")[0].rstrip("0123456789")]


def test_mobilenet_v3_pre_logits_layers_are_in_the_last_stage():
    model = _meta_backbone("mobilenet_v3_large")
    last = model.stages()[-1]
    assert model.classifier[0] in last.modules and model.features[-1] in last.modules
    assert (model.num_features, model.classifier[0].in_features) == (1280, 960)


@pytest.mark.parametrize("name,kwargs", [
    ("densenet121", {"act_layer": "prelu"}),
    ("mobilenet_v1", {"act_layer": "prelu"}),
    ("mobilenet_v2", {"act_layer": "prelu"}),
])
def test_stages_cover_activation_parameters(name, kwargs):
    with torch.device("meta"):
        model = create_backbone(name, **kwargs)
    assert any(isinstance(m, nn.PReLU) for m in model.modules())
    _assert_stages_cover_every_parameter_once(model)


@pytest.mark.parametrize("name", [
    "densenet121", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5",
])
@torch.no_grad()
def test_forward_head_and_reset_classifier(name, images):
    model = create_backbone(name).eval()
    assert model.num_classes == 1000
    feats = model.forward_features(images)
    assert feats.shape[:2] == (2, {"mobilenet_v3_small": 576}.get(name, model.num_features))
    assert feats.shape[2:] == (2, 2)  # 64 px / 32
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    model.reset_classifier(7)
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (model.num_features, 7)
    assert model.num_classes == 7 and head.weight.std() < 0.05  # small-normal fresh head
    assert model(images).shape == (2, 7)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert torch.allclose(model(images), pooled, atol=1e-6)


def test_create_backbone_with_num_classes():
    model = create_backbone("shufflenet_v2_x0_5", num_classes=4)
    assert model.get_classifier().out_features == 4 and model.variant == "shufflenet_v2_x0_5"


# ---------------------------------------------------------------- activation variants


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "prelu", "elu", "selu"])
def test_densenet_activation_variants_build_and_train(act):
    model = create_backbone("densenet121", act_layer=act, num_classes=3)
    assert isinstance(model.features.relu0, ACTIVATIONS[act])
    assert isinstance(model.features.denseblock3.denselayer5.relu2, ACTIVATIONS[act])
    assert isinstance(model.features.transition2.relu, ACTIVATIONS[act])
    model.train()
    out = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    out.square().mean().backward()  # in-place activations must leave autograd intact
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_mobilenet_activation_variants_build_and_train(name, act, images):
    model = create_backbone(name, act_layer=act, num_classes=3)
    acts = [m for m in model.modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
    assert acts and all(type(m) is ACTIVATIONS[act] for m in acts)
    model.train()
    out = model(images)
    out.square().mean().backward()
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert all(p.grad is not None for p in model.parameters())


def test_mobilenet_default_activation_is_relu6():
    v1, v2 = _meta_backbone("mobilenet_v1"), _meta_backbone("mobilenet_v2")
    assert isinstance(v1.act1, nn.ReLU6) and isinstance(v1.blocks[3][2].act2, nn.ReLU6)
    assert isinstance(v2.features[0][2], nn.ReLU6) and isinstance(v2.features[5].conv[1][2], nn.ReLU6)


def test_prelu_adds_one_parameter_per_activation():
    with torch.device("meta"):
        # MobileNet v1: the stem's activation and two in each of its 13 blocks.
        assert count_params(create_backbone("mobilenet_v1", act_layer="prelu")) == 4_231_976 + 27
        # DenseNet-121: stem, two per dense layer (58 layers), one per transition (3), relu5.
        assert count_params(create_backbone("densenet121", act_layer="prelu")) == 7_978_856 + 1 + 116 + 3 + 1


@pytest.mark.parametrize("name", ["densenet121", "mobilenet_v2", "resnet18", "vgg11"])
def test_unknown_activation_names_the_valid_ones(name):
    """One lookup (models/layers.py) for every family: the same names everywhere."""
    valid = "relu, leaky_relu, prelu, elu, selu, relu6"
    with pytest.raises(ValueError, match=rf"Unknown activation 'swish'. Valid names: {valid}\."):
        create_backbone(name, act_layer="swish")


def test_shufflenet_refuses_a_bad_table():
    with pytest.raises(ValueError, match=r"3 stage repeats and 5 channel counts"):
        create_backbone("shufflenet_v2_x1_0", stages_repeats=(4, 8))

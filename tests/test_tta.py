"""Test-time augmentation (finetune/deploy/tta.py): which views a run gets, that the
probabilities are the mean of the views' probabilities, and that a run folder and its
export agree under it, on the photos of the shared linear run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from finetune.deploy import predict as predict_mod
from finetune.deploy.export import export_run
from finetune.deploy.tta import CROPS, make_view

pytestmark = pytest.mark.usefixtures("one_thread")


def _test_files(run_dir):
    splits = json.loads((run_dir / "splits.json").read_text())
    return splits["classes"], [(path, label) for path, label in splits["test"]]


@pytest.fixture(scope="module")
def no_flip_run(linear_run, tmp_path_factory):
    """The linear run's folder with hflip off in its config: the same weights, trained (as
    far as test-time augmentation is concerned) without flips."""
    dest = tmp_path_factory.mktemp("tta") / "no-flip"
    shutil.copytree(linear_run.run_dir, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    cfg["hflip"] = False
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def export_dir(linear_run, tmp_path_factory):
    return export_run(linear_run.run_dir, format="onnx",
                      output=tmp_path_factory.mktemp("tta") / "onnx").path


def test_views_mirror_only_runs_that_trained_with_flips(linear_run, no_flip_run, export_dir,
                                                         tmp_path):
    flips = predict_mod.load(linear_run.run_dir).tta_views
    assert flips == ["plain", "hflip", *CROPS]
    assert predict_mod.load(no_flip_run).tta_views == ["plain", *CROPS]
    # The export carries the permission in model.json ...
    meta = json.loads((export_dir / "model.json").read_text())
    assert meta["preprocessing"]["hflip"] is True
    assert predict_mod.load(export_dir).tta_views == flips
    # ... and an export written before it did gets no mirrored view.
    old = tmp_path / "old"
    shutil.copytree(export_dir, old)
    del meta["preprocessing"]["hflip"]
    (old / "model.json").write_text(json.dumps(meta))
    assert predict_mod.load(old).tta_views == ["plain", *CROPS]


def test_tta_probabilities_are_the_mean_of_each_views(linear_run):
    predictor = predict_mod.load(linear_run.run_dir)
    _, samples = _test_files(linear_run.run_dir)
    paths = [p for p, _ in samples[:4]]
    tta = predictor.predict_proba(paths, tta=True)
    # Reference: each image alone, each view alone, softmax, then the mean.
    for row, path in zip(tta, paths, strict=True):
        x = predictor.preprocess(path)[None]  # (1, 3, S, S)
        per_view = [predictor.probabilities(make_view(x, v))[0] for v in predictor.tta_views]
        np.testing.assert_allclose(row, np.mean(per_view, axis=0), rtol=1e-5, atol=1e-6)
        logits = [tuple(np.round(predictor.logits(make_view(x, v))[0], 4))
                  for v in predictor.tta_views]
        assert len(set(logits)) == len(logits)  # every view shows the model something else
    plain = predictor.predict_proba(paths)
    assert not np.allclose(tta, plain)  # TTA is not the plain view under another name
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, rtol=1e-5)


def test_view_geometry_on_a_real_photo(linear_run):
    predictor = predict_mod.load(linear_run.run_dir)
    _, samples = _test_files(linear_run.run_dir)
    x = predictor.preprocess(samples[0][0])[None]
    assert torch.equal(make_view(x, "hflip"), x.flip(-1))
    corner = make_view(x, "crop_top_left")
    assert corner.shape == x.shape
    # The crop is the top-left S x S of the view enlarged 1.15x.
    big = torch.nn.functional.interpolate(x, size=[round(x.shape[-1] * 1.15)] * 2,
                                          mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(corner, big[..., :x.shape[-2], :x.shape[-1]], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="Valid views: plain, hflip"):
        make_view(x, "vflip")


def test_predict_tta_on_the_export_matches_the_run(cli, linear_run, export_dir):
    _, samples = _test_files(linear_run.run_dir)
    paths = [p for p, _ in samples]
    from_run = cli("predict", linear_run.run_dir, *paths, "--tta", "--json", "--top-k", "1")
    from_export = cli("predict", export_dir, *paths, "--tta", "--json", "--top-k", "1")
    assert from_run.exit_code == 0, from_run.output
    assert from_export.exit_code == 0, from_export.output
    run_preds, export_preds = json.loads(from_run.output), json.loads(from_export.output)
    assert [r["path"] for r in run_preds] == paths
    assert [r["predictions"][0]["label"] for r in run_preds] == \
        [r["predictions"][0]["label"] for r in export_preds]
    for a, b in zip(run_preds, export_preds, strict=True):
        assert a["predictions"][0]["probability"] == pytest.approx(
            b["predictions"][0]["probability"], abs=1e-4)


def test_evaluate_tta_records_accuracy_and_views(cli, linear_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(linear_run.run_dir, run_dir)
    result = cli("evaluate", run_dir, "--tta", "--json")
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "evaluation.json").read_text())
    predictor = predict_mod.load(run_dir)
    assert saved["tta"] == {"views": predictor.tta_views}
    classes, samples = _test_files(run_dir)
    assert saved["num_samples"] == len(samples)
    # The same accuracy from the Predictor's own TTA on the same files.
    probs = predictor.predict_proba([p for p, _ in samples], tta=True)
    labels = np.array([classes.index(y) for _, y in samples])
    assert saved["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert saved["loss"] == pytest.approx(
        float(-np.log(probs[np.arange(len(labels)), labels]).mean()), rel=1e-4)

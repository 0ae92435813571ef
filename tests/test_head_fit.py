"""``--head-fit lbfgs`` (``linear``'s default): scikit-learn's logistic regression, C chosen
by stratified k-fold cross-validation over train + val (on val with --no-head-refit), refit
on train + val, written into the model's classifier so checkpoints and evaluation work
unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from torch import nn

from finetune.config import RunConfig
from finetune.models.efficientnet import EfficientNet
from finetune.run_folder import load_run_model
from finetune.training import evaluate_run, run
from finetune.training.feature_cache import FeatureDataset
from finetune.training.head_fit import (
    CV_SCORING,
    CV_SEED,
    DEFAULT_CS,
    FALLBACK_C,
    HeadFit,
    cv_fold_count,
    cv_folds,
    fit_logistic_head,
    refit_logistic_head,
)


def _blobs(n: int, d: int = 20, classes: int = 4, seed: int = 0, spread: float = 1.5):
    """Overlapping Gaussian classes on a shifted, badly scaled feature space."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d)) * spread
    x = centres[y] + rng.normal(size=(n, d))
    scale = np.geomspace(0.1, 20.0, d)
    return (x * scale + 3.0).astype(np.float32), y


def _sklearn_objective(x, y, weight, bias, C):
    """sklearn's LogisticRegression objective: C * sum of log-losses + ||W||^2 / 2."""
    z = x @ weight.T + bias
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -C * log_p[np.arange(len(y)), y].sum() + 0.5 * (weight**2).sum()


def test_matches_sklearn_at_a_fixed_c():
    x, y = _blobs(300, spread=0.5)
    fit = fit_logistic_head((x, y), None, num_classes=4, max_iter=1000)
    assert fit.C == FALLBACK_C and len(fit.sweep) == 1
    # The same problem in sklearn: LogisticRegression on standardised features.
    mean, std = x.mean(0), x.std(0)
    xs = ((x - mean) / std).astype(np.float64)
    ref = LogisticRegression(C=FALLBACK_C, tol=1e-10, max_iter=10_000).fit(xs, y)
    # Our head acts on raw features; unfold it to compare in the standardised space.
    w = fit.weight.double().numpy() * std
    b = fit.bias.double().numpy() + fit.weight.double().numpy() @ mean
    ours = _sklearn_objective(xs, y, w, b, FALLBACK_C)
    theirs = _sklearn_objective(xs, y, ref.coef_, ref.intercept_, FALLBACK_C)
    # Converged to sklearn's own tolerance (max gradient 1e-4): the same minimum to 1e-4.
    assert ours == pytest.approx(theirs, rel=1e-4)
    probs = torch.softmax(torch.from_numpy(x @ fit.weight.numpy().T + fit.bias.numpy()), 1)
    np.testing.assert_allclose(probs.numpy(), ref.predict_proba(xs), atol=5e-3)


def test_sweep_picks_the_best_c_on_val():
    x, y = _blobs(400, seed=1)
    xv, yv = x[200:], y[200:]
    fit = fit_logistic_head((x[:200], y[:200]), (xv, yv), num_classes=4)
    assert [row["C"] for row in fit.sweep] == sorted(DEFAULT_CS)
    best = max(fit.sweep, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert fit.C == best["C"]
    # Stronger regularisation fits the training set less closely.
    assert fit.sweep[0]["train_loss"] > fit.sweep[-1]["train_loss"]
    # The head reproduces the val accuracy the sweep recorded for the chosen C.
    head = nn.Linear(20, 4)
    fit.apply_to(head)
    with torch.no_grad():
        acc = (head(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean()
    assert acc == pytest.approx(fit.best_row()["val_accuracy"])


def test_streamed_chunks_give_the_same_head(tmp_path):
    """Features larger than ``in_memory_bytes`` are streamed from the memmap in chunks."""
    x, y = _blobs(250, seed=2)
    entry = tmp_path / "entry"
    entry.mkdir()
    np.save(entry / "features.npy", x)
    np.save(entry / "labels.npy", y.astype(np.int64))
    (entry / "meta.json").write_text(json.dumps({"num_samples": 250, "num_features": 20}))
    ds = FeatureDataset(entry)
    whole = fit_logistic_head(ds, None, num_classes=4)
    streamed = fit_logistic_head(ds, None, num_classes=4, chunk_size=64, in_memory_bytes=0)
    torch.testing.assert_close(streamed.weight, whole.weight, atol=1e-3, rtol=1e-3)


def _sklearn_probs(x, y, C, x_eval):
    """sklearn's LogisticRegression at ``C`` on features standardised by ``x``'s moments."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit((x - mean) / std, y)
    return ref.predict_proba((x_eval - mean) / std)


def _head_probs(fit: HeadFit, x) -> np.ndarray:
    logits = torch.from_numpy(x) @ fit.weight.T + fit.bias
    return torch.softmax(logits.double(), 1).numpy()


def test_refit_learns_from_train_and_val_at_the_chosen_c():
    x, y = _blobs(400, seed=3, spread=0.5)
    train, val = (x[:240], y[:240]), (x[240:320], y[240:320])
    xt = x[320:]
    # C of at most 1: the stopping tolerance, relative to C * N, is then tight in sklearn's units.
    selection = fit_logistic_head(train, val, num_classes=4, Cs=(0.1, 1.0), max_iter=1000)
    refit = refit_logistic_head(selection, train, val, num_classes=4, max_iter=1000)
    assert refit.refit["images"] == 320 and (refit.refit["train_images"], refit.refit["val_images"]) == (240, 80)
    # The choice of C and its held-out scores are the selection's; the head is a new one.
    assert refit.C == selection.C and refit.sweep == selection.sweep
    assert not torch.allclose(refit.weight, selection.weight, atol=1e-3)
    # The same problem as sklearn's LogisticRegression(C) on all 320 standardised samples:
    # the same minimum to sklearn's tolerance; the selection fit is off that minimum.
    both_x, both_y = x[:320], y[:320]
    mean, std = both_x.mean(0), both_x.std(0)
    xs = ((both_x - mean) / std).astype(np.float64)
    ref = LogisticRegression(C=refit.C, tol=1e-10, max_iter=10_000).fit(xs, both_y)
    theirs = _sklearn_objective(xs, both_y, ref.coef_, ref.intercept_, refit.C)

    def objective(fit: HeadFit) -> float:
        w = fit.weight.double().numpy()
        return _sklearn_objective(xs, both_y, w * std, fit.bias.double().numpy() + w @ mean, refit.C)

    assert objective(refit) == pytest.approx(theirs, rel=1e-4)
    assert objective(selection) > theirs * (1 + 1e-2)
    agree = (_head_probs(refit, xt).argmax(1) == ref.predict((xt - mean) / std)).mean()
    assert agree == 1.0


@pytest.mark.parametrize("scoring", ["log_loss", "accuracy"])
def test_cross_validation_chooses_logistic_regression_cvs_c(scoring):
    """C by 5-fold CV over train + val is LogisticRegressionCV's C with the same grid, the
    same StratifiedKFold folds and the same scoring on the same standardised features, and
    the refit head makes its predictions."""
    x, y = _blobs(400, seed=5, spread=0.6)
    train, val = (x[:300], y[:300]), (x[300:], y[300:])
    selection = fit_logistic_head(train, val, num_classes=4, select="cv", cv_scoring=scoring,
                                  max_iter=1000)
    fit = refit_logistic_head(selection, train, val, num_classes=4, max_iter=1000)
    mean, std = x.mean(0), x.std(0)
    xs = ((x - mean) / std).astype(np.float64)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=CV_SEED)
    ref = LogisticRegressionCV(Cs=sorted(DEFAULT_CS), cv=folds, l1_ratios=(0.0,),
                               scoring="neg_log_loss" if scoring == "log_loss" else "accuracy",
                               tol=1e-10, max_iter=10_000, use_legacy_attributes=False).fit(xs, y)
    # Its per-C mean fold scores, and ours: the same curve, so the same argmax.
    theirs = ref.scores_.reshape(5, -1).mean(0)  # (Cs,)
    ours = np.array([r["cv_loss" if scoring == "log_loss" else "cv_accuracy"] for r in selection.sweep])
    assert [r["C"] for r in selection.sweep] == sorted(DEFAULT_CS)
    strong = np.array(sorted(DEFAULT_CS)) <= 1.0  # converged tightly enough to compare values
    if scoring == "log_loss":
        np.testing.assert_allclose(ours[strong], -theirs[strong], rtol=1e-3)
    else:
        np.testing.assert_allclose(ours[strong], theirs[strong], atol=1 / 80 + 1e-9)
    assert selection.C == fit.C == float(np.ravel(ref.C_)[0])
    assert min(DEFAULT_CS) < fit.C < max(DEFAULT_CS)  # an optimum inside the grid
    sel = fit.selection
    assert (sel["method"], sel["folds"], sel["scoring"], sel["images"]) == ("cv", 5, scoring, 400)
    assert sel["cv_loss"] == pytest.approx(selection.best_row()["cv_loss"])
    # The refit learnt from all 400 at that C: LogisticRegressionCV's refit predictions.
    np.testing.assert_allclose(_head_probs(fit, x), ref.predict_proba(xs), atol=5e-3)
    # Val is scored by the fit on train alone at that C: it has not seen val.
    head = nn.Linear(20, 4)
    selection.apply_to(head)
    with torch.no_grad():
        val_acc = (head(torch.from_numpy(val[0])).argmax(1).numpy() == val[1]).mean()
    assert selection.best_row()["val_accuracy"] == pytest.approx(val_acc)


def test_fold_count_follows_the_smallest_class():
    assert cv_fold_count(np.repeat([0, 1], [20, 20])) == 5
    assert cv_fold_count(np.repeat([0, 1, 2], [20, 3, 7])) == 3
    assert cv_fold_count(np.repeat([0, 1], [20, 1])) == 2  # at least two folds
    assert cv_fold_count(np.array([0, 1, 2])) is None  # no class can be split
    # A class absent from the labels (index 1 here) does not count as the smallest.
    assert cv_fold_count(np.repeat([0, 2], [9, 4])) == 4
    y = np.repeat([0, 1, 2], [20, 3, 7])
    folds = cv_folds(y)
    assert len(folds) == 3
    for fit_idx, held_idx in folds:  # every held-out part holds one of the 3 images of class 1
        assert (y[held_idx] == 1).sum() == 1 and len(np.intersect1d(fit_idx, held_idx)) == 0
    assert sorted(np.concatenate([h for _, h in folds])) == list(range(len(y)))
    # The head fit uses those folds.
    x, yb = _blobs(120, seed=6)
    yb = np.where(np.arange(120) < 3, 3, yb % 3)  # class 3: three images, all in train
    fit = fit_logistic_head((x[:100], yb[:100]), (x[100:], yb[100:]), num_classes=4, select="cv")
    assert fit.selection["folds"] == 3 and fit.selection["images"] == 120
    assert all(len(row["cv_fold_loss"]) == 3 for row in fit.sweep)


def test_cross_validation_falls_back_to_val_when_train_and_val_exceed_memory(tmp_path):
    """Train + val too large for ``in_memory_bytes`` twice over: C is chosen on val, with
    the features streamed, and the selection says why."""
    x, y = _blobs(300, seed=7)
    entry = tmp_path / "entry"
    entry.mkdir()
    np.save(entry / "features.npy", x[:220])
    np.save(entry / "labels.npy", y[:220].astype(np.int64))
    (entry / "meta.json").write_text(json.dumps({"num_samples": 220, "num_features": 20}))
    small = 2 * 300 * 20 * 4 - 1
    fit = fit_logistic_head(FeatureDataset(entry), (x[220:], y[220:]), num_classes=4, select="cv",
                            chunk_size=64, in_memory_bytes=small)
    on_val = fit_logistic_head((x[:220], y[:220]), (x[220:], y[220:]), num_classes=4)
    assert fit.selection["method"] == "val" and "in_memory_bytes" in fit.selection["cv_fallback"]
    assert fit.C == on_val.C and "val_accuracy" in fit.sweep[0] and "cv_loss" not in fit.sweep[0]
    torch.testing.assert_close(fit.weight, on_val.weight, atol=1e-3, rtol=1e-3)
    # Every class a single image: no stratified folds exist.
    one_each = fit_logistic_head((x[:2], np.array([0, 1])), (x[2:4], np.array([2, 3])),
                                 num_classes=4, select="cv")
    assert one_each.selection["method"] == "val" and "two images" in one_each.selection["cv_fallback"]


def test_refit_needs_a_validation_split():
    x, y = _blobs(60, seed=4)
    selection = fit_logistic_head((x, y), None, num_classes=4)
    with pytest.raises(ValueError, match="No validation features to refit the head on"):
        refit_logistic_head(selection, (x, y), (x[:0], y[:0]), num_classes=4)


def _run_features(run_dir, cache_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The cached features a run trained and was scored on, read back (every split a hit)."""
    from finetune.data import FinetuneDataModule
    from finetune.run_folder import build_model
    from finetune.training.feature_cache import feature_splits

    model, cfg, splits = load_run_model(run_dir)
    dm = FinetuneDataModule(splits, build_model(cfg, len(splits.classes)).pretrained_cfg,
                            image_size=cfg.image_size, augment="none", batch_size=32, num_workers=0)
    cached, _, hits = feature_splits(model, dm, cfg.replace(feature_cache_dir=str(cache_dir)),
                                     torch.device("cpu"), False)
    assert all(hits.values()), hits
    return {s: (np.array(cached[s]._open()[0]), cached[s].labels) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def refit_runs(photos_dir, tmp_path_factory):
    """``linear`` at its defaults (lbfgs, refit) and with --no-head-refit, on 128 real photos
    at 32 px (a harder task than at 96 px, and seconds), sharing one feature cache."""
    root = tmp_path_factory.mktemp("refit")
    base = dict(data=str(photos_dir), backbone="efficientnet_lite0", image_size=32,
                num_workers=0, feature_cache_dir=str(root / "cache"))
    refit = run(RunConfig(**base, output=str(root / "refit")), progress=False)
    selection = run(RunConfig(**base, head_refit=False, output=str(root / "selection")), progress=False)
    return refit, selection, root / "cache"


def test_linear_refits_on_train_and_val_and_reports_the_selection_fits_val(refit_runs):
    refit, selection, _ = refit_runs
    m, ms = refit.metrics, selection.metrics
    sizes = m["split_sizes"]
    assert m["head_fit"]["method"] == "lbfgs" and "refit" not in ms["head_fit"]
    assert m["head_fit"]["refit"]["images"] == sizes["train"] + sizes["val"]
    assert m["head_fit"]["refit"]["val_images"] == sizes["val"] == m["val"]["num_samples"]
    # Before a refit, C comes from 5-fold cross-validation over train + val, each C's
    # scores recorded; without one, from val.
    chosen = m["head_fit"]["sweep"][[r["C"] for r in m["head_fit"]["sweep"]].index(m["head_fit"]["C"])]
    sel = m["head_fit"]["selection"]
    assert (sel["method"], sel["folds"], sel["scoring"]) == ("cv", 5, CV_SCORING)
    assert sel["images"] == sizes["train"] + sizes["val"]
    assert all(len(r["cv_fold_loss"]) == 5 for r in m["head_fit"]["sweep"])
    key, sign = ("cv_loss", -1) if CV_SCORING == "log_loss" else ("cv_accuracy", 1)
    scores = {r["C"]: sign * r[key] for r in m["head_fit"]["sweep"]}
    assert sel[key] == chosen[key] and sign * chosen[key] == pytest.approx(max(scores.values()))
    # Ties (to rounding: the same fold accuracies summed differ in the last bit) go to the
    # lowest held-out loss: every tied C has a loss at least the chosen one's.
    tied = [r for r in m["head_fit"]["sweep"] if sign * r[key] >= sign * chosen[key] - 1e-9]
    assert all(r["cv_loss"] >= chosen["cv_loss"] for r in tied)
    assert ms["head_fit"]["selection"] == {"method": "val", "images": sizes["val"]}
    # Val is scored before the refit, by the fit on train alone at the chosen C.
    assert m["val"]["accuracy"] == pytest.approx(chosen["val_accuracy"])
    assert m["val"]["loss"] == pytest.approx(chosen["val_loss"], abs=1e-4)
    assert m["images_per_s"] * m["train_time_s"] == pytest.approx(sizes["train"] + sizes["val"], rel=0.01)
    # The checkpoint holds the refit head, a different one from the selection fit's.
    heads = [load_run_model(r.run_dir)[0].get_classifier().weight for r in (refit, selection)]
    assert not torch.allclose(heads[0], heads[1], atol=1e-4)
    again = evaluate_run(refit.run_dir, progress=False)
    assert again["accuracy"] == pytest.approx(m["test"]["accuracy"])
    assert "refit on train + val" in (refit.run_dir / "report" / "summary.md").read_text()


def test_linear_makes_sklearns_predictions_on_the_same_features(refit_runs):
    """The refit head is scikit-learn's LogisticRegression at the same C on the same
    standardised train + val features: their test probabilities agree to 0.02 (both stop
    at a gradient tolerance, not at the exact optimum, and ours reads float32 features),
    and the predictions are equal."""
    refit, _, cache = refit_runs
    feats = _run_features(refit.run_dir, cache)
    x = np.concatenate([feats["train"][0], feats["val"][0]]).astype(np.float64)
    y = np.concatenate([feats["train"][1], feats["val"][1]])
    xt, yt = feats["test"]
    theirs = _sklearn_probs(x, y, refit.metrics["head_fit"]["C"], xt.astype(np.float64))
    model = load_run_model(refit.run_dir)[0].get_classifier()
    with torch.no_grad():
        ours = torch.softmax(model(torch.from_numpy(xt)).double(), 1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-2)
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    assert refit.metrics["test"]["accuracy"] == pytest.approx((theirs.argmax(1) == yt).mean())


def test_refuses_a_non_linear_classifier():
    fit = HeadFit(weight=torch.zeros(2, 3), bias=torch.zeros(2), C=1.0, time_s=0.0)
    with pytest.raises(ValueError, match="--head-fit sgd"):
        fit.apply_to(nn.Sequential(nn.Linear(3, 2)))


@pytest.mark.slow
def test_lbfgs_run_reuses_the_cache_and_matches_sgd(digits_dir, tmp_path, monkeypatch):
    """Digits are far from ImageNet, so the probe is not trivially perfect."""
    images = {"n": 0}
    original = EfficientNet.forward_features

    def counted(self, x):
        images["n"] += x.shape[0]
        return original(self, x)

    monkeypatch.setattr(EfficientNet, "forward_features", counted)
    # The report's Grad-CAM gallery of test mistakes runs the backbone again after training;
    # this test counts the passes that training takes.
    monkeypatch.setattr("finetune.evaluation.report.top_losses_gallery", lambda *a, **k: None)
    base = dict(data=str(digits_dir), backbone="efficientnet_lite0", image_size=48,
                batch_size=32, num_workers=0, epochs=10, feature_cache_dir=str(tmp_path / "cache"))
    sgd = run(RunConfig(**base, head_fit="sgd", output=str(tmp_path / "sgd")), progress=False).metrics
    n_images = sum(sgd["split_sizes"].values())
    assert images["n"] == n_images  # one pass, then the head trains on features
    assert sgd["feature_cache"]["hits"] == {"train": False, "val": False, "test": False}

    lbfgs_run = run(RunConfig(**base, head_fit="lbfgs", output=str(tmp_path / "lbfgs")),
                    progress=False)
    lbfgs = lbfgs_run.metrics
    assert images["n"] == n_images  # second run: every split from the cache
    assert lbfgs["feature_cache"]["hits"] == {"train": True, "val": True, "test": True}
    assert lbfgs["head_fit"]["C"] in DEFAULT_CS
    assert 0.5 < sgd["val"]["accuracy"] < 1.0
    # The converged fit matches AdamW's epochs: at most one validation image worse. Which
    # images SGD's last epochs happen to fix depends on its batch order; the optimum's does
    # not. Both choose on val here (the epoch; C with --no-head-refit): the default's val
    # figure comes from a C that cross-validation chose, not tuned to these images.
    on_val = run(RunConfig(**base, head_fit="lbfgs", head_refit=False,
                           output=str(tmp_path / "on_val")), progress=False).metrics
    one_image = 1 / on_val["val"]["num_samples"]
    assert on_val["val"]["accuracy"] >= sgd["val"]["accuracy"] - one_image - 1e-9

    # The fitted head went into the checkpoint that evaluation and export read.
    ckpt = torch.load(lbfgs_run.run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["finetune"]["phase"] == "linear" and ckpt["finetune"]["history"][0]["C"] == lbfgs["head_fit"]["C"]
    model, _, _ = load_run_model(lbfgs_run.run_dir)
    assert model.get_classifier().weight.abs().sum() > 0
    again = evaluate_run(lbfgs_run.run_dir, progress=False)
    assert again["accuracy"] == pytest.approx(lbfgs["test"]["accuracy"])
    assert again["loss"] == pytest.approx(lbfgs["test"]["loss"], abs=1e-4)

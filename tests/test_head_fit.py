"""``--head-fit lbfgs``: scikit-learn's logistic regression, C chosen on val, written into
the model's classifier so checkpoints and evaluation work unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from finetune.config import RunConfig
from finetune.models.efficientnet import EfficientNet
from finetune.run_folder import load_run_model
from finetune.training import evaluate_run, run
from finetune.training.feature_cache import FeatureDataset
from finetune.training.head_fit import DEFAULT_CS, FALLBACK_C, HeadFit, fit_logistic_head


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
    base = dict(data=str(digits_dir), backbone="efficientnet_lite0", image_size=48,
                batch_size=32, num_workers=0, epochs=10, feature_cache_dir=str(tmp_path / "cache"))
    sgd = run(RunConfig(**base, output=str(tmp_path / "sgd")), progress=False).metrics
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
    # images SGD's last epochs happen to fix depends on its batch order; the optimum's does not.
    one_image = 1 / lbfgs["val"]["num_samples"]
    assert lbfgs["val"]["accuracy"] >= sgd["val"]["accuracy"] - one_image - 1e-9

    # The fitted head went into the checkpoint that evaluation and export read.
    ckpt = torch.load(lbfgs_run.run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["finetune"]["phase"] == "linear" and ckpt["finetune"]["history"][0]["C"] == lbfgs["head_fit"]["C"]
    model, _, _ = load_run_model(lbfgs_run.run_dir)
    assert model.get_classifier().weight.abs().sum() > 0
    again = evaluate_run(lbfgs_run.run_dir, progress=False)
    assert again["accuracy"] == pytest.approx(lbfgs["test"]["accuracy"])
    assert again["loss"] == pytest.approx(lbfgs["test"]["loss"], abs=1e-4)

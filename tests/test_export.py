"""`finetune export` / `finetune predict`: an export predicts what the evaluated model did.

One tiny real run (EfficientNet-Lite0 with its packaged ImageNet weights, linear probe on
the built-in photos at 96 px) and one export per format are made once and reused.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch
from click.testing import CliRunner
from PIL import Image

import finetune
from finetune.cli import main
from finetune.config import RunConfig
from finetune.data import FinetuneDataModule, load_splits
from finetune.deploy import export as export_mod
from finetune.deploy.export import (
    HALF_LOGIT_TOLERANCE,
    HALF_TOLERANCE,
    LOGIT_TOLERANCE,
    TOLERANCE,
    ExportError,
    export_model,
    export_run,
)
from finetune.deploy.formats import Tolerances, format_names, get_format
from finetune.deploy.formats import _spec as formats_spec
from finetune.deploy.formats import safetensors as safetensors_format
from finetune.deploy.predict import load_backbone, read_model_json
from finetune.models import UnsafeCheckpointError, create_backbone
from finetune.run_folder import load_run_model
from finetune.training import run
from finetune.training.features import predict_probs

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
ONE_GREY_LEVEL = 1 / 255 / 0.5  # one uint8 step after (x / 255 - 0.5) / 0.5


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class _Evil:
    """Unpickling this calls open(target, "w"): a checkpoint that creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(photos_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    cfg = RunConfig(data=str(photos_dir), output=str(out), backbone="efficientnet_lite0",
                    strategy="linear", image_size=96, batch_size=16, num_workers=0, epochs=2)
    return run(cfg, progress=False)


@pytest.fixture(scope="module")
def reference(trained):
    """The run's model on its test split through the evaluation data path: (paths, probs, logits)."""
    model, cfg, splits = load_run_model(trained.run_dir)
    dm = FinetuneDataModule(splits, model.pretrained_cfg, image_size=96, augment="none",
                            batch_size=8, num_workers=0)
    probs, labels = predict_probs(model, dm.eval_dataloader("test"), device=torch.device("cpu"),
                                  progress=False)
    x = torch.stack([dm.datasets["test"][i][0] for i in range(len(splits.test))])
    with torch.inference_mode():
        logits = model(x).numpy()
    return [Path(p) for p, _ in splits.test], probs.numpy(), logits, labels.numpy()


@pytest.fixture(scope="module")
def exports(trained):
    return {fmt: export_run(trained.run_dir, format=fmt) for fmt in format_names()}


@pytest.fixture(scope="module")
def extra_jpegs(tmp_path_factory):
    """A large JPEG (draft decoding, area downscaling) and a JPEG stored sideways with an
    EXIF orientation tag, plus the exact upright pixels of the latter as a PNG."""
    folder = tmp_path_factory.mktemp("jpegs")
    Image.open(SKIMAGE_DATA / "astronaut.png").convert("RGB").save(folder / "big.jpg", quality=90)
    cat = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB").resize((240, 160))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    cat.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=92)
    # The decoded sideways pixels, turned upright losslessly: the same image, stored upright.
    stored = Image.open(folder / "rotated.jpg").convert("RGB")
    stored.transpose(Image.Transpose.ROTATE_270).save(folder / "upright.png")
    return folder


# ---------------------------------------------------------------------- the registry
def test_the_shipped_formats_are_registered():
    assert set(format_names()) >= {"onnx", "torchscript", "safetensors"}
    files = [get_format(name).model_file for name in format_names()]
    assert len(set(files)) == len(files) and "model.json" not in files
    # The documented bounds (docs/export.md) hold for every shipped format.
    for name in ("onnx", "torchscript", "safetensors"):
        spec = get_format(name)
        assert spec.parity_tolerances(half=False) == (TOLERANCE, LOGIT_TOLERANCE) == (1e-4, 1e-3)
        assert spec.parity_tolerances(half=True) == (HALF_TOLERANCE, HALF_LOGIT_TOLERANCE)


def test_cli_offers_every_registered_format_with_its_help():
    result = _cli("export", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    choices = re.search(r"--format \[([a-z_|]+)\]", text).group(1).split("|")
    assert choices == list(format_names())
    for name in format_names():
        assert f"{name}: {get_format(name).help}" in text
    assert "onnx only, default 17" in text


def test_unknown_format_names_the_valid_ones(trained, tmp_path):
    result = _cli("export", trained.run_dir, "--format", "onxx")
    assert result.exit_code == 2 and "'onxx'" in result.output
    assert all(name in result.output for name in format_names())
    model = create_backbone("efficientnet_lite0", num_classes=2)
    with pytest.raises(ExportError, match=r"Unknown export format 'onxx'\. Did you mean 'onnx'\?"):
        export_model(model, labels=["a", "b"], image_size=64, format="onxx",
                     output=tmp_path / "x", images=[Path("unused.png")])
    assert not (tmp_path / "x").exists()
    (tmp_path / "model.json").write_text(json.dumps(
        {"format": "tflite", "labels": ["a"], "backbone": "resnet18", "preprocessing": {}}))
    with pytest.raises(ValueError, match="Unknown export format 'tflite'") as err:
        read_model_json(tmp_path)
    assert all(name in str(err.value) for name in format_names())


@pytest.mark.parametrize("fmt", format_names())
def test_options_a_format_cannot_honour_are_refused(fmt):
    spec = get_format(fmt)
    if spec.default_opset is None:
        with pytest.raises(ExportError, match=f"--opset applies to .* not {fmt}; drop it"):
            spec.options(half=False, opset=13)
    else:
        assert spec.options(half=False, opset=None).opset == spec.default_opset
        assert spec.options(half=False, opset=13).opset == 13
    if spec.half:
        assert spec.options(half=True, opset=None).half
    else:
        with pytest.raises(ExportError, match="--half applies to"):
            spec.options(half=True, opset=None)


def test_a_second_registration_of_a_name_is_refused():
    with pytest.raises(ValueError, match="'onnx' is registered twice"):
        formats_spec.register_format(get_format("onnx"))


# ---------------------------------------------------------------------- every format
@pytest.mark.parametrize("fmt", format_names())
def test_export_reloads_and_predicts_like_the_run(fmt, exports, reference, trained):
    spec = get_format(fmt)
    bounds = spec.parity_tolerances(half=False)
    paths, probs, logits, labels = reference
    # Real, varied inputs: every class is predicted and the run's model gets them right.
    assert len(set(probs.argmax(1))) == len(trained.metrics["classes"]) == 8
    assert (probs.argmax(1) == labels).mean() == pytest.approx(trained.metrics["test"]["accuracy"])

    result = exports[fmt]
    folder = trained.run_dir / "model" / fmt
    assert result.path == folder and result.model_file == folder / spec.model_file
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.json", spec.model_file])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders

    meta = json.loads((folder / "model.json").read_text())
    assert meta["labels"] == trained.metrics["classes"]
    assert (meta["backbone"], meta["strategy"], meta["format"]) == ("efficientnet_lite0", "linear", fmt)
    assert meta["input"]["shape"] == ["batch", 3, 96, 96]
    pre = meta["preprocessing"]
    assert (pre["resize"], pre["crop"], pre["jpeg_draft_size"]) == (109, 96, 218)  # floor(96 / 0.875)
    assert (pre["mean"], pre["std"], pre["interpolation"]) == ([0.5] * 3, [0.5] * 3, "bicubic")
    assert pre["channel_order"] == "RGB"
    assert meta["metrics"]["test"]["accuracy"] == trained.metrics["test"]["accuracy"]
    assert meta["model_file"] == spec.model_file and meta["half"] is False
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] <= bounds.probability
    assert meta["parity"]["batch_sizes"] == [1, 7] and meta["parity"]["num_images"] == 7
    assert (meta["parity"]["tolerance"], meta["parity"]["logit_tolerance"]) == bounds

    predictor = finetune.load(folder)
    assert predictor.kind == fmt
    got = predictor.predict_proba(paths, batch_size=5)
    np.testing.assert_allclose(got, probs, atol=bounds.probability)
    x = torch.stack([predictor.preprocess(p) for p in paths])
    got_logits = predictor.logits(x)
    np.testing.assert_allclose(got_logits, logits, atol=1e-3, rtol=1e-4)
    top = predictor.predict(paths, top_k=3)
    assert [row[0].label for row in top] == [meta["labels"][i] for i in probs.argmax(1)]
    assert all(len(row) == 3 and row[0].probability >= row[1].probability for row in top)

    # The format's own loader, called as a runtime would, gives the same logits.
    forward = spec.load(folder / spec.model_file, meta, torch.device("cpu"))
    with torch.inference_mode():
        np.testing.assert_allclose(forward(x[:3]).numpy(), logits[:3], atol=1e-3, rtol=1e-4)
    if spec.load_backbone is None:
        with pytest.raises(ValueError, match=f"is a {fmt} export; load_backbone reads"):
            load_backbone(folder)
    else:
        model = load_backbone(folder)
        assert (model.variant, model.num_classes) == ("efficientnet_lite0", 8)
        with torch.inference_mode():
            np.testing.assert_allclose(model(x).numpy(), logits, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("fmt", [f for f in format_names() if get_format(f).half])
def test_half_export_passes_the_looser_bound_and_reloads(fmt, trained, reference, tmp_path):
    paths, probs, logits, _ = reference
    result = export_run(trained.run_dir, format=fmt, half=True, output=tmp_path / "half")
    bounds = get_format(fmt).parity_tolerances(half=True)
    assert result.metadata["half"] and result.metadata["input"]["dtype"] == "float16"
    assert (result.parity.tolerance, result.parity.logit_tolerance) == bounds
    assert result.parity.passed and result.parity.top1_agree == 7
    # float16 moves logits (largest ~40 here) by up to ~1 %, never by a wrong label.
    predictor = finetune.load(result.path)
    got = predictor.logits(torch.stack([predictor.preprocess(p) for p in paths]))
    assert 0 < np.abs(got - logits).max() <= bounds.logit * np.abs(logits).max()
    assert (got.argmax(1) == probs.argmax(1)).all()


def test_onnx_model_is_checked_and_takes_any_batch(exports, reference):
    import onnx
    import onnxruntime as ort

    path = exports["onnx"].model_file
    onnx.checker.check_model(str(path), full_check=True)
    assert onnx.load(str(path)).opset_import[0].version == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 96, 96]
    paths, _, logits, _ = reference
    predictor = finetune.load(path.parent)
    x = torch.stack([predictor.preprocess(p) for p in paths[:5]]).numpy()
    (out,) = session.run(None, {"input": x})
    np.testing.assert_allclose(out, logits[:5], atol=1e-3, rtol=1e-4)


def test_torchscript_runs_at_another_batch_size(exports, reference):
    paths, _, logits, _ = reference
    module = torch.jit.load(str(exports["torchscript"].model_file))
    predictor = finetune.load(exports["torchscript"].path)
    x = torch.stack([predictor.preprocess(p) for p in paths[:5]])  # traced at 2
    with torch.inference_mode():
        np.testing.assert_allclose(module(x).numpy(), logits[:5], atol=1e-4, rtol=1e-5)


def test_safetensors_reloads_as_the_backbone_and_as_timm(exports, reference):
    import timm

    paths, _, logits, _ = reference
    folder = exports["safetensors"].path
    model = load_backbone(folder)
    assert model.variant == "efficientnet_lite0" and model.num_classes == 8
    x = torch.stack([finetune.load(folder).preprocess(p) for p in paths])
    # Same architecture, same keys: the export is also timm's tf_efficientnet_lite0.
    from safetensors.torch import load_file

    twin = timm.create_model("tf_efficientnet_lite0", num_classes=8)
    twin.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    with torch.inference_mode():
        np.testing.assert_allclose(model(x).numpy(), logits, atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(twin.eval()(x).numpy(), logits, atol=1e-4, rtol=1e-5)
    assert json.loads((folder / "model.json").read_text())["weights"]["keys"] == "finetune"


def test_timm_backbone_export_loads_into_timm(tmp_path, reference):
    import timm
    from safetensors.torch import load_file

    paths = reference[0][:3]
    model = create_backbone("timm:mobilenetv3_small_050", num_classes=3).eval()
    result = export_model(model, labels=["a", "b", "c"], image_size=64, format="safetensors",
                          output=tmp_path / "timm", images=paths)
    meta = result.metadata
    assert meta["weights"] == {**meta["weights"], "keys": "timm", "timm_model": "mobilenetv3_small_050"}
    twin = timm.create_model("mobilenetv3_small_050", num_classes=3).eval()
    twin.load_state_dict(load_file(str(result.model_file)), strict=True)
    predictor = finetune.load(result.path)
    x = torch.stack([predictor.preprocess(p) for p in paths])
    assert x.shape == (3, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), atol=1e-5)
    assert type(load_backbone(result.path)).__name__ == "TimmBackbone"


def test_half_export_uses_the_looser_documented_bound(tmp_path, trained):
    from safetensors import safe_open

    result = export_run(trained.run_dir, format="safetensors", half=True, output=tmp_path / "half")
    assert result.metadata["half"] and result.parity.tolerance == HALF_TOLERANCE == 1e-2
    assert result.parity.logit_tolerance == HALF_LOGIT_TOLERANCE == 5e-2
    assert result.metadata["weights"]["dtype"] == "float16"
    assert result.parity.passed and result.parity.top1_agree == 7
    with safe_open(str(result.model_file), "pt") as f:
        assert f.get_tensor("classifier.weight").dtype == torch.float16


# ---------------------------------------------------------------------- failures leave nothing
def test_planted_mean_mismatch_fails_parity_and_writes_nothing(trained, tmp_path, monkeypatch):
    real = export_mod.preprocess_spec

    def wrong_mean(cfg, image_size=None):
        return {**real(cfg, image_size), "mean": [0.485, 0.456, 0.406]}  # ImageNet's, not Lite0's

    monkeypatch.setattr(export_mod, "preprocess_spec", wrong_mean)
    dest = tmp_path / "exports" / "weights"
    result = _cli("export", trained.run_dir, "--format", "safetensors", "--output", dest)
    assert result.exit_code == 2, result.output
    assert "Parity check failed" in result.output and "max |p_export - p_pytorch|" in result.output
    # The probabilities of a confident model hardly move; its logits do, and fail the check.
    found = re.search(r"max \|logit difference\| = ([0-9.e+-]+) \(tolerance ([0-9.e+-]+) x ([0-9.]+)\)",
                      result.output)
    diff, tol, scale = map(float, found.groups())
    assert diff > tol * scale and tol == LOGIT_TOLERANCE
    assert not (tmp_path / "exports").exists()  # nor the parent folder the export created


def test_interrupted_write_leaves_nothing(trained, tmp_path, monkeypatch):
    def half_written(path, data):
        Path(path).write_bytes(data[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors_format, "atomic_write_bytes", half_written)
    dest = tmp_path / "out" / "weights"
    with pytest.raises(KeyboardInterrupt):
        export_run(trained.run_dir, format="safetensors", output=dest)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_parity_leaves_nothing(trained, tmp_path, monkeypatch):
    (tmp_path / "keep").mkdir()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "check_parity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(trained.run_dir, format="torchscript", output=tmp_path / "keep" / "ts")
    assert list((tmp_path / "keep").iterdir()) == []  # an existing parent stays, empty


def test_existing_export_is_replaced_only_when_asked_and_only_after_parity(trained, tmp_path, monkeypatch):
    dest = tmp_path / "st"
    first = export_run(trained.run_dir, format="safetensors", output=dest)
    with pytest.raises(ExportError, match="already holds an export"):
        export_run(trained.run_dir, format="safetensors", output=dest)
    before = (dest / "model.json").read_text()
    never = dataclasses.replace(get_format("safetensors"), tolerances=Tolerances(-1.0, -1.0))
    monkeypatch.setitem(formats_spec._FORMATS, "safetensors", never)  # every parity check fails
    with pytest.raises(ExportError, match="Parity check failed"):
        export_run(trained.run_dir, format="safetensors", output=dest, overwrite=True)
    assert (dest / "model.json").read_text() == before and first.model_file.is_file()
    monkeypatch.undo()
    export_run(trained.run_dir, format="torchscript", output=dest, overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == ["model.json", "model.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st"]


def test_option_errors_are_one_clear_line(trained, tmp_path):
    result = _cli("export", trained.run_dir, "--format", "safetensors", "--opset", "13")
    assert result.exit_code == 2 and "--opset applies to the onnx format only" in result.output
    (tmp_path / "notes.txt").write_text("mine")
    result = _cli("export", trained.run_dir, "--format", "onnx", "--output", tmp_path)
    assert result.exit_code == 2 and "not an export" in result.output
    with pytest.raises(ValueError, match="neither a run folder"):
        finetune.load(tmp_path)


# ---------------------------------------------------------------------- safety
def _evil_run(trained, tmp_path: Path, target: Path) -> Path:
    evil = tmp_path / "evil_run"
    (evil / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "splits.json", "metrics.json"):
        (evil / name).write_bytes((trained.run_dir / name).read_bytes())
    state = torch.load(trained.run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    torch.save({**state, "payload": _Evil(target)}, evil / "checkpoints" / "best.ckpt")
    return evil


def test_malicious_checkpoint_is_refused(trained, tmp_path):
    target = tmp_path / "pwned"
    evil = _evil_run(trained, tmp_path, target)
    # The premise: an unrestricted unpickle of this file does create a file.
    torch.load(evil / "checkpoints" / "best.ckpt", weights_only=False)["payload"].close()
    assert target.exists()
    target.unlink()

    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        finetune.load(evil)
    image = load_splits(trained.run_dir / "splits.json").test[0][0]
    result = _cli("predict", evil, image)
    assert result.exit_code == 2 and "Refusing to load" in result.output, result.output
    result = _cli("export", evil, "--format", "onnx")
    assert result.exit_code == 2 and "Refusing to load" in result.output, result.output
    assert not target.exists() and not (evil / "model").exists()


def test_torchscript_archive_naming_python_code_is_refused(exports, tmp_path):
    target = tmp_path / "pwned"
    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "model.json").write_bytes((exports["torchscript"].path / "model.json").read_bytes())
    with zipfile.ZipFile(exports["torchscript"].model_file) as src, \
            zipfile.ZipFile(folder / "model.pt", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, pickle.dumps(_Evil(target), protocol=2) if name.endswith("/data.pkl") else data)
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load"):
        finetune.load(folder)
    assert not target.exists()


# ---------------------------------------------------------------------- predict
def test_exif_rotated_jpeg_predicts_like_the_upright_image(exports, trained, extra_jpegs):
    rotated, upright = extra_jpegs / "rotated.jpg", extra_jpegs / "upright.png"
    for model in (trained.run_dir, exports["onnx"].path):
        predictor = finetune.load(model)
        x_rot, x_up = predictor.preprocess(rotated), predictor.preprocess(upright)
        assert torch.equal(x_rot, x_up)
        # Without the orientation the network would see another picture.
        sideways = predictor.preprocess(np.asarray(Image.open(rotated).convert("RGB")))
        assert (sideways - x_up).abs().mean() > 0.1
        p_rot, p_up = predictor.predict_proba([rotated, upright])
        np.testing.assert_array_equal(p_rot, p_up)
        assert predictor.labels[p_rot.argmax()] == "cat"
        # A PIL image gets the same orientation as the file it came from.
        np.testing.assert_allclose(predictor.predict_proba(Image.open(rotated))[0], p_up, atol=1e-6)


def test_predictor_accepts_paths_pil_images_and_arrays(exports, reference):
    paths = reference[0][:3]
    predictor = finetune.load(exports["torchscript"].path)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    by_path = predictor.predict_proba(paths)
    np.testing.assert_allclose(predictor.predict_proba([Image.open(p) for p in paths]), by_path, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(np.stack(arrays)), by_path, atol=1e-6)
    single = predictor.predict(arrays[0], top_k=2)
    assert [p.label for p in single] == [p.label for p in predictor.predict(paths, top_k=2)[0]]
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        predictor.predict(arrays[0].astype(np.float32))


def test_predict_json_matches_load_predict(exports, reference, tmp_path):
    paths = reference[0]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(paths[:4]):
        (folder / f"{i}{p.suffix}").write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    model = exports["onnx"].path
    result = CliRunner().invoke(main, ["predict", str(model), str(folder), *map(str, paths[4:]),
                                       "--json", "--top-k", "3", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "Skipped" in result.stderr and "broken.png" in result.stderr
    rows = json.loads(result.stdout)
    expected_paths = [str(folder / f"{i}{p.suffix}") for i, p in enumerate(paths[:4])] + list(map(str, paths[4:]))
    assert [r["path"] for r in rows] == expected_paths
    preds = finetune.load(model).predict(expected_paths, top_k=3)
    for row, mine in zip(rows, preds, strict=True):
        assert [p["label"] for p in row["predictions"]] == [p.label for p in mine]
        np.testing.assert_allclose([p["probability"] for p in row["predictions"]],
                                   [p.probability for p in mine], atol=1e-7)
    first = finetune.load(model).predict(paths[0], top_k=1)[0]
    text = _cli("predict", model, paths[0], "--top-k", "1")
    assert text.exit_code == 0 and text.output.strip() == f"{paths[0]}: {first.label} {first.probability:.4f}"


def test_independent_onnxruntime_script_reproduces_predict(exports, reference, extra_jpegs, tmp_path):
    """The script in docs/export.md: onnxruntime + Pillow + numpy + model.json only."""
    code = re.search(r"```python\n(# predict_onnx\.py.*?)```", DOCS.read_text(), re.S).group(1)
    script = tmp_path / "predict_onnx.py"
    script.write_text(code)
    assert "finetune" not in re.sub(r"#.*", "", code) and len(code.strip().splitlines()) <= 32
    model = exports["onnx"].path
    images = [*map(str, reference[0]), *(str(extra_jpegs / n) for n in ("big.jpg", "rotated.jpg"))]

    out = subprocess.run([sys.executable, str(script), str(model), *images], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    theirs = [json.loads(line) for line in out.stdout.splitlines()]
    result = CliRunner().invoke(main, ["predict", str(model), *images, "--json", "--top-k", "1"])
    ours = json.loads(result.stdout)
    assert [t["path"] for t in theirs] == [o["path"] for o in ours] == images
    assert [t["label"] for t in theirs] == [o["predictions"][0]["label"] for o in ours]
    np.testing.assert_allclose([t["probability"] for t in theirs],
                               [o["predictions"][0]["probability"] for o in ours], atol=1e-4)

    # Not only the top-1: the script's input tensors are ours to within one grey level.
    namespace: dict = {}
    argv, sys.argv = sys.argv, ["predict_onnx.py", str(model)]
    try:
        exec(compile(code.split("\nlogits = ")[0], str(script), "exec"), namespace)
    finally:
        sys.argv = argv
    predictor = finetune.load(model)
    for image in images:
        diff = np.abs(namespace["preprocess"](image) - predictor.preprocess(image).numpy())
        assert diff.max() <= ONE_GREY_LEVEL + 1e-6 and diff.mean() < 1e-3, image


@pytest.mark.parametrize("entry", [
    "import finetune",
    # The command line reads the format registry for `export --help`; the runtimes stay out.
    "from finetune.cli import main; main(['export', '--help'], standalone_mode=False)",
])
def test_import_finetune_stays_light(entry):
    heavy = {"onnxruntime", "onnx", "pytorch_lightning", "albumentations", "cv2",
             "finetune.deploy.predict", "finetune.deploy.export"}
    code = f"import sys\n{entry}\nprint(sorted({heavy!r} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr

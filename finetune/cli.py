"""The ``finetune`` command line.

    finetune run --data ./my_images --backbone resnet50 --strategy linear
    finetune evaluate runs/my_images-resnet50-linear
    finetune models
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import click

from .config import AUGMENT_CHOICES, DISTRIBUTED, HEAD_FITS, LOGGERS, ConfigError
from .deploy.formats import format_names, get_format
from .strategies import AUTO, check_strategy, get_strategy, strategy_names

log = logging.getLogger("finetune")


class UserError(click.ClickException):
    """One line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line whatever the source: YAML and torch errors carry their own newlines.
        super().__init__(" ".join(message.split()))


# When this module was imported: the process's start where the system does not say.
_IMPORTED = time.monotonic()


def process_started() -> float:
    """The ``time.monotonic()`` at which this process started, from ``/proc/self/stat``
    on Linux (so that interpreter start and imports count against ``--budget``), else
    when the CLI was imported."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after comm
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED
    return min(_IMPORTED, time.monotonic() - max(0.0, age))


def _user_errors(fn):
    """Turn the errors a user can fix into one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .data import DataError
        from .io import DiskFullError, is_disk_full
        from .models import UnsafeCheckpointError, WeightsNotFoundError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, WeightsNotFoundError, UnsafeCheckpointError,
                FileNotFoundError, ValueError, FloatingPointError) as err:
            raise UserError(str(err)) from None
        except (PermissionError, IsADirectoryError, NotADirectoryError) as err:
            raise UserError(
                f"Cannot read '{err.filename}': {err.strerror}. Check the path and its permissions."
            ) from None
        except OSError as err:
            if not is_disk_full(err):
                raise
            if not isinstance(err, DiskFullError):  # one no writer named: the errno at least
                err = DiskFullError(err, err.filename or "the output")
            raise UserError(str(err)) from None
        except MemoryError:
            raise UserError("Out of memory. Lower --batch-size or --image-size.") from None
        except RuntimeError as err:
            if "out of memory" in str(err).lower():
                raise UserError(
                    "Out of memory. Lower --batch-size (or --image-size) and run again."
                ) from None
            raise

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(format="%(message)s", level=logging.INFO if verbose else logging.WARNING)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def _check_backbone(ctx, param, value):
    if value is None:
        return None
    from .models import resolve_name

    try:
        return resolve_name(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


class _StrategyChoice(click.Choice):
    """The registered strategies and ``auto``; a misspelt one gets the nearest name."""

    def __init__(self) -> None:
        super().__init__([*strategy_names(), AUTO])

    def convert(self, value, param, ctx):
        try:
            return check_strategy(value)
        except ConfigError as err:
            self.fail(str(err), param, ctx)


class _LearningRate(click.ParamType):
    """``--lr``: a positive rate, or ``find`` (Lightning's range test picks each phase's)."""

    name = "LR|find"

    def convert(self, value, param, ctx):
        if value == "find" or isinstance(value, float):
            return value
        try:
            rate = float(value)
        except ValueError:
            self.fail(f"'{value}' is neither a learning rate (e.g. 1e-3) nor 'find'.", param, ctx)
        if not rate > 0:
            self.fail(f"{rate} is not a positive learning rate.", param, ctx)
        return rate


_STRATEGY_HELP = "; ".join(f"{name}: {get_strategy(name).summary}" for name in strategy_names())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="finetune")
def main() -> None:
    """Fine-tune pretrained CNNs on your own image folders."""


@main.command()
@click.option("--data", help="Image folder (class subfolders or train/val/test), CSV manifest, "
              "or builtin:NAME (photos, digits, glyphs; built offline).  [default: builtin:photos]")
@click.option("--backbone", callback=_check_backbone,
              help="Backbone name (see `finetune models`) or timm:<name>.  [default: efficientnet_lite0]")
@click.option("--strategy", type=_StrategyChoice(),
              help=f"{_STRATEGY_HELP}; auto: what `finetune recommend` says.  [default: linear]")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML recipe (see recipes/); flags override it.")
@click.option("--weights", help="'pretrained' (offline first), 'none' (random init), or a "
              ".pth/.safetensors/.ckpt file.  [default: pretrained]")
@click.option("--output", type=click.Path(path_type=Path),
              help="Run folder.  [default: runs/<data>-<backbone>-<strategy>]")
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs (default per strategy).")
@click.option("--lp-epochs", type=click.IntRange(min=0), help="lp-ft: epochs of the linear phase.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size.  [default: 32]")
@click.option("--image-size", type=click.IntRange(min=1), help="Input size (default: the backbone's).")
@click.option("--lr", type=_LearningRate(),
              help="Head learning rate; backbone stages get less (default per strategy); "
              "'find': each phase takes the rate of Lightning's range test (lr_find/ in the run).")
@click.option("--lr-find-steps", type=click.IntRange(min=5),
              help="Batches the range test of --lr find and lr-find runs.  [default: 100]")
@click.option("--unfreeze", type=click.IntRange(min=0),
              help="partial: how many last stages train (default per backbone); surgical: how "
              "many first stages (default 2).")
@click.option("--augment", type=click.Choice(AUGMENT_CHOICES), help="Augmentation strength.  [default: auto]")
@click.option("--hflip/--no-hflip", default=None,
              help="Random horizontal flips (turn off for text, digits, chiral objects).")
@click.option("--class-weights", type=click.Choice(["auto", "on", "off"]),
              help="Class-weighted loss (auto: when imbalance > 3:1).")
@click.option("--feature-cache/--no-feature-cache", default=None,
              help="linear: train the head on cached features (default on).")
@click.option("--feature-cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where cached features live.  [default: $FINETUNE_CACHE_DIR or "
              "~/.cache/finetune/features]")
@click.option("--image-cache/--no-image-cache", default=None,
              help="Backbone training: decode every image once into a memory-mapped cache "
              "instead of every epoch (faster loaders; costs disk).  [default: off]")
@click.option("--image-cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where decoded images live.  [default: $FINETUNE_IMAGE_CACHE_DIR or "
              "~/.cache/finetune/images]")
@click.option("--head-fit", type=click.Choice(HEAD_FITS),
              help="Head on cached features: lbfgs fits a logistic regression to convergence "
              "(C chosen on val); sgd trains it with AdamW for --epochs.  [default: lbfgs for "
              "linear, sgd for the probe of lp-ft and surgical]")
@click.option("--head-refit/--no-head-refit", default=None,
              help="lbfgs head that ends the run (linear): refit on train + val at the chosen "
              "C; val metrics stay those of the fit before.  [default: on]")
@click.option("--seed", type=int, help="Seed for the split, init and order.  [default: 0]")
@click.option("--num-workers", type=click.IntRange(min=0), help="Data loader workers.")
@click.option("--accelerator", help="Lightning accelerator: auto, cpu, gpu.  [default: auto]")
@click.option("--devices", help="Lightning devices: auto or a count.  [default: auto]")
@click.option("--num-nodes", type=click.IntRange(min=1),
              help="Machines (torchrun / SLURM), each running --devices processes.  [default: 1]")
@click.option("--distributed", type=click.Choice(DISTRIBUTED),
              help="Lightning's distributed strategy (see docs/scaling.md).  [default: auto]")
@click.option("--precision", help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the model when the backbone trains (GPU: faster after a "
              "minute of compiling).  [default: off]")
@click.option("--logger", "loggers", type=click.Choice(LOGGERS), multiple=True,
              help="Experiment tracking, repeatable: csv (RUN/logs/), tensorboard (RUN/tensorboard/), "
              "mlflow, wandb (offline unless configured), none.  [default: csv]")
@click.option("--tracking-uri", help="mlflow: a tracking server or store.  [default: "
              "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db here]")
@click.option("--patience", type=click.IntRange(min=1),
              help="Stop a phase after this many epochs without a lower val loss (the best "
              "epoch's weights are kept).")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), metavar="MINUTES",
              help="Wall-time budget of the run: with --strategy auto, the strategy, image size "
              "and epochs with the best forecast that fits; every phase stops at the budget "
              "(docs/recommend.md).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or decisions, just the result.")
@_user_errors
def run(recipe, resume, overwrite, quiet, **flags) -> None:
    """Fine-tune a pretrained backbone and evaluate it; writes a run folder."""
    from .config import resolve_config
    from .training import RunInterrupted
    from .training import run as run_training

    _setup_logging(verbose=not quiet)
    cfg = resolve_config(recipe, **_config_flags(flags))
    try:
        result = run_training(cfg, resume=resume, overwrite=overwrite, progress=not quiet,
                              started=process_started())
    except RunInterrupted as stop:
        # A state, not an error: where it stopped and how to go on, exit 128 + signal.
        if stop.rank0:
            if not quiet and sys.stdout.isatty():
                click.echo()  # end the progress bar's line: the message gets one of its own
            click.echo(str(stop), err=True)
        sys.exit(stop.exit_code)
    if not result.is_global_zero:
        return  # DDP: rank 0 evaluates, writes and prints
    m = result.metrics
    test = m["test"] or {}
    chosen = f"{m['strategy']} (auto)" if m.get("recommended_by") == "auto" else m["strategy"]
    line = (f"{m['backbone']} / {chosen}: test accuracy {test.get('accuracy', float('nan')):.4f}, "
            f"macro-F1 {test.get('macro_f1', float('nan')):.4f}")
    if test.get("top5_accuracy") is not None:
        line += f", top-5 {test['top5_accuracy']:.4f}"
    line += f" ({m['train_time_s']:.1f} s, {m['trainable_params']:,} of {m['total_params']:,} params trained)"
    click.echo(line)
    if m["skipped_files"]:
        click.echo(f"Skipped {len(m['skipped_files'])} unreadable files (listed in metrics.json).")
    click.echo(f"Run folder: {result.run_dir}  (report: {result.run_dir / 'report' / 'summary.md'})")


def _config_flags(flags: dict) -> dict:
    """``run``'s options as ``RunConfig`` keys."""
    for key in ("output", "feature_cache_dir", "image_cache_dir"):
        if flags.get(key) is not None:
            flags[key] = str(flags[key])
    flags["compile"] = flags.pop("compile_")
    flags["loggers"] = flags["loggers"] or None  # none given: the recipe's, or the default
    return flags


@main.command("lr-find", params=[p for p in run.params if p.name not in ("lr", "resume")])
@_user_errors
def lr_find(recipe, overwrite, quiet, **flags) -> None:
    """Lightning's learning-rate range test for each phase of a run: the curves
    (lr_find/<phase>.png), lr_find.json and the `finetune run` to use (default --output
    runs/<data>-<backbone>-<strategy>-lr-find)."""
    from .config import resolve_config
    from .training.lr_find import find_lrs

    _setup_logging(verbose=not quiet)
    cfg = resolve_config(recipe, **_config_flags(flags))
    out, findings = find_lrs(cfg, overwrite=overwrite, progress=not quiet)
    for finding in findings:
        click.echo(finding.line())
    click.echo(f"Curves and lr_find.json: {out}")


_TTA_HELP = ("Test-time augmentation: average the probabilities of the plain view, its "
             "mirror image (only if the run trained with flips) and five crops of it enlarged.")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", help="Evaluate on every image of this folder instead of the test split.")
@click.option("--tta", is_flag=True, help=_TTA_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_user_errors
def evaluate(run_dir: Path, data: str | None, tta: bool, as_json: bool) -> None:
    """Re-evaluate a run's best model on its test split (or on --data)."""
    from .io import atomic_write_json
    from .training import evaluate_run

    _setup_logging(verbose=False)
    metrics = evaluate_run(run_dir, data, tta=tta, progress=not as_json)
    atomic_write_json(run_dir / "evaluation.json", metrics)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    views = f" (TTA: {len(metrics['tta']['views'])} views)" if "tta" in metrics else ""
    click.echo(f"{metrics['data']}: {metrics['num_samples']} images{views}, accuracy "
               f"{metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    for label, row in metrics["per_class"].items():
        click.echo(f"  {label:<24} precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                   f"f1 {row['f1']:.3f}  n={row['support']}")
    click.echo(f"Written to {run_dir / 'evaluation.json'}")


@main.command()
@click.option("--summary", "summary_name", metavar="NAME",
              help="Print NAME's layer table instead of the list (a backbone or timm:<name>).")
@click.option("--input-size", type=click.IntRange(min=1),
              help="Input size for --summary (default: the backbone's own).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def models(summary_name: str | None, input_size: int | None, as_json: bool) -> None:
    """List the backbones (parameters, GMACs, weights), or one backbone's layers with --summary."""
    from .models.summary import catalog, format_catalog, format_summary, meta_backbone, summarize

    if summary_name is None:
        if input_size is not None:
            raise click.UsageError("--input-size goes with --summary NAME; the list uses each "
                                   "backbone's default size.")
        rows = catalog()
        click.echo(json.dumps(rows, indent=2) if as_json else format_catalog(rows))
        return
    try:
        model = meta_backbone(summary_name)  # shapes only: no weights allocated
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--summary'") from None
    try:
        summary = summarize(model, input_size=input_size)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--input-size'") from None
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@main.group()
def data() -> None:
    """Datasets: build the built-in ones offline, or check your own before training."""


@data.command("build")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("datasets"),
              show_default=True, help="Where to write <root>/<name>/.")
@click.option("--per-class", type=click.IntRange(min=1), help="Images per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@_user_errors
def data_build(name: str, root: Path, per_class: int | None, seed: int) -> None:
    """Build the built-in dataset NAME (photos, digits, glyphs) as class folders."""
    from .data.builtin import BUILTIN_DATASETS, build_dataset

    if name not in BUILTIN_DATASETS:
        raise UserError(f"Unknown built-in dataset '{name}'. Choose one of: {', '.join(BUILTIN_DATASETS)}.")
    path = build_dataset(name, root=root, per_class=per_class, seed=seed)
    click.echo(f"{name}: {path}")


@data.command("check")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A run's splits.json: also report files duplicated across its train/val/test.")
@click.option("--min-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Report images smaller than this on either side.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@_user_errors
def data_check(path: Path, splits_file: Path | None, min_size: int, as_json: bool) -> None:
    """Check PATH without training: classes, broken files, modes, sizes, duplicates.

    Exit code 0 when `finetune run` can train on it, 1 (with the reason) when it cannot.
    """
    from .data.check import check_data

    report = check_data(path, splits=splits_file, min_size=min_size)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.format())
    if not report.ok:
        click.echo(f"Error: cannot train on '{path}': {' '.join(report.problems)}", err=True)
        sys.exit(1)


def _export_help() -> tuple[str, str]:
    """--format's and --opset's help, from the registered formats (finetune/deploy/formats/)."""
    specs = [get_format(name) for name in format_names()]
    fmt = "; ".join(f"{s.name}: {s.help}" for s in specs) + "."
    opset = ", ".join(f"{s.name} only, default {s.default_opset}" for s in specs
                      if s.default_opset is not None)
    return fmt, f"Opset version ({opset or 'no format takes one'})."


_FORMAT_HELP, _OPSET_HELP = _export_help()


@main.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(format_names()), required=True,
              help=_FORMAT_HELP)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Export folder.  [default: RUN_DIR/model/<format>]")
@click.option("--opset", type=click.IntRange(min=7), help=_OPSET_HELP)
@click.option("--half", is_flag=True,
              help="float16 weights and input; parity bounds 1e-2 (probabilities) and 5e-2 "
              "(logits) instead of 1e-4 and 1e-3.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier export there (only once the new one passes parity).")
@_user_errors
def export(run_dir: Path, fmt: str, output: Path | None, opset: int | None, half: bool,
           overwrite: bool) -> None:
    """Export a run's model with its labels and preprocessing, after checking that it
    predicts what the PyTorch model predicts on the run's test images."""
    from .deploy.export import export_run

    _setup_logging(verbose=False)
    result = export_run(run_dir, format=fmt, output=output, opset=opset, half=half,
                        overwrite=overwrite)
    size_mb = result.model_file.stat().st_size / 1e6
    click.echo(f"Parity: {result.parity.describe()}.")
    click.echo(f"Exported {fmt} to {result.path} ({result.model_file.name} {size_mb:.1f} MB, "
               f"model.json).")


def _image_files(paths: tuple[Path, ...]) -> list[Path]:
    """The images in ``paths`` (files or folders), or one clear error when there are none."""
    from .deploy.predict import collect_images

    files = collect_images(paths)
    if not files:
        raise UserError(f"No image files in {', '.join(map(str, paths))} "
                        f"(looked for .jpg, .png, .bmp, .gif, .tif, .webp).")
    return files


@main.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many labels per image.")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: [{"path", "predictions": [{"label", "probability"}]}].')
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass.")
@click.option("--tta", is_flag=True, help=_TTA_HELP)
@_user_errors
def predict(model: Path, images: tuple[Path, ...], top_k: int, as_json: bool, batch_size: int,
            tta: bool) -> None:
    """Top-k labels of IMAGES (files or folders) with MODEL: a run folder or an export folder.

    Images are prepared exactly as evaluation prepares them (EXIF orientation included).
    Files that cannot be decoded are reported on stderr and skipped.
    """
    from .deploy.predict import load, predict_files

    _setup_logging(verbose=False)
    predictor = load(model)
    files = _image_files(images)
    results, failed = [], 0
    for path, preds, reason in predict_files(predictor, files, top_k=top_k, batch_size=batch_size,
                                             tta=tta):
        if preds is None:
            failed += 1
            click.echo(f"Skipped {path}: {reason}", err=True)
            continue
        if as_json:
            results.append({"path": str(path), "predictions": [p._asdict() for p in preds]})
        else:
            click.echo(f"{path}: " + ", ".join(f"{p.label} {p.probability:.4f}" for p in preds))
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if failed == len(files):
        raise UserError(f"None of the {len(files)} images could be read (reasons above).")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the figures and explain.json.  [default: RUN_DIR/explain]")
@click.option("--target", help="Explain this label instead of each image's predicted one.")
@click.option("--methods", default="gradcam,occlusion", show_default=True,
              help="Maps to draw, comma-separated: gradcam, occlusion.")
@_user_errors
def explain(run_dir: Path, images: tuple[Path, ...], output: Path | None, target: str | None,
            methods: str) -> None:
    """Why RUN_DIR's model predicts what it does on IMAGES (files or folders): per image the
    top-3 labels, Grad-CAM on the backbone's last stage and occlusion sensitivity, drawn
    on the image as the model saw it, with how much covering each map's most salient
    region lowers the probability against covering random regions (docs/explain.md).
    A flat map (a saturated prediction's occlusion map) has no salient region: it is
    named, and left out of that comparison."""
    from .evaluation.explain import EXPLAIN_DIRNAME, EXPLAIN_JSON, explain_run, format_drop

    _setup_logging(verbose=False)
    files = _image_files(images)
    result = explain_run(run_dir, files, output=output, target=target,
                         methods=[m.strip() for m in methods.split(",") if m.strip()])
    out_dir = Path(output) if output is not None else run_dir / EXPLAIN_DIRNAME
    for item in result["images"]:
        top = ", ".join(f"{p['label']} {p['probability']:.4f}" for p in item["top3"])
        click.echo(f"{item['path']}: {top} -> {out_dir / item['files']['figure']}")
        for method, check in item["faithfulness"].items():
            if check["flat"]:
                covered_p = item["target_probability"] - check["random_drop"]
                click.echo(f"  {_flat_map_line(method, covered_p)}")
    for item in result["skipped"]:
        click.echo(f"Skipped {item['path']}: {item['reason']}", err=True)
    for method, drops in result["faithfulness"]["mean"].items():
        if not drops["images"]:
            click.echo(f"{method}: the map is flat on every image; the faithfulness check does not apply")
            continue
        flat = (f"; {drops['flat_images']} of {drops['images'] + drops['flat_images']} images with a "
                f"flat map left out" if drops["flat_images"] else "")
        click.echo(f"{method}: covering the most salient window lowers p by "
                   f"{format_drop(drops['salient_drop'])} (log-odds by "
                   f"{format_drop(drops['salient_logodds_drop'], 2)}) on average, a random one by "
                   f"{format_drop(drops['random_drop'])} ({format_drop(drops['random_logodds_drop'], 2)})"
                   f"{flat}")
    click.echo(f"Wrote {out_dir / EXPLAIN_JSON}")


def _flat_map_line(method: str, covered_p: float) -> str:
    """What a flat map means, in words: no window stands out, so there is no salient one to
    test. ``covered_p``: the target's probability with a window covered (any window alike)."""
    if method == "occlusion":
        return (f"the occlusion map is flat: covering any window leaves p at {covered_p:.3f}; "
                f"the faithfulness check does not apply")
    return (f"the {method} map is flat: no region holds more of the evidence than another; "
            f"the faithfulness check does not apply")


@main.command()
@click.option("--data", required=True,
              help="What `finetune run --data` takes: an image folder, a CSV manifest or builtin:NAME.")
@click.option("--backbone", required=True, callback=_check_backbone,
              help="Backbone name (see `finetune models`) or timm:<name>.")
@click.option("--budget", "budget", type=click.FloatRange(min=0, min_open=True), metavar="MINUTES",
              help="Wall time available here, measuring included: the option with the best "
              "forecast that fits.")
@click.option("--image-size", type=click.IntRange(min=32),
              help="Input size to measure and train at (default: the backbone's).")
@click.option("--weights", default="pretrained", show_default=True,
              help="'pretrained' (offline first) or a .pth/.safetensors/.ckpt file to measure.")
@click.option("--max-images", type=click.IntRange(min=4), default=500, show_default=True,
              help="Images sampled (per class evenly) for the signals.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the split (as `finetune run --seed`) and of the sample.")
@click.option("--json", "as_json", is_flag=True, help="Print the recommendation as JSON.")
@_user_errors
def recommend(data: str, backbone: str, budget: float | None, image_size: int | None, weights: str,
              max_images: int, seed: int, as_json: bool) -> None:
    """Which strategy and image size suit DATA: measures how far the data sits from the
    backbone's pretraining (BatchNorm statistics per depth, linear probes per stage and
    size), places it on the amount x similarity grid, and prints the evidence, a forecast
    of each option's accuracy and time here, and the `finetune run` command."""
    from .recommend import recommend as make_recommendation

    _setup_logging(verbose=False)
    rec = make_recommendation(data, backbone, budget_minutes=budget, seed=seed,
                              max_images=max_images, image_size=image_size, weights=weights)
    click.echo(json.dumps(rec.to_json(), indent=2) if as_json else rec.format())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The human-readable part of a run folder: ``RUN_DIR/report/``.

    paths = write_report(run_dir, metrics, history, classes, config=config)

writes, from ``metrics.json``'s content (docs/design.md) and the per-epoch history:

    confusion_matrix.png              counts, true classes as rows
    confusion_matrix_normalized.png   rows divided by class support (recall on the diagonal)
    learning_curves.png               loss / accuracy (/ lr) per epoch, phase changes marked
    per_class.csv                     label, precision, recall, f1, support
    summary.md                        the run on one page, linking the figures
    top_losses.png                    the most confidently wrong test images with Grad-CAM
                                      (``test_predictions`` given and a test image wrong)
    skipped_files.txt                 images that could not be decoded, one per line

The per-class table and confusion matrices come from ``metrics["test"]``, or from
``metrics["val"]`` when the run has no test results. Optional ``metrics["split_sizes"]``
(``{"train": n, "val": n, "test": n}``) fills the data sizes; without it the summary
uses the val / test ``num_samples``.

Everything is rendered in memory first and each file then replaces its old version
atomically, so a crash leaves the previous report whole rather than half-overwritten.
Figures use matplotlib's object API with the Agg canvas: no pyplot, no global backend
switch, nothing that disturbs a notebook or a GUI in the same process.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io import atomic_write_bytes
from .figures import png_bytes
from .gallery import Gallery, TestPredictions, top_losses_gallery
from .metrics import most_confused_pairs

__all__ = [
    "confusion_matrix_figure",
    "learning_curves_figure",
    "phase_changes",
    "write_report",
]

REPORT_DIRNAME = "report"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_NORM_PNG = "confusion_matrix_normalized.png"
CURVES_PNG = "learning_curves.png"
PER_CLASS_CSV = "per_class.csv"
SUMMARY_MD = "summary.md"
SKIPPED_TXT = "skipped_files.txt"
TOP_LOSSES_PNG = "top_losses.png"

_MAX_LABEL_CHARS = 24
# The summary stays one readable page; the full list is always in skipped_files.txt.
_MAX_SKIPPED_IN_SUMMARY = 50
_CURVE_PANELS = (
    ("Loss", (("train", "train_loss"), ("val", "val_loss"))),
    ("Accuracy", (("train", "train_accuracy"), ("val", "val_accuracy"))),
    ("Learning rate", (("lr", "lr"),)),
)


# --------------------------------------------------------------------------- files


# --------------------------------------------------------------------------- figures


def _short(label: str) -> str:
    """Shorten long names in the middle: class names often differ only at the end."""
    if len(label) <= _MAX_LABEL_CHARS:
        return label
    head = (_MAX_LABEL_CHARS - 1) // 2
    return label[:head] + "…" + label[-(_MAX_LABEL_CHARS - 1 - head) :]


def confusion_matrix_figure(
    matrix, classes: Sequence[str], *, normalize: bool = False, title: str | None = None
) -> Figure:
    """A confusion matrix (rows true, columns predicted) with every cell's value written in.

    The figure grows with the number of classes (about 0.32 inch per cell) so that 50
    class names and cell values stay legible; ``normalize`` divides each row by its
    class's support, putting recall on the diagonal (rows with no samples stay 0).
    """
    cm = np.asarray(matrix, dtype=np.float64)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(
            f"confusion matrix has shape {cm.shape}, expected ({n}, {n}) for {n} classes."
        )
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        vmax = 1.0
    else:
        values = cm
        vmax = max(float(cm.max()), 1.0)

    side = max(5.0, 0.32 * n + 3.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)

    names = [_short(str(c)) for c in classes]
    # A cell is ~23 pt wide past 20 classes: room for an 8 pt name and a 7 pt "0.85".
    font = 10.0 if n <= 20 else 8.0
    if n <= 12:
        ax.set_xticks(
            range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font
        )
    else:
        ax.set_xticks(range(n), labels=names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels=names, fontsize=font)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(
        title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix")
    )

    # Past a dozen classes, zeros only add noise; the empty cell reads as zero.
    for i in range(n):
        for j in range(n):
            if cm[i, j] == 0 and n > 12:
                continue
            text = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            color = "white" if values[i, j] > 0.5 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=font - 1)
    return fig


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _epoch_axis(history: Sequence[Mapping]) -> tuple[np.ndarray, str]:
    """Epoch numbers when they increase; otherwise the row index.

    Two-phase strategies may restart their epoch count at 0 for the second phase,
    which would fold the curves back onto themselves.
    """
    epochs = np.array([_number(row.get("epoch")) for row in history], dtype=np.float64)
    if len(epochs) and np.isfinite(epochs).all() and (np.diff(epochs) > 0).all():
        return epochs, "epoch"
    return np.arange(len(history), dtype=np.float64), "epoch (counted across phases)"


def phase_changes(history: Sequence[Mapping]) -> list[tuple[float, str]]:
    """Where the training phase changes: ``(x between the two epochs, new phase name)``.

    Rows without a ``phase`` belong to the phase before them.
    """
    x, _ = _epoch_axis(history)
    changes = []
    last_phase, last_x = None, None
    for xi, row in zip(x, history, strict=True):
        phase = row.get("phase")
        if phase is None:
            if last_phase is not None:
                last_x = float(xi)
            continue
        if last_phase is not None and phase != last_phase:
            changes.append(((last_x + float(xi)) / 2.0, str(phase)))
        last_phase, last_x = phase, float(xi)
    return changes


def learning_curves_figure(history: Sequence[Mapping]) -> Figure | None:
    """Loss, accuracy and learning rate per epoch, train and val; None when nothing to draw.

    A panel appears only when its values were recorded (the cached-feature linear
    probe logs no train accuracy, for instance). Dashed lines mark phase changes.
    """
    if not history:
        return None
    x, xlabel = _epoch_axis(history)
    panels = []
    for title, series in _CURVE_PANELS:
        lines = []
        for name, key in series:
            y = np.array([_number(row.get(key)) for row in history], dtype=np.float64)
            if np.isfinite(y).any():
                lines.append((name, y))
        if lines:
            panels.append((title, lines))
    if not panels:
        return None

    starts = []
    first = next((i for i, row in enumerate(history) if row.get("phase") is not None), None)
    if first is not None:
        starts.append((float(x[first]), str(history[first]["phase"])))
    changes = phase_changes(history)
    starts += changes

    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    for k, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for name, y in lines:
            ax.plot(x, y, marker="o", markersize=3, label=name)
        if title == "Learning rate":
            positive = np.concatenate([y[np.isfinite(y)] for _, y in lines])
            if (positive > 0).all():
                ax.set_yscale("log")
        elif title == "Accuracy" and all(np.nanmax(y) <= 1.0 for _, y in lines):
            ax.set_ylim(0.0, 1.02)
        for boundary, _ in changes:
            ax.axvline(boundary, color="grey", linestyle="--", linewidth=1)
        for at, phase in starts:
            ax.text(
                at,
                0.98,
                f" {phase}",
                transform=ax.get_xaxis_transform(),
                va="top",
                ha="left",
                fontsize=8,
                color="dimgrey",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if title != "Learning rate":
            ax.legend(loc="best")
    return fig


# --------------------------------------------------------------------------- tables


def _eval_split(metrics: Mapping) -> tuple[str, Mapping] | None:
    for name in ("test", "val"):
        split = metrics.get(name)
        if isinstance(split, Mapping) and split.get("per_class"):
            return name, split
    return None


def _per_class_csv(per_class: Mapping | None, classes: Sequence[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "precision", "recall", "f1", "support"])
    for label in classes if per_class else ():
        row = per_class[label]
        # repr-precision floats, so the file matches metrics.json exactly.
        writer.writerow(
            [
                label,
                float(row["precision"]),
                float(row["recall"]),
                float(row["f1"]),
                int(row["support"]),
            ]
        )
    return out.getvalue().encode("utf-8")


def _plain(obj):
    """Config values as YAML-safe builtins (paths, tuples, numpy scalars, dataclasses)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


# --------------------------------------------------------------------------- summary


def _pct(value) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.2f}%"


def _dec(value) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds) -> str:
    if seconds is None:
        return "not recorded"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{seconds:.1f} s ({h}:{m:02d}:{s:02d})"


def _sizes(metrics: Mapping) -> str:
    sizes = dict(metrics.get("split_sizes") or {})
    for name in ("val", "test"):
        split = metrics.get(name)
        if name not in sizes and isinstance(split, Mapping) and "num_samples" in split:
            sizes[name] = split["num_samples"]
    parts = [
        f"{name} {sizes[name]:,}" if isinstance(sizes.get(name), int) else f"{name} not recorded"
        for name in ("train", "val", "test")
    ]
    return ", ".join(parts)


def _params(metrics: Mapping) -> str:
    trainable, total = metrics.get("trainable_params"), metrics.get("total_params")
    if not isinstance(trainable, int) or not isinstance(total, int):
        return "not recorded"
    share = f" ({100.0 * trainable / total:.2f}%)" if total else ""
    return f"{trainable:,} trainable of {total:,}{share}"


def _metrics_table(metrics: Mapping) -> list[str]:
    splits = [
        (name, metrics[name]) for name in ("val", "test") if isinstance(metrics.get(name), Mapping)
    ]
    if not splits:
        return ["No validation or test metrics were recorded."]
    rows = [
        ("Accuracy", "accuracy", _pct),
        ("Macro-F1", "macro_f1", _dec),
        ("Balanced accuracy", "balanced_accuracy", _pct),
        ("Top-5 accuracy", "top5_accuracy", _pct),
        ("ECE (calibration error)", "ece", _dec),
        ("Loss", "loss", _dec),
        ("Images", "num_samples", lambda v: "n/a" if v is None else f"{int(v):,}"),
    ]
    lines = [
        "| metric | " + " | ".join(name for name, _ in splits) + " |",
        "|---|" + "---:|" * len(splits),
    ]
    for label, key, fmt in rows:
        # Top-5 is None for 5 or fewer classes: a row of n/a would only puzzle the reader.
        if all(split.get(key) is None for _, split in splits):
            continue
        lines.append(
            f"| {label} | " + " | ".join(fmt(split.get(key)) for _, split in splits) + " |"
        )
    return lines


def _phases_section(phases) -> list[str]:
    if not phases:
        return []
    lines = ["## Phases", ""]
    items = phases.items() if isinstance(phases, Mapping) else enumerate(phases)
    for key, item in items:
        if isinstance(item, Mapping):
            name = item.get("name", item.get("phase", key))
            details = ", ".join(f"{k}={v}" for k, v in item.items() if k not in ("name", "phase"))
            lines.append(f"- **{name}**" + (f": {details}" if details else ""))
        else:
            lines.append(f"- **{key}**: {item}" if isinstance(phases, Mapping) else f"- {item}")
    return lines + [""]


def _early_stopping_lines(stops) -> list[str]:
    """One line per phase that ``--patience`` ended (metrics.json's ``early_stopping``)."""
    return [f"Early stopping: phase **{s['phase']}** stopped at epoch {s['stopped_epoch']} of "
            f"{s['max_epochs']}: {s['reason']}; the phase keeps epoch {s['best_epoch']}'s weights."
            for s in stops or ()] + ([""] if stops else [])


def _run_table(metrics: Mapping, classes: Sequence[str], skipped: Sequence[str]) -> list[str]:
    """The title and the one-glance table: what ran, on how much data, at what cost."""
    backbone, strategy = metrics.get("backbone", "unknown"), metrics.get("strategy", "unknown")
    ips = metrics.get("images_per_s")
    return [
        f"# Run report: `{backbone}` · `{strategy}`",
        "",
        "| run | |",
        "|---|---|",
        f"| Backbone | `{backbone}` |",
        f"| Strategy | `{strategy}` |",
        f"| Weights | {_cell(metrics.get('weights_source') or 'not recorded')} |",
        f"| Classes | {len(classes)} |",
        f"| Images | {_sizes(metrics)} |",
        f"| Parameters | {_params(metrics)} |",
        f"| Training time | {_duration(metrics.get('train_time_s'))} |",
        f"| Throughput | {'not recorded' if ips is None else f'{float(ips):,.1f} images/s'} |",
        f"| Skipped files | {len(skipped)} |",
        "",
    ]


def _per_class_section(evaluated: tuple[str, Mapping] | None, classes: Sequence[str]) -> list[str]:
    """Precision, recall, F1 and support of every class, in the model's class order."""
    if evaluated is None:
        return ["## Per-class results", "", "No per-class results were recorded.", ""]
    name, split = evaluated
    lines = [
        f"## Per-class results ({name})",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in classes:
        row = split["per_class"][label]
        lines.append(
            f"| {_cell(label)} | {_dec(row['precision'])} | {_dec(row['recall'])} "
            f"| {_dec(row['f1'])} | {int(row['support']):,} |"
        )
    return lines + [""]


def _confused_section(evaluated: tuple[str, Mapping] | None, classes: Sequence[str]) -> list[str]:
    """The five most frequent (true, predicted) mistakes, each as a share of its true class."""
    if evaluated is None:
        return []
    name, split = evaluated
    lines = [f"## Most confused classes ({name})", ""]
    matrix = split.get("confusion_matrix")
    if matrix is None:
        return lines + ["No confusion matrix was recorded.", ""]
    pairs = most_confused_pairs(matrix, list(classes), k=5)
    if not pairs:
        return lines + [f"No {name} image was misclassified.", ""]
    cm = np.asarray(matrix)
    index = {label: i for i, label in enumerate(classes)}
    lines += [
        "| true class | predicted as | images | share of true class |",
        "|---|---|---:|---:|",
    ]
    for true, pred, count in pairs:
        support = int(cm[index[true]].sum())
        lines.append(f"| {_cell(true)} | {_cell(pred)} | {count:,} | {_pct(count / support)} |")
    return lines + [""]


def _top_losses_section(gallery: Gallery | None, classes: Sequence[str]) -> list[str]:
    """The gallery of the most confidently wrong test images, and one row per image."""
    lines = ["## Top losses (test)", ""]
    if gallery is None:
        return lines + ["Not drawn: the report was given no test predictions (a run without "
                        "a test split).", ""]
    entries = gallery.entries
    if not entries:
        return lines + ["No test image was misclassified.", ""]
    lines += [
        f"The {len(entries)} test images the model got most confidently wrong, highest loss "
        "(-log p(true class)) first, each with the Grad-CAM map of the class it predicted:",
        "",
        f"![Top losses]({TOP_LOSSES_PNG})" if gallery.png is not None else f"Not drawn: {gallery.note}",
        "",
        "| # | image | true | predicted | p(predicted) | loss |",
        "|---:|---|---|---|---:|---:|",
    ]
    for rank, e in enumerate(entries, start=1):
        lines.append(f"| {rank} | `{_cell(e.path)}` | {_cell(classes[e.true])} | "
                     f"{_cell(classes[e.predicted])} | {e.probability:.4f} | {e.loss:.4f} |")
    return lines + [""]


def _figures_section(figures: Mapping[str, tuple[str, str | None]]) -> list[str]:
    """Each figure embedded, or the reason it was not drawn."""
    lines = ["## Figures", ""]
    for title, (file, note) in figures.items():
        lines.append(f"![{title}]({file})" if note is None else f"{title}: not drawn; {note}")
        lines.append("")
    return lines


def _skipped_section(skipped: Sequence[str]) -> list[str]:
    """The images left out because they could not be decoded, the first few by name."""
    lines = [f"## Skipped files ({len(skipped)})", ""]
    if not skipped:
        return lines + ["none", ""]
    lines += [
        "Images that could not be decoded were left out "
        f"(full list: [{SKIPPED_TXT}]({SKIPPED_TXT})):",
        "",
    ]
    lines += [f"- `{path}`" for path in skipped[:_MAX_SKIPPED_IN_SUMMARY]]
    if len(skipped) > _MAX_SKIPPED_IN_SUMMARY:
        lines.append(f"- ... and {len(skipped) - _MAX_SKIPPED_IN_SUMMARY:,} more")
    return lines + [""]


def _config_section(config: Mapping | None) -> list[str]:
    """The run's configuration as YAML, so the page alone says how to rerun it."""
    if not config:
        return []
    dumped = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    return ["## Configuration", "", "```yaml", dumped.rstrip("\n"), "```", ""]


def _summary(
    metrics: Mapping,
    classes: Sequence[str],
    evaluated: tuple[str, Mapping] | None,
    figures: Mapping[str, tuple[str, str | None]],
    skipped: Sequence[str],
    config: Mapping | None,
    top_losses: Gallery | None = None,
) -> str:
    """``summary.md``: the run, its metrics, where it errs, its figures, what it left out."""
    lines = [
        *_run_table(metrics, classes, skipped),
        "## Metrics",
        "",
        *_metrics_table(metrics),
        "",
        *_phases_section(metrics.get("phases")),
        *_early_stopping_lines(metrics.get("early_stopping")),
        *_per_class_section(evaluated, classes),
        *_confused_section(evaluated, classes),
        *_top_losses_section(top_losses, classes),
        *_figures_section(figures),
        *_skipped_section(skipped),
        *_config_section(config),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def _validate(metrics: Mapping, classes: Sequence[str], evaluated) -> None:
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a dict shaped like metrics.json, got {type(metrics).__name__}."
        )
    if not classes:
        raise ValueError("classes is empty; pass the label names in index order.")
    declared = metrics.get("num_classes")
    if declared is not None and declared != len(classes):
        raise ValueError(
            f"metrics says num_classes={declared} but {len(classes)} class names were given."
        )
    if evaluated is None:
        return
    name, split = evaluated
    missing = [c for c in classes if c not in split["per_class"]]
    extra = [c for c in split["per_class"] if c not in set(classes)]
    if missing or extra:
        raise ValueError(
            f"metrics['{name}']['per_class'] does not match classes: missing {missing[:5]}, "
            f"unexpected {extra[:5]}. Pass the same class list that classification_metrics got."
        )
    matrix = split.get("confusion_matrix")
    if matrix is not None and np.asarray(matrix).shape != (len(classes), len(classes)):
        raise ValueError(
            f"metrics['{name}']['confusion_matrix'] has shape {np.asarray(matrix).shape}, "
            f"expected ({len(classes)}, {len(classes)})."
        )


def _confusion_pngs(matrix, classes: Sequence[str], split_name: str) -> dict[str, bytes]:
    """The confusion matrix twice: counts, then rows normalised so recall is on the diagonal."""
    counts = confusion_matrix_figure(
        matrix, classes, title=f"Confusion matrix ({split_name}, counts)"
    )
    normalized = confusion_matrix_figure(
        matrix,
        classes,
        normalize=True,
        title=f"Confusion matrix ({split_name}, row-normalised: recall on the diagonal)",
    )
    return {CONFUSION_PNG: png_bytes(counts), CONFUSION_NORM_PNG: png_bytes(normalized)}


def _figure_files(
    evaluated: tuple[str, Mapping] | None, classes: Sequence[str], history: Sequence[Mapping]
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The figures that can be drawn, as PNG bytes, and why each of the others cannot."""
    files: dict[str, bytes] = {}
    notes: dict[str, str] = {}
    matrix = evaluated[1].get("confusion_matrix") if evaluated else None
    if matrix is not None:
        files.update(_confusion_pngs(matrix, classes, evaluated[0]))
    else:
        notes[CONFUSION_PNG] = notes[CONFUSION_NORM_PNG] = "no confusion matrix was recorded."
    fig = learning_curves_figure(history)
    if fig is not None:
        files[CURVES_PNG] = png_bytes(fig)
    elif not history:
        notes[CURVES_PNG] = "no training history was recorded."
    else:
        notes[CURVES_PNG] = "the training history has no loss, accuracy or learning-rate values."
    return files, notes


def _figure_index(notes: Mapping[str, str]) -> dict[str, tuple[str, str | None]]:
    """Title -> (file, why it was not drawn or None), in the order the summary shows them."""
    return {
        "Confusion matrix (counts)": (CONFUSION_PNG, notes.get(CONFUSION_PNG)),
        "Confusion matrix (row-normalised)": (CONFUSION_NORM_PNG, notes.get(CONFUSION_NORM_PNG)),
        "Learning curves": (CURVES_PNG, notes.get(CURVES_PNG)),
    }


def _replace_files(
    report_dir: Path, files: Mapping[str, bytes], stale: Iterable[str]
) -> list[Path]:
    """Write ``files`` into ``report_dir``, each replacing its old version atomically, and
    delete the ``stale`` ones: a figure left from an earlier report would contradict the
    new summary."""
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        atomic_write_bytes(report_dir / name, data)
        written.append(report_dir / name)
    for name in stale:
        (report_dir / name).unlink(missing_ok=True)
    return written


def write_report(
    run_dir: Path,
    metrics: dict,
    history: list[dict],
    classes: list[str],
    *,
    config: dict | None = None,
    test_predictions: TestPredictions | None = None,
) -> list[Path]:
    """Write ``run_dir/report/`` (see the module docstring) and return the written paths.

    Figures that cannot be drawn (no confusion matrix recorded, an empty history) are
    not written, a stale copy from an earlier report is removed, and ``summary.md``
    says why instead. ``test_predictions`` (the model and its test probabilities) adds
    the top-losses gallery; without it the summary says there is no test split.
    """
    classes = [str(c) for c in classes]
    history = list(history or [])
    evaluated = _eval_split(metrics) if isinstance(metrics, Mapping) else None
    _validate(metrics, classes, evaluated)
    skipped = [str(p) for p in metrics.get("skipped_files") or []]

    files, notes = _figure_files(evaluated, classes, history)
    gallery = (top_losses_gallery(test_predictions, classes)
               if test_predictions is not None else None)
    drawn = gallery is not None and gallery.png is not None
    if drawn:
        files[TOP_LOSSES_PNG] = gallery.png
    files[PER_CLASS_CSV] = _per_class_csv(evaluated[1]["per_class"] if evaluated else None, classes)
    summary = _summary(metrics, classes, evaluated, _figure_index(notes), skipped, config, gallery)
    files[SUMMARY_MD] = summary.encode("utf-8")
    files[SKIPPED_TXT] = "".join(f"{p}\n" for p in skipped).encode("utf-8")
    stale = [*notes, *([] if drawn else [TOP_LOSSES_PNG])]
    return _replace_files(Path(run_dir) / REPORT_DIRNAME, files, stale=stale)

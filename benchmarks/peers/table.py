"""The results file of run.py as a markdown table: accuracy and wall time per task and tool.

    python benchmarks/peers/table.py benchmarks/peers/results/<date>.json

Each cell is "test accuracy / wall time"; the ratio columns compare a tool's wall time
with ``finetune auto``'s on the same task (above 1: the tool takes longer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TOOLS = (
    "finetune auto",
    "finetune auto --budget",
    "finetune lp-ft 128",
    "finetune linear 128",
    "sklearn",
    "timm",
    "fastai",
    "autogluon",
)
LABELS = {
    "finetune auto": "`finetune run --strategy auto`",
    "finetune auto --budget": "`finetune run --strategy auto --budget M`",
    "finetune lp-ft 128": "`finetune run --strategy lp-ft --image-size 128`",
    "finetune linear 128": "`finetune run --strategy linear --image-size 128`",
    "sklearn": "scikit-learn LogisticRegressionCV, frozen features",
    "timm": "timm `train.py`, 8 epochs",
    "fastai": "fastai `fine_tune(7, freeze_epochs=1)`",
    "autogluon": "AutoGluon MultiModalPredictor, `time_limit`",
}


def cell(row: dict | None, reference: dict | None) -> str:
    if row is None:
        return "not run"
    if row.get("exit_code"):
        return "failed"
    text = f"{100 * row['test_accuracy']:.1f}% / {row['wall_s']:.0f} s"
    if reference and not reference.get("exit_code") and row is not reference:
        text += f" ({row['wall_s'] / reference['wall_s']:.2g}x)"
    return text


def table(results: dict) -> str:
    tasks = list(results["tasks"])
    present = [t for t in TOOLS if any(t in results["tasks"][task] for task in tasks)]
    lines = [
        "| | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for tool in present:
        cells = [
            cell(results["tasks"][task].get(tool), results["tasks"][task].get("finetune auto"))
            for task in tasks
        ]
        lines.append(f"| {LABELS[tool]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    print(table(json.loads(parser.parse_args().results.read_text())))


if __name__ == "__main__":
    main()

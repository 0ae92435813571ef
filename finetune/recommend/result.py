"""A recommendation: what ``finetune recommend`` prints and ``recommendation.json`` holds."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recommendation:
    strategy: str
    cell: dict[str, str]
    stats: dict[str, Any]
    similarity: dict[str, Any]
    hyperparameters: dict[str, dict[str, Any]]  # name -> {"value", "reason"}
    command: str
    evidence: list[dict[str, Any]]  # {"signal", "value", "meaning"}
    thresholds: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    backbone: str = ""
    data: str = ""
    estimated_minutes: float | None = None
    seconds: float = 0.0
    # Every option weighed: strategy, image size, epochs, forecast accuracy with its
    # interval, minutes here, command; "chosen" marks the one above, "decided" the grid's.
    forecast: list[dict[str, Any]] = field(default_factory=list)
    budget_minutes: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "cell": dict(self.cell),
            "stats": self.stats,
            "similarity": self.similarity,
            "hyperparameters": self.hyperparameters,
            "command": self.command,
            "evidence": self.evidence,
            "thresholds": self.thresholds,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "backbone": self.backbone,
            "data": self.data,
            "estimated_minutes": self.estimated_minutes,
            "seconds": round(self.seconds, 2),
            "forecast": self.forecast,
            "budget_minutes": self.budget_minutes,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Recommendation:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    def run_flags(self) -> dict[str, Any]:
        """The RunConfig values this recommendation sets (strategy included)."""
        flags = {"strategy": self.strategy}
        for key in ("unfreeze", "epochs", "lp_epochs", "lr", "augment", "image_size"):
            value = self.hyperparameters.get(key, {}).get("value")
            if value is not None:
                flags[key] = value
        return flags

    def format(self) -> str:
        return format_recommendation(self)


def _wrap(text: str, indent: str, subsequent: str | None = None) -> str:
    return textwrap.fill(text, width=100, initial_indent=indent,
                         subsequent_indent=subsequent if subsequent is not None else " " * len(indent))


def format_recommendation(rec: Recommendation) -> str:
    hp = rec.hyperparameters
    head = rec.strategy
    if "unfreeze" in hp:
        head += f" --unfreeze {hp['unfreeze']['value']}"
    lines = [f"Recommended strategy: {head}   ({rec.cell['amount']} data, {rec.cell['similarity']} "
             f"to {rec.backbone}'s pretraining data)", "", "Evidence"]
    for item in rec.evidence:
        lines.append(f"  {item['signal']}: {item['value']}")
        lines.append(_wrap(item["meaning"], "      "))
    lines += ["", "Decision"]
    lines += [_wrap(r, "  - ") for r in rec.reasons]
    lines += ["", "Thresholds (finetune.recommend.Thresholds; their regret: docs/recommend.md)"]
    items = [f"{k}={'off' if v is None else format(v, 'g')}" for k, v in rec.thresholds.items()]
    lines.append(_wrap(", ".join(items), "  "))
    lines += ["", "Hyperparameters"]
    for name, row in hp.items():
        lines.append(f"  {name}: {row['value']}")
        lines.append(_wrap(row["reason"], "      "))
    if rec.warnings:
        lines += ["", "Warnings"]
        lines += [_wrap(w, "  ! ") for w in rec.warnings]
    if rec.forecast:
        lines += ["", "Forecast (test accuracy with its 80% interval, from the probes and the benchmark's "
                  "fit; wall time here, from timed batches)"]
        lines += _forecast_table(rec.forecast)
    if rec.estimated_minutes is not None:
        lines += ["", f"Estimated time of the command below here: about {rec.estimated_minutes:.1f} min "
                  f"(measuring took {rec.seconds:.0f} s)."]
    lines += ["", "Run it:", f"  {rec.command}"]
    return "\n".join(lines)


def _forecast_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per option: * marks the chosen one, = the grid's decision where it differs."""
    out = [f"     {'strategy':<24}{'size':>5}{'epochs':>8}{'accuracy':>10}  {'interval':<13}{'minutes':>8}"]
    for row in sorted(rows, key=lambda r: (r["image_size"], r["minutes"])):
        mark = "*" if row["chosen"] else "=" if row["decided"] else " "
        name = row["strategy"] + (f" --unfreeze {row['unfreeze']}" if row["unfreeze"] is not None else "")
        low, high = row["interval"]
        out.append(f"  {mark}  {name:<24}{row['image_size']:>5}{row['epochs'] or '':>8}"
                   f"{row['accuracy']:>10.1%}  {low:.0%}-{high:.0%}{'':<5}{row['minutes']:>8.1f}")
    out.append("  (* the command below; = the grid's pick, where another option is chosen)")
    return out

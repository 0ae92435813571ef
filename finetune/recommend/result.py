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
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Recommendation:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})

    def run_flags(self) -> dict[str, Any]:
        """The RunConfig values this recommendation sets (strategy included)."""
        flags = {"strategy": self.strategy}
        for key in ("unfreeze", "epochs", "lp_epochs", "lr", "augment"):
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
    if rec.estimated_minutes is not None:
        lines += ["", f"Estimated training time here: about {rec.estimated_minutes:.1f} min "
                  f"(signals took {rec.seconds:.0f} s)."]
    lines += ["", "Run it:", f"  {rec.command}"]
    return "\n".join(lines)

"""Shared by the benchmark scripts: the machine they ran on, a Markdown table, the JSON file.

Every figure a script reports is measured in that one invocation, side by side with what
it is compared to, so a ratio never mixes two machines or two moments of load.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("FINETUNE_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

RESULTS = Path(__file__).parent / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Where and when: CPU, cores, threads torch uses, load average, library versions."""
    import torch

    info = {
        "date": str(date.today()),
        "time": time.strftime("%H:%M:%S %Z"),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    return info


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of ``rows`` (dicts) in ``columns`` order; floats to 4 significant digits."""

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict, out: Path | None = None, *, env: dict | None = None) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>.json`` (or ``out``), after the
    fields every result file carries: the machine (``env``, read before the runs, or now),
    the load average after the runs and the command that made it."""
    from finetune.io import atomic_write_json

    path = out or RESULTS / f"{name}.json"
    atomic_write_json(path, {
        "machine": env or machine(),
        "load_average_after": machine().get("load_average_1_5_15min"),
        "command": "python " + " ".join(sys.argv),
        **payload,
    })
    return path


def load_now() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

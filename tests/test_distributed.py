"""DDP through Lightning: a real 2-process CPU (gloo) job launched by torchrun, and the
rank-0-only rule for everything outside ``trainer.fit``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import finetune.training.runner
from finetune.config import ConfigError, RunConfig
from finetune.training import run

# The head trains for epochs (AdamW), so both ranks run Lightning's fit and sum val shards.
TINY = ["--backbone", "efficientnet_lite0", "--head-fit", "sgd", "--image-size", "32", "--epochs", "2",
        "--batch-size", "16", "--num-workers", "0", "--accelerator", "cpu", "-q"]


def test_other_ranks_write_and_print_nothing(cli, photos_dir, tmp_path, monkeypatch):
    """A rank other than 0 trains but leaves config, splits, metrics and report to rank 0."""
    monkeypatch.setattr(finetune.training.runner, "global_rank", lambda: 1)
    out = tmp_path / "rank1"
    result = cli("run", "--data", photos_dir, "--output", out, *TINY)
    assert result.exit_code == 0, result.output
    assert result.output == ""
    for name in ("config.yaml", "splits.json", "metrics.json", "report"):
        assert not (out / name).exists(), name


def test_distributed_choices_are_checked():
    with pytest.raises(ConfigError, match="Invalid distributed 'fsdp'.*auto, ddp, ddp_spawn"):
        RunConfig(distributed="fsdp")
    with pytest.raises(ConfigError, match="num_nodes must be a positive integer"):
        RunConfig(num_nodes=0)


@pytest.mark.slow
def test_torchrun_two_process_ddp_on_cpu(photos_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "FINETUNE_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "finetune", "run", "--data", str(photos_dir), "--output", str(out),
           "--devices", "2", "--distributed", "ddp", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Rank 0 alone printed the result, wrote one metrics.json and one report.
    assert proc.stdout.count("test accuracy") == 1, proc.stdout
    assert list(out.rglob("metrics.json")) == [out / "metrics.json"]
    assert len(list(out.rglob("summary.md"))) == 1
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["distributed"] == "ddp"
    m = json.loads((out / "metrics.json").read_text())
    assert m["distributed"] == {"strategy": "ddp", "num_nodes": 1, "world_size": 2}

    # In kind like the single-process run of the same command.
    single = run(RunConfig(data=str(photos_dir), output=str(tmp_path / "single"), image_size=32,
                           head_fit="sgd", epochs=2, batch_size=16, num_workers=0, accelerator="cpu"),
                 progress=False).metrics
    assert set(m) - {"distributed"} == set(single)
    assert set(m["test"]) == set(single["test"]) and set(m["val"]) == set(single["val"])
    for key in ("trainable_params", "total_params", "split_sizes", "classes", "num_classes"):
        assert m[key] == single[key], key
    assert m["images_per_s"] > 0 and m["test"]["per_class"].keys() == single["test"]["per_class"].keys()
    # The history's val loss was summed over both ranks' shards: at the best epoch it is
    # the loss rank 0 measures afterwards on the whole val split with the best weights.
    history = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["finetune"]["history"]
    assert len(history) == 2
    assert min(row["val_loss"] for row in history) == pytest.approx(m["val"]["loss"], abs=1e-4)
    # Same data, same seed, features from the shared cache: the probes agree closely.
    assert abs(m["test"]["accuracy"] - single["test"]["accuracy"]) <= 0.25


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_under_slurm_variables(photos_dir, tmp_path):
    """Multi-node as srun starts it: one task per node, each told its rank only by SLURM's
    variables (no torchrun), two "nodes" on this machine sharing the file system as
    cluster nodes share one. Lightning must read them, and rank 0 alone must write."""
    out = tmp_path / "slurm"
    port = str(_free_port())
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")}
    cmd = [sys.executable, "-m", "finetune", "run", "--data", str(photos_dir), "--output", str(out),
           "--devices", "1", "--num-nodes", "2", "--distributed", "ddp", *TINY]
    procs = []
    for node in (0, 1):
        env = {**base, "FINETUNE_OFFLINE": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "finetune",
               "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2",
               "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": str(node), "SLURM_LOCALID": "0",
               "SLURM_NODEID": str(node), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert outputs[0][0].count("test accuracy") == 1 and "test accuracy" not in outputs[1][0]
    assert list(out.rglob("metrics.json")) == [out / "metrics.json"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["distributed"] == {"strategy": "ddp", "num_nodes": 2, "world_size": 2}
    history = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["finetune"]["history"]
    assert len(history) == 2

"""Peak memory of a cached-feature ``linear`` run at 10,000 images against 2,500.

    python benchmarks/memory.py --threads 1         # 2,500 and 10,000 photos at 64 px
    python benchmarks/memory.py --quick             # 400 and 1,600

The features live in a memory-mapped cache file, so the process should not grow with the
number of images by more than that file (whose pages the kernel maps in as they are read,
and may drop again). Each run is its own child process, measured twice: with an empty
cache (extraction writes the memmap) and warm (the head trains on the memmap). Reported:
peak RSS (``ru_maxrss``), and the peaks of its anonymous and file-backed parts sampled
every 50 ms from /proc/self/status (file-backed pages are the mapped cache and libraries).
Prints a Markdown table; writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_now, machine, table, write_results  # noqa: E402


class RssSampler(threading.Thread):
    """Max of RssAnon and RssFile (kB) over the run, sampled from /proc/self/status."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every, self.peak = every, {"RssAnon": 0, "RssFile": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]))
            time.sleep(self.every)


def child(data: str, cache: str, out: str, size: int, epochs: int, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from finetune.config import RunConfig
    from finetune.training import run

    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    m = run(RunConfig(data=data, output=out, backbone="efficientnet_lite0", strategy="linear",
                      image_size=size, epochs=epochs, batch_size=64, feature_cache_dir=cache),
            overwrite=True, progress=False).metrics
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    cache_bytes = sum(p.stat().st_size for p in Path(cache).rglob("*.npy"))
    print(json.dumps({
        "images": sum(m["split_sizes"].values()), "wall_s": round(wall, 2),
        "cache_hits": m.get("feature_cache", {}).get("hits"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_anon_mb": round(sampler.peak["RssAnon"] / 1024, 1),
        "peak_file_mb": round(sampler.peak["RssFile"] / 1024, 1),
        "loader_workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "cache_mb": round(cache_bytes / 2**20, 1), "test_acc": m["test"]["accuracy"],
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[2500, 10000], help="images: small, large")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs=3, metavar=("DATA", "CACHE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, size=args.size, epochs=args.epochs, threads=args.threads)
        return
    if args.quick:
        args.sizes = [400, 1600]
    from finetune.data.builtin import build_dataset

    env = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    rows = []
    for n in args.sizes:
        start = time.perf_counter()
        data = build_dataset("photos", root=work / f"d{n}", per_class=n // 8, size=args.size)
        print(f"{n} images built in {time.perf_counter() - start:.0f} s", flush=True)
        cache = work / f"cache{n}"
        for state in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--size", str(args.size), "--epochs", str(args.epochs),
                   "--child", str(data), str(cache), str(work / f"run{n}")]
            if args.threads:
                cmd[2:2] = ["--threads", str(args.threads)]
            load = load_now()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-4000:])
            row = {"cache": state, "load_1min": load, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"  {n} {state}: peak RSS {row['peak_rss_mb']} MB, cache {row['cache_mb']} MB, "
                  f"{row['wall_s']} s", flush=True)

    def pick(n_index: int, state: str) -> dict:
        n = sorted({r["images"] for r in rows})[n_index]
        return next(r for r in rows if r["images"] == n and r["cache"] == state)

    growth = []
    for state in ("cold", "warm"):
        small, large = pick(0, state), pick(1, state)
        growth.append({
            "cache": state, "images": f"{small['images']} -> {large['images']}",
            "peak_rss_growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1),
            "anon_growth_mb": round(large["peak_anon_mb"] - small["peak_anon_mb"], 1),
            "file_growth_mb": round(large["peak_file_mb"] - small["peak_file_mb"], 1),
            "cache_file_growth_mb": round(large["cache_mb"] - small["cache_mb"], 1),
        })
    print()
    print(table(rows, ["images", "cache", "peak_rss_mb", "peak_anon_mb", "peak_file_mb",
                       "loader_workers_peak_rss_mb", "cache_mb", "wall_s", "load_1min"]))
    print()
    print(table(growth, list(growth[0])))
    path = write_results("memory", {
        "setup": {"image_size": args.size, "epochs": args.epochs, "backbone": "efficientnet_lite0",
                  "batch_size": 64, "torch_threads_in_runs": args.threads},
        "runs": rows, "growth": growth,
    }, args.out, env=env)
    print(f"\nWritten to {path}")
    shutil.rmtree(work, ignore_errors=True)  # datasets, runs and caches of this invocation


if __name__ == "__main__":
    main()

"""Memory over a long `features` run: peak RSS (client + workers) at 100 and at 1,000 clips.

Why: users run extraction over hundreds of thousands of files; anything kept per video (a
result list, an unbounded queue of futures, a leak in a decoder) shows up as memory that grows
with the number of videos. This bench generates N small clips (64x48, ~1 s, every other one
with sound; a folder-per-class dataset), runs the real `cli.py features` command on them with
a cheap profile, and samples the resident memory of the command's whole process tree (the
client and the Dask workers) every half second, together with the number of rows written to
the store. Flat memory means the peak over the first 100 rows and the peak over the whole run
are about equal (the JSON gives their ratio).

Usage: .venv/bin/python bench/load.py [--videos 1000] [--checkpoint 100] [--workers 2]
       [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.store.format import Status  # noqa: E402
from tests.hostile import clip_dataset  # noqa: E402
from tests.profiles import CHEAP_PROFILE  # noqa: E402

MIB = 2**20
SAMPLE_S = 0.5


def tree_rss(process: psutil.Process) -> tuple[int, int]:
    """(client RSS, sum of the RSS of its descendants: workers, nannies, helpers) in bytes."""
    try:
        client = process.memory_info().rss
    except psutil.Error:
        return 0, 0
    workers = 0
    for child in process.children(recursive=True):
        try:
            workers += child.memory_info().rss
        except psutil.Error:
            continue
    return client, workers


def rows_written(store: Path) -> int:
    """Rows with an rgb status; a shard replaced mid-read (RuntimeError) counts as unknown."""
    try:
        return int((zarr.open_group(store, mode="r")["rgb/status"][:] != Status.PENDING).sum())
    except (KeyError, ValueError, FileNotFoundError, RuntimeError):
        return -1


class Sampler(threading.Thread):
    """Polls the process tree's memory and the store's progress until stopped."""

    def __init__(self, pid: int, store: Path) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.store = store
        self.samples: list[tuple[float, int, int, int]] = []  # (s, rows, client, workers)
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        rows = 0
        while not self.stop.is_set():
            client, workers = tree_rss(self.process)
            seen = rows_written(self.store)
            rows = max(rows, seen)
            self.samples.append((time.monotonic() - started, rows, client, workers))
            self.stop.wait(SAMPLE_S)


def peaks(samples: list[tuple[float, int, int, int]], up_to_rows: int) -> dict[str, float]:
    chosen = [s for s in samples if s[1] <= up_to_rows] or samples[:1]
    values = np.array([(c, w, c + w) for _, _, c, w in chosen], dtype=np.float64) / MIB
    return {"client_mib": round(values[:, 0].max(), 1), "workers_mib": round(values[:, 1].max(), 1),
            "total_mib": round(values[:, 2].max(), 1), "samples": len(chosen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--checkpoint", type=int, default=100, help="first reporting point")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for clips and store [a temp dir]")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        work = args.work or Path(temp)
        root = work / "clips"
        started = time.monotonic()
        if not (root / "class0").exists():
            clip_dataset(root, args.videos, classes=10)
        generate_s = time.monotonic() - started
        profile = work / "cheap.yaml"
        profile.write_text(CHEAP_PROFILE)
        store = work / "load.zarr"
        command = [sys.executable, str(ROOT / "cli.py"), "features", "load", "--kind", "folder",
                   "--root", str(root), "--config", str(profile), "--out", str(store),
                   "--workers", str(args.workers), "--device", "cpu", "--flush-seconds", "5",
                   "--json"]
        started = time.monotonic()
        run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        sampler = Sampler(run.pid, store)
        sampler.start()
        output, _ = run.communicate()
        sampler.stop.set()
        sampler.join()
        seconds = time.monotonic() - started
        summary = json.loads(output)
        early = peaks(sampler.samples, args.checkpoint)
        whole = peaks(sampler.samples, args.videos)
        result = {
            "bench": "load",
            "videos": args.videos,
            "workers": args.workers,
            "returncode": run.returncode,
            "counts": {name: info["counts"] for name, info in summary["modalities"].items()},
            f"peak_at_{args.checkpoint}": early,
            f"peak_at_{args.videos}": whole,
            "total_ratio": round(whole["total_mib"] / early["total_mib"], 3),
            "client_ratio": round(whole["client_mib"] / early["client_mib"], 3),
            "generate_s": round(generate_s, 1),
            "run_s": round(seconds, 1),
            "videos_per_s": round(args.videos / seconds, 2),
            "cpus": psutil.cpu_count(),
        }
    if not args.json:
        print(f"{args.videos} clips in {seconds:.0f} s; peak memory (client + workers): "
              f"{early['total_mib']} MiB by row {args.checkpoint}, {whole['total_mib']} MiB "
              f"by row {args.videos}", file=sys.stderr)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

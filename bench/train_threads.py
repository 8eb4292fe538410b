"""Toy-sized training epochs at 1 torch thread and at torch's default, quiet and under load.

Store: the toy set's shape (240 videos, 12 classes; rgb 8 x 1280, flow 4 x 1280, audio
8 x 128, float16), synthetic, in a temp dir. Model and batch: configs/toy.yaml's `train:`
(mlp units 8/8/8, batch 16). Each measurement is one epoch (optimiser steps, then the
validation pass, as `train` does), the thread counts alternating round by round; "busy"
epochs run while a busy-loop process this script starts keeps one core busy. Ratios are
of medians measured in this one run, so a shared machine's load shows in both sides.
`profile_top_busy` lists where a busy epoch spends its time, per thread count.

Usage: .venv/bin/python bench/train_threads.py [--json] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import write_store  # noqa: E402  (bench/train.py)

from pipeline.profiles import load_profile  # noqa: E402
from pipeline.train.config import TrainConfig, torch_threads  # noqa: E402
from pipeline.train.data import load_split  # noqa: E402
from pipeline.train.evaluate import predict  # noqa: E402
from pipeline.train.loop import build_model, train_epoch  # noqa: E402

TOY_SHAPE = {"rgb": (8, 1280), "flow": (4, 1280), "audio": (8, 128)}
DEFAULT_THREADS = torch.get_num_threads()


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """One process spinning on one core for as long as the block runs."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        spinner.kill()  # the process started above, by its own handle
        spinner.wait()


def epoch_seconds(data: object, config: TrainConfig, threads: int) -> float:
    """One epoch of training plus its validation pass at `threads` torch threads."""
    device = torch.device("cpu")
    with torch_threads(threads):
        torch.manual_seed(0)
        model = build_model(data, config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
        started = time.perf_counter()
        train_epoch(model, data, optimizer, config, device, 1)
        predict(model, data.test.batches(max(config.batch_size, 256)), device,
                data.store.task)
        return time.perf_counter() - started


def profile_top(data: object, config: TrainConfig, threads: int, count: int = 8) -> list[str]:
    profiler = cProfile.Profile()
    profiler.runcall(epoch_seconds, data, config, threads)
    stats = pstats.Stats(profiler).sort_stats("tottime")
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:count]  # type: ignore
    return [f"{func[2]} ({Path(func[0]).name}:{func[1]}): {tt:.3f} s own, {calls} calls"
            for func, (_, calls, tt, _, _) in rows]


def run(rounds: int) -> dict:
    profile = load_profile("toy")
    config = TrainConfig.from_dict({**profile["train"], "device": "cpu", "progress": False})
    counts = sorted({1, DEFAULT_THREADS})
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as temp:
        store = Path(temp) / "toy-shape.zarr"
        write_store(store, 240, modalities=TOY_SHAPE, classes=12)
        data = load_split(store, split=1, streaming="off")
        epoch_seconds(data, config, 1)  # warm-up: first-call costs out of the figures
        seconds: dict[str, dict[int, list[float]]] = {"quiet": {}, "busy": {}}
        for load in seconds:
            with busy_core() if load == "busy" else contextlib.nullcontext():
                for _ in range(rounds):
                    for threads in counts:
                        seconds[load].setdefault(threads, []).append(
                            epoch_seconds(data, config, threads))
        with busy_core():
            top = {str(t): profile_top(data, config, t) for t in counts}
    median = {load: {t: statistics.median(v) for t, v in per.items()}
              for load, per in seconds.items()}
    return {
        "benchmark": "train_threads",
        "train_videos": len(data.train), "batch_size": config.batch_size,
        "steps_per_epoch": config.steps_per_epoch(len(data.train)),
        "cores": os.cpu_count(), "torch_default_threads": DEFAULT_THREADS, "rounds": rounds,
        "epoch_seconds": {load: {str(t): round(s, 4) for t, s in per.items()}
                          for load, per in median.items()},
        "busy_over_quiet": {str(t): round(median["busy"][t] / median["quiet"][t], 2)
                            for t in counts},
        "default_over_one_thread": {
            load: round(median[load][DEFAULT_THREADS] / median[load][1], 2)
            for load in median},
        "load_average_1min": round(os.getloadavg()[0], 2),
        "profile_top_busy": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = run(max(1, args.rounds))
    print(json.dumps(result, indent=None if args.json else 1))


if __name__ == "__main__":
    main()

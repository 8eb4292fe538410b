"""Time one training epoch on a UCF101-sized synthetic store, in memory and streamed.

Store: 13,320 videos, 101 classes, 3 splits (70 % train), rgb 32 x 1280, flow 32 x 1280,
audio 32 x 128, float16, Zarr chunks of 64 rows (zstd), written in a temp dir (~2.3 GB).
Model: the paper's best configuration, 64 / 32 / 32 units, shifting, linear head, batch 64,
Adam (fused). Each mode runs in its own subprocess so its peak memory is its own: the peak is
sampled every 50 ms as the RSS of the process plus the USS (unshared memory) of its DataLoader
workers, and the kernel's ru_maxrss of the process is reported as well. Epoch time excludes
the initial load (reported as load_seconds); for streaming, reading is part of the epoch.
Reference measured in the same run: float32 1024 x 1024 matmul GFLOP/s, since the machine may
be shared.

Usage: .venv/bin/python bench/train.py [--json] [--videos N] [--unit linear|mlp|dot|avg]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.store.format import FORMAT_NAME, FORMAT_VERSION, Split, Status  # noqa: E402
from pipeline.train.config import TrainConfig  # noqa: E402
from pipeline.train.data import load_split  # noqa: E402
from pipeline.train.loop import build_model, train_epoch  # noqa: E402

MODALITIES = {"rgb": (32, 1280), "flow": (32, 1280), "audio": (32, 128)}
CLASSES = 101
CHUNK_ROWS = 64
WRITE_ROWS = 1024


def write_store(path: Path, videos: int, seed: int = 0,
                modalities: dict[str, tuple[int, int]] = MODALITIES,
                classes: int = CLASSES) -> None:
    """A v1-format store with class-dependent features, written block by block."""
    rng = np.random.default_rng(seed)
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dataset": "bench-ucf101",
            "task": "single",
            "classes": [f"class_{c:03d}" for c in range(classes)],
            "modalities": {
                m: {"positions": L, "synthetic": True} for m, (L, _) in modalities.items()
            },
            "software": {"zarr": zarr.__version__},
            "created": "bench",
        }
    )
    labels = (np.arange(videos) % classes).astype(np.int32)
    group = root.create_group("videos")
    group.create_array("id", shape=(videos,), dtype=str, chunks=(4096,))[:] = np.array(
        [f"v{i:05d}.mp4" for i in range(videos)], dtype=object
    )
    group.create_array("label", shape=(videos,), dtype="int32", chunks=(4096,))[:] = labels
    split = np.where(rng.random((videos, 3)) < 0.7, Split.TRAIN, Split.TEST).astype(np.uint8)
    group.create_array("split", shape=(videos, 3), dtype="uint8", chunks=(4096, 3))[:] = split
    for name, (length, dim) in modalities.items():
        modality = root.create_group(name)
        features = modality.create_array(
            "features",
            shape=(videos, length, dim),
            dtype="float16",
            chunks=(CHUNK_ROWS, length, dim),
        )
        prototypes = rng.standard_normal((classes, dim), dtype=np.float32)
        for start in range(0, videos, WRITE_ROWS):
            stop = min(start + WRITE_ROWS, videos)
            block = rng.standard_normal((stop - start, length, dim), dtype=np.float32)
            block[:, 0] += prototypes[labels[start:stop]]
            features[start:stop] = block.astype(np.float16)
        modality.create_array("mask", shape=(videos, length), dtype="bool", chunks=(4096, length))[
            :
        ] = True
        modality.create_array(
            "time", shape=(videos, length), dtype="float32", chunks=(4096, length)
        )[:] = 0.0
        modality.create_array("error", shape=(videos,), dtype=str, chunks=(4096,))[:] = np.full(
            videos, "", dtype=object
        )
        modality.create_array("status", shape=(videos,), dtype="uint8", chunks=(4096,))[:] = (
            Status.DONE)


def matmul_gflops(seconds: float = 1.0) -> float:
    """Float32 1024^2 matmul throughput: the same-run yardstick for a shared machine."""
    a = torch.randn(1024, 1024)
    a @ a
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        count += 1
    return 2 * 1024**3 * count / (time.perf_counter() - start) / 1e9


class PeakMemory:
    """Samples RSS of this process + USS of its children (loader workers) every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        me = psutil.Process()
        while self.running:
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
                    total += child.memory_full_info().uss
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def run_mode(store: Path, mode: str, unit: str, batch_size: int) -> dict[str, float]:
    """One epoch in this process; memory measured from the start of loading."""
    memory = PeakMemory()
    config = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        unit=unit,
        progress=False,
        device="cpu",
        streaming="on" if mode == "streaming" else "off",
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    data = load_split(store, split=1, streaming=config.streaming, num_workers=1)
    loaded = time.perf_counter()
    model = build_model(data, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    loss, accuracy, _ = train_epoch(model, data, optimizer, config, torch.device("cpu"), 1)
    finished = time.perf_counter()
    peak = memory.stop()
    return {
        "epoch_seconds": finished - loaded,
        "load_seconds": loaded - started,
        "train_videos": len(data.train),
        "videos_per_second": len(data.train) / (finished - loaded),
        "peak_rss_gb": peak / 2**30,
        "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "train_loss": loss,
        "train_accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--videos", type=int, default=13_320)
    parser.add_argument("--unit", default="linear", choices=["avg", "linear", "dot", "mlp"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--worker", choices=["memory", "streaming"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_mode(args.store, args.worker, args.unit, args.batch_size)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        store = workdir / "ucf101-synthetic.zarr"
        started = time.perf_counter()
        write_store(store, args.videos)
        write_seconds = time.perf_counter() - started
        store_gb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30
        reference_before = matmul_gflops()
        modes = {}
        for mode in ("memory", "streaming"):
            command = [sys.executable, __file__, "--worker", mode, "--store", str(store)]
            command += ["--unit", args.unit, "--batch-size", str(args.batch_size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            modes[mode] = json.loads(output.strip().splitlines()[-1])
        reference_after = matmul_gflops()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    memory, streaming = modes["memory"], modes["streaming"]
    result = {
        "epoch_seconds_in_memory": round(memory["epoch_seconds"], 2),
        "epoch_seconds_streaming": round(streaming["epoch_seconds"], 2),
        "peak_rss_gb_in_memory": round(memory["peak_rss_gb"], 3),
        "peak_rss_gb_streaming": round(streaming["peak_rss_gb"], 3),
        "videos_per_second_in_memory": round(memory["videos_per_second"], 1),
        "videos_per_second_streaming": round(streaming["videos_per_second"], 1),
        "load_seconds_in_memory": round(memory["load_seconds"], 2),
        "ru_maxrss_gb_in_memory": round(memory["ru_maxrss_gb"], 3),
        "ru_maxrss_gb_streaming": round(streaming["ru_maxrss_gb"], 3),
        "train_videos": memory["train_videos"],
        "store_gb_on_disk": round(store_gb, 2),
        "store_write_seconds": round(write_seconds, 1),
        "reference_matmul_gflops": round((reference_before + reference_after) / 2, 1),
        "reference_matmul_gflops_before_after": [
            round(reference_before, 1),
            round(reference_after, 1),
        ],
        "load_average_1min": round(psutil.getloadavg()[0], 2),
        "cpu_count": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "unit": args.unit,
        "batch_size": args.batch_size,
        "clusters": {"rgb": 64, "flow": 32, "audio": 32},
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()

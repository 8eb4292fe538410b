"""Feature extraction throughput on the toy set: videos/s with 1 and 2 Dask workers.

Also seconds per stage (decode, flow, audio, CNN, store write) measured in this process on a
sample of the same videos, and the peak memory of each worker process. The toy set is
generated into a temp dir unless --root points at one.

Usage: .venv/bin/python bench/extract.py [--json] [--videos N] [--root data/toy]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from extract.backbones.registry import extract_batched  # noqa: E402
from extract.flow.stacks import flow_stacks  # noqa: E402
from extract.logmel import SAMPLE_RATE, log_mel_patches  # noqa: E402
from extract.video.audio import read_audio  # noqa: E402
from extract.video.frames import read_gray_stacks, read_rgb  # noqa: E402
from pipeline.datasets.generated.toy import generate_toy  # noqa: E402
from pipeline.datasets.manifest import load_manifest  # noqa: E402
from pipeline.features.extractor import VideoFeatureExtractor  # noqa: E402
from pipeline.features.run import run_features  # noqa: E402
from pipeline.profiles import load_profile  # noqa: E402
from pipeline.store.create import create_store  # noqa: E402
from pipeline.store.format import ModalitySpec, Status  # noqa: E402
from pipeline.store.summary import summarize  # noqa: E402


def worker_peak_rss_gb() -> float:
    """Runs on a worker: its process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed_run(root: Path, profile: dict, out: Path, workers: int, limit: int) -> dict:
    """One whole `features` run on a fresh local cluster; videos/s and per-worker peak memory."""
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0",
                           env={"OMP_NUM_THREADS": str(max(1, os.cpu_count() // workers))})
    with cluster, Client(cluster) as client:
        started = time.perf_counter()
        result = run_features(kind="ucf101", root=root, profile=profile, out=out, dataset="toy",
                              scheduler=cluster.scheduler_address, limit=limit, device="cpu",
                              progress=False)
        seconds = time.perf_counter() - started
        peaks = sorted(client.run(worker_peak_rss_gb).values())
    counts = {m: info["counts"] for m, info in summarize(result.store)["modalities"].items()}
    return {"seconds": round(seconds, 2), "videos": result.run.completed,
            "videos_per_s": round(result.run.completed / seconds, 3),
            "peak_rss_gb_per_worker": [round(p, 3) for p in peaks], "counts": counts}


def stage_seconds(root: Path, profile: dict, videos: list[Path], out: Path) -> dict:
    """Mean seconds per video of each stage, in this process (one after the other)."""
    modalities = profile["modalities"]
    extractor = VideoFeatureExtractor(modalities, profile["limits"], "cpu")
    rgb, flow = modalities["rgb"], modalities["flow"]
    totals = dict.fromkeys(("decode", "flow", "audio", "cnn", "write"), 0.0)
    results = []
    extractor.extract(videos[0])  # warm-up: first-call costs are not per-video costs
    for path in videos:
        t0 = time.perf_counter()
        frames = read_rgb(path, rgb["positions"], rgb["resize_short"], rgb["crop"])
        stacks = read_gray_stacks(path, flow["positions"], flow["frames_per_stack"],
                                  tuple(flow["size"]))
        t1 = time.perf_counter()
        quantised = flow_stacks(stacks.stacks, flow["backend"], extractor.flow_params, "cpu")
        t2 = time.perf_counter()
        waveform = read_audio(path, SAMPLE_RATE)
        patches = log_mel_patches(waveform).patches if waveform is not None else None
        t3 = time.perf_counter()
        rgb_features = extract_batched(extractor.backbones["rgb"], frames.frames)
        extract_batched(extractor.backbones["flow"], quantised)
        if patches is not None:
            extract_batched(extractor.backbones["audio"], patches)
        t4 = time.perf_counter()
        totals["decode"] += t1 - t0
        totals["flow"] += t2 - t1
        totals["audio"] += t3 - t2
        totals["cnn"] += t4 - t3
        results.append({"rgb": {"features": rgb_features.astype(np.float16),
                                "time": frames.times, "status": Status.DONE}})
    store = create_store(out, dataset="bench", task="single", classes=["a"],
                         ids=[str(p) for p in videos], labels=np.zeros(len(videos), np.int32),
                         splits=np.ones((len(videos), 1), np.uint8), split_names=["all"],
                         modalities={"rgb": ModalitySpec(rgb["positions"],
                                                         extractor.dim("rgb"), {})})
    t5 = time.perf_counter()
    store.write_rows(list(range(len(videos))), results)
    totals["write"] = time.perf_counter() - t5
    return {stage: round(seconds / len(videos), 4) for stage, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--videos", type=int, default=48, help="videos per timed run")
    parser.add_argument("--root", type=Path, help="an existing toy set [generate one]")
    args = parser.parse_args()
    profile = load_profile("toy")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = args.root or generate_toy(tmp_path / "toy", videos=288, progress=not args.json)
        manifest = load_manifest("ucf101", root)
        sample = [manifest.path(v) for v in manifest.existing()[:: max(1, 288 // 12)]][:12]
        stages = stage_seconds(root, profile, sample, tmp_path / "stages.zarr")
        one = timed_run(root, profile, tmp_path / "one.zarr", 1, args.videos)
        two = timed_run(root, profile, tmp_path / "two.zarr", 2, args.videos)
    total = len(manifest.existing())
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "videos_in_toy_set": total,
        "videos_per_run": args.videos,
        "videos_per_s_1_worker": one["videos_per_s"],
        "videos_per_s_2_workers": two["videos_per_s"],
        "stage_seconds": stages,
        "peak_rss_gb_per_worker_1_worker": one["peak_rss_gb_per_worker"],
        "peak_rss_gb_per_worker_2_workers": two["peak_rss_gb_per_worker"],
        "estimated_toy_set_minutes_2_workers": round(total / two["videos_per_s"] / 60, 1),
        "runs": {"1_worker": one, "2_workers": two},
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

"""Our pipeline measured, for bench/extract.py: whole `features` runs and seconds per stage.

`timed_run` is `run_features` on a running local cluster (the one `features` starts:
pipeline/features/dask_runner.py `dask_client`, one worker per core, one thread each).
`video_stages` times the steps of one video with the functions the extractor calls, in the
extractor's order and settings, so the split adds up to what a worker does per video;
`worker_stages` runs it on a cluster worker, where the timed runs ran.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.backbones.registry import extract_batched
from extract.flow.stacks import flow_stacks
from extract.flow.tvl1_torch import compile_wanted
from extract.logmel import SAMPLE_RATE, log_mel_patches
from extract.video.audio import read_audio
from extract.video.frames import read_gray_stacks, read_rgb
from pipeline.features.dask_runner import config_key, worker_cached
from pipeline.features.extractor import (
    VideoFeatureExtractor,
    decode_limits,
    extraction_threads,
    pick_evenly,
)
from pipeline.features.run import run_features
from pipeline.store.create import create_store
from pipeline.store.format import ModalitySpec, Status
from pipeline.store.summary import summarize

STAGES = ("decode", "flow", "cnn", "audio", "write")


def worker_peak_rss_gb() -> float:
    """Runs on a worker: its process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed_run(root: Path, profile: Mapping[str, Any], out: Path, scheduler: str,
              kind: str = "ucf101", limit: int | None = None) -> dict[str, Any]:
    """One whole `features` run on the cluster at `scheduler`: seconds, videos/s, counts."""
    started = time.perf_counter()
    result = run_features(kind=kind, root=root, profile=profile, out=out, dataset="bench",
                          scheduler=scheduler, limit=limit, device="cpu", progress=False)
    seconds = time.perf_counter() - started
    counts = {m: info["counts"] for m, info in summarize(result.store)["modalities"].items()}
    return {"seconds": round(seconds, 2), "videos": result.run.completed,
            "videos_per_s": round(result.run.completed / seconds, 4), "counts": counts}


def _done(features: np.ndarray, times: np.ndarray) -> dict[str, Any]:
    """A modality's result as the extractor returns it (features float16, all positions)."""
    return {"status": Status.DONE, "features": features.astype(np.float16),
            "mask": np.ones(len(features), bool), "time": np.asarray(times, np.float32),
            "error": ""}


def video_stages(extractor: VideoFeatureExtractor, path: Path
                 ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """(seconds of decode, flow, audio, cnn for one video; its result row for the store)."""
    s, limits = extractor.settings, decode_limits(extractor.limits)
    rgb, flow = s["rgb"], s["flow"]
    with extraction_threads():
        t0 = time.perf_counter()
        frames = read_rgb(path, rgb["positions"], rgb["resize_short"], rgb["crop"], limits)
        stacks = read_gray_stacks(path, flow["positions"], flow["frames_per_stack"],
                                  tuple(flow["size"]), limits)
        t1 = time.perf_counter()
        quantised = flow_stacks(stacks.stacks, flow["backend"], extractor.flow_params,
                                extractor.device, bound=float(flow["bound"]))
        t2 = time.perf_counter()
        waveform = read_audio(path, SAMPLE_RATE, limits)
        patches = None
        if waveform is not None:
            patches = log_mel_patches(waveform)
            chosen = pick_evenly(len(patches.patches), s["audio"]["positions"])
        t3 = time.perf_counter()
        row = {"rgb": _done(extract_batched(extractor.backbones["rgb"], frames.frames,
                                            rgb["batch_size"]), frames.times),
               "flow": _done(extract_batched(extractor.backbones["flow"], quantised,
                                             flow["batch_size"]), stacks.times)}
        if patches is not None:
            row["audio"] = _done(extract_batched(extractor.backbones["audio"],
                                                 patches.patches[chosen],
                                                 s["audio"]["batch_size"]),
                                 patches.times[chosen])
        t4 = time.perf_counter()
    seconds = {"decode": t1 - t0, "flow": t2 - t1, "audio": t3 - t2, "cnn": t4 - t3}
    return seconds, row


def write_seconds(extractor: VideoFeatureExtractor, rows: list[dict[str, Any]],
                  out: Path) -> float:
    """Seconds per row to write `rows` into a fresh store of the extractor's modalities."""
    specs = {name: ModalitySpec(int(settings["positions"]), extractor.dim(name), {})
             for name, settings in extractor.settings.items()}
    n = len(rows)
    store = create_store(out, dataset="bench", task="single", classes=["a"],
                         ids=[f"v{i}" for i in range(n)], labels=np.zeros(n, np.int32),
                         splits=np.ones((n, 1), np.uint8), split_names=["all"],
                         modalities=specs)
    started = time.perf_counter()
    store.write_rows(list(range(n)), rows)
    return (time.perf_counter() - started) / n


def mean_stages(per_video: list[dict[str, float]], write: float | None = None
                ) -> dict[str, float]:
    """Mean seconds per video of each stage, rounded for the report; `write` given apart
    when it was timed for all videos at once."""
    means = {stage: float(np.mean([one[stage] for one in per_video])) for stage in STAGES
             if stage != "write" or write is None}
    if write is not None:
        means["write"] = write
    return {stage: round(means[stage], 4) for stage in STAGES}


def _worker_extractor(settings: Mapping[str, Any]) -> VideoFeatureExtractor:
    """The extractor a `features` run built in this worker (the same cache key), or a new one."""
    return worker_cached(config_key("extractor", dict(settings)),
                         lambda: VideoFeatureExtractor(settings["modalities"],
                                                       settings["limits"], settings["device"]))


def worker_stages(settings: Mapping[str, Any], path: str
                  ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Runs on a cluster worker: `video_stages` of one video with that worker's models."""
    return video_stages(_worker_extractor(settings), Path(path))


def worker_warm_up(settings: Mapping[str, Any], path: str) -> float:
    """Runs on every worker before timing: models built, flow compiled (if it compiles) on
    one real stack; what a long run pays once per worker. Returns its seconds."""
    started = time.perf_counter()
    extractor = _worker_extractor(settings)
    flow = extractor.settings["flow"]
    with extraction_threads():
        stacks = read_gray_stacks(path, 1, flow["frames_per_stack"], tuple(flow["size"]))
        quantised = flow_stacks(stacks.stacks, flow["backend"], extractor.flow_params,
                                extractor.device, bound=float(flow["bound"]))
        extract_batched(extractor.backbones["flow"], quantised)
        log_mel_patches(np.zeros(SAMPLE_RATE, np.float32))
        crop = int(extractor.settings["rgb"]["crop"])
        extract_batched(extractor.backbones["rgb"], np.zeros((1, crop, crop, 3), np.uint8))
    return time.perf_counter() - started


def worker_flow_compiled() -> bool:
    """Runs on a worker: whether its TV-L1 runs compiled (AC_FLOW_COMPILE, else the default)."""
    return compile_wanted(None, torch.device("cpu"))

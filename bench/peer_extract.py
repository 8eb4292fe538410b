"""A peer-style reference pipeline: how feature tools are usually written, for bench/extract.py.

What it does per video, one process per core (a multiprocessing pool, 1 OpenCV thread and 1
torch thread each): `cv2.VideoCapture.read()` on every frame in order, keeping the frames the
sampling needs (the same K RGB positions and K flow stacks of M frames as our pipeline, resized
with cv2 as the profile says); OpenCV DualTVL1 one pair at a time with our TV-L1 parameters,
quantised as ours (TSN, bound 20); the same backbones applied one frame (one stack) at a time;
audio exactly as ours (PyAV to 16 kHz, log-mel patches); one .npy file per modality and video.
Where this differs from video_features and from MMAction2 + denseflow is in docs/benchmarks.md.

The sampling is computed here from OpenCV's frame count and rate, independently of
extract/video/frames.py, so tests/test_bench_extract.py can check both pick the same frames.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.extract_ours import STAGES
from extract.flow.opencv import opencv_tvl1
from extract.flow.stacks import quantize_flow
from extract.logmel import SAMPLE_RATE, log_mel_patches
from extract.video.audio import read_audio
from extract.video.frames import segment_centres
from pipeline.features.extractor import VideoFeatureExtractor, pick_evenly

PEER_THREADS = 1  # OpenCV and torch threads per worker process: one process per core

_worker: dict[str, Any] = {}  # this pool process's models and settings (init_worker)


def rgb_indices(frame_count: int, fps: float, k: int) -> np.ndarray:
    """Frame index at each of K segment centres (the frame whose interval holds the time)."""
    return np.floor(segment_centres(frame_count / fps, k) * fps + 1e-6).astype(np.int64)


def stack_starts(frame_count: int, fps: float, k: int, m: int) -> np.ndarray:
    """First frame of each of K stacks of M frames centred on the segment centres."""
    starts = segment_centres(frame_count / fps, k) * fps - (m - 1) / 2
    return np.maximum(np.floor(starts + 1e-6), 0).astype(np.int64)


def _resize_crop(bgr: np.ndarray, short: int, crop: int) -> np.ndarray:
    """BGR frame -> RGB, short side `short` (bilinear, as the peers do), centre `crop`."""
    height, width = bgr.shape[:2]
    scale = short / min(width, height)
    size = (max(short, round(width * scale)), max(short, round(height * scale)))
    resized = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size,
                         interpolation=cv2.INTER_LINEAR)
    top, left = (size[1] - crop) // 2, (size[0] - crop) // 2
    return resized[top : top + crop, left : left + crop]


def read_frames(path: Path, rgb: Mapping[str, Any], flow: Mapping[str, Any]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame read in order with OpenCV; (RGB frames (K, h, w, 3), grey stacks (K, M, H,
    W), RGB frame indices). A position past the last decodable frame takes the last one(s)."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    m, size = int(flow["frames_per_stack"]), tuple(flow["size"])
    wanted_rgb = rgb_indices(count, fps, int(rgb["positions"]))
    starts = stack_starts(count, fps, int(flow["positions"]), m)
    wanted_grey = {int(s) + j for s in starts for j in range(m)}
    wanted = set(wanted_rgb.tolist())
    kept_rgb: dict[int, np.ndarray] = {}
    kept_grey: dict[int, np.ndarray] = {}
    recent: deque[np.ndarray] = deque(maxlen=m)  # the last M grey frames, for the end
    last_bgr, index = None, 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        last_bgr = bgr
        if index in wanted:
            kept_rgb[index] = _resize_crop(bgr, int(rgb["resize_short"]), int(rgb["crop"]))
        grey = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), size,
                          interpolation=cv2.INTER_AREA)
        recent.append(grey)
        if index in wanted_grey:
            kept_grey[index] = grey
        index += 1
    capture.release()
    if last_bgr is None or len(recent) < 2:
        raise ValueError(f"{path}: too few frames for the peer pipeline ({index})")
    last_rgb = _resize_crop(last_bgr, int(rgb["resize_short"]), int(rgb["crop"]))
    frames = np.stack([kept_rgb.get(int(i), last_rgb) for i in wanted_rgb])
    tail = list(recent) + [recent[-1]] * (m - len(recent))
    stacks = np.stack([np.stack([kept_grey[int(s) + j] for j in range(m)])
                       if int(s) + m <= index else np.stack(tail) for s in starts])
    return frames, stacks, np.minimum(wanted_rgb, index - 1)


def peer_flow(stacks: np.ndarray, extractor: VideoFeatureExtractor, bound: float) -> np.ndarray:
    """OpenCV DualTVL1 one consecutive pair at a time -> uint8 (K, 2(M-1), H, W) TSN stacks."""
    out = []
    for stack in stacks:
        flow = np.concatenate([opencv_tvl1(stack[i : i + 1], stack[i + 1 : i + 2],
                                           extractor.flow_params)
                               for i in range(len(stack) - 1)])
        out.append(quantize_flow(flow, bound).reshape(-1, *flow.shape[-2:]))
    return np.stack(out)


def one_at_a_time(backbone: Any, items: np.ndarray) -> np.ndarray:
    """The backbone on each input alone, as frame-by-frame extraction loops call it."""
    return np.concatenate([backbone(items[i : i + 1]).numpy() for i in range(len(items))])


def init_worker(modalities: Mapping[str, Any], limits: Mapping[str, Any], out: str) -> None:
    """Pool initializer: one thread each, and the same backbones ours builds (loaded once)."""
    cv2.setNumThreads(PEER_THREADS)
    torch.set_num_threads(PEER_THREADS)
    extractor = VideoFeatureExtractor(modalities, limits, "cpu")
    _worker["extractor"], _worker["out"] = extractor, Path(out)
    log_mel_patches(np.zeros(SAMPLE_RATE, np.float32))  # first-call costs are not per-video
    with torch.inference_mode():
        for name, backbone in extractor.backbones.items():
            if name != "audio":
                side = int(modalities[name].get("crop") or 224)
                backbone(np.zeros((1, side, side, backbone.in_channels), np.uint8))


def _ready(_: int) -> int:
    """A task that shows this pool process has finished its initializer."""
    time.sleep(0.2)
    return os.getpid()


def peer_video(path: str) -> dict[str, Any]:
    """Runs in a pool process: one video's features and the seconds of each stage."""
    extractor: VideoFeatureExtractor = _worker["extractor"]
    s = extractor.settings
    seconds = dict.fromkeys(STAGES, 0.0)
    t0 = time.perf_counter()
    frames, stacks, indices = read_frames(Path(path), s["rgb"], s["flow"])
    t1 = time.perf_counter()
    quantised = peer_flow(stacks, extractor, float(s["flow"]["bound"]))
    t2 = time.perf_counter()
    waveform = read_audio(path, SAMPLE_RATE)
    patches = None
    if waveform is not None:
        mel = log_mel_patches(waveform).patches
        patches = mel[pick_evenly(len(mel), int(s["audio"]["positions"]))]
    t3 = time.perf_counter()
    with torch.inference_mode():
        features = {"rgb": one_at_a_time(extractor.backbones["rgb"], frames),
                    "flow": one_at_a_time(extractor.backbones["flow"], quantised)}
        if patches is not None:
            features["audio"] = one_at_a_time(extractor.backbones["audio"], patches)
    t4 = time.perf_counter()
    for name, values in features.items():
        np.save(_worker["out"] / f"{Path(path).stem}_{name}.npy", values)
    t5 = time.perf_counter()
    seconds.update(decode=t1 - t0, flow=t2 - t1, audio=t3 - t2, cnn=t4 - t3, write=t5 - t4)
    return {"path": path, "seconds": seconds, "rgb_indices": indices, "features": features}


class PeerPool:
    """`workers` spawned processes with the models loaded, reused across timed rounds."""

    def __init__(self, modalities: Mapping[str, Any], limits: Mapping[str, Any], out: Path,
                 workers: int):
        out.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")
        self.workers = workers
        self.pool = context.Pool(workers, initializer=init_worker,
                                 initargs=(dict(modalities), dict(limits), str(out)))
        for _ in range(50):  # every process initialised before any timing
            if len(set(self.pool.map(_ready, range(2 * workers), chunksize=1))) == workers:
                break

    def run(self, paths: list[Path]) -> tuple[float, list[dict[str, Any]]]:
        """(wall seconds, per-video results) for all `paths`, one video per task."""
        started = time.perf_counter()
        results = self.pool.map(peer_video, [str(p) for p in paths], chunksize=1)
        return time.perf_counter() - started, results

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

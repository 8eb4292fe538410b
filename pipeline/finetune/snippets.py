"""The snippets fine-tuning reads: per video, P candidate RGB frames or flow stacks, cached.

Why a cache: TSN draws one snippet per segment every epoch, and a flow snippet costs a TV-L1
run (seconds per video on a CPU, against milliseconds to read it back: the measured costs are
in docs/backbones.md), so computing flow on the fly would repeat the most expensive step of
the project every epoch. The cache is a Zarr array of uint8 snippets, quantised exactly as
`features` quantises flow, one chunk per video, and a `done` flag per video written after its
chunk: a killed build resumes at the first video not done. Snippets sit at the same positions
`features` samples (the profile's `positions` segment centres), so a fine-tuned network
trains on the very inputs its features will be computed from.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm import tqdm

from extract.errors import UserError
from extract.flow.stacks import FlowParams, flow_stacks
from extract.video.frames import DecodeLimits, read_gray_stacks, read_rgb

FORMAT = "ac-finetune-snippets/1"


@dataclass
class Snippets:
    """The cache opened for training: uint8 (N, P, C, H, W), which rows are usable, timing."""

    data: zarr.Array
    usable: np.ndarray  # (N,) bool: decoded, not failed
    errors: list[str]
    seconds_per_video: float  # measured while building (decode + flow): the on-the-fly cost


def snippet_shape(modality: str, settings: dict[str, Any]) -> tuple[int, int, int, int]:
    """(P, C, H, W) of one video's snippets: RGB is the resized frame's centre square (room for
    the scale-jitter crops around the profile's crop), flow the profile's whole flow field."""
    if modality == "rgb":
        side = int(settings["resize_short"])
        return int(settings["positions"]), 3, side, side
    width, height = (int(v) for v in settings["size"])
    return int(settings["positions"]), 2 * (int(settings["frames_per_stack"]) - 1), height, width


def video_snippets(path: Path, modality: str, settings: dict[str, Any], limits: DecodeLimits,
                   device: torch.device) -> np.ndarray:
    """uint8 (P, C, H, W) snippets of one video, decoded and computed as `features` does."""
    if modality == "rgb":
        side = int(settings["resize_short"])
        frames = read_rgb(path, int(settings["positions"]), side, side, limits).frames
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    stacks = read_gray_stacks(path, int(settings["positions"]), int(settings["frames_per_stack"]),
                              tuple(settings["size"]), limits).stacks
    return flow_stacks(stacks, settings["backend"], FlowParams(**settings["params"]), device,
                       bound=float(settings["bound"]))


def _open_or_create(path: Path, ids: Sequence[str], shape: tuple[int, ...],
                    identity: dict[str, Any]) -> zarr.Group:
    """The cache for exactly these videos and settings; another one at `path` is an error."""
    if path.exists():
        group = zarr.open_group(path, mode="r+")
        if dict(group.attrs).get("identity") != identity or list(group.attrs["ids"]) != list(ids):
            raise UserError(f"{path} caches snippets of other videos or settings; delete it "
                            "(or give another --out) to rebuild it")
        return group
    group = zarr.open_group(path, mode="w-")
    group.create_array("data", shape=(len(ids), *shape), dtype=np.uint8,
                       chunks=(1, *shape), fill_value=0)
    group.create_array("done", shape=(len(ids),), dtype=np.int8, chunks=(len(ids),),
                       fill_value=0)  # 0 to do, 1 done, -1 failed
    group.attrs.update(format=FORMAT, identity=identity, ids=list(ids), errors={},
                       seconds=0.0, built=0)
    return group


def build_snippets(path: Path, videos: Sequence[tuple[str, Path]], modality: str,
                   settings: dict[str, Any], limits: DecodeLimits, device: torch.device,
                   progress: bool = True) -> Snippets:
    """Fill the cache at `path` for `videos` (id, file), continuing a killed build."""
    shape = snippet_shape(modality, settings)
    identity = {"modality": modality, "shape": list(shape),
                "settings": {k: v for k, v in settings.items() if k != "batch_size"}}
    group = _open_or_create(path, [vid for vid, _ in videos], shape, identity)
    done = group["done"][:]
    errors = dict(group.attrs["errors"])
    seconds, built = float(group.attrs["seconds"]), int(group.attrs["built"])
    todo = np.flatnonzero(done == 0)
    bar = tqdm(todo, desc=f"{modality} snippets", unit="video", disable=not progress,
               initial=len(videos) - len(todo), total=len(videos))
    for row in bar:
        started = time.perf_counter()
        try:
            group["data"][row] = video_snippets(videos[row][1], modality, settings, limits,
                                                device)
            done[row] = 1
        except UserError as exc:  # one broken video costs itself, as in `features`
            done[row], errors[videos[row][0]] = -1, str(exc)
        seconds, built = seconds + time.perf_counter() - started, built + 1
        group.attrs.update(errors=errors, seconds=seconds, built=built)
        group["done"][:] = done  # after the chunk: a killed build redoes this video only
    return Snippets(group["data"], done == 1, [f"{k}: {v}" for k, v in errors.items()],
                    seconds / built if built else float("nan"))

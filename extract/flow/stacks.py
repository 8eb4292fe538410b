"""Optical flow for two-stream features: one batched interface, three backends, TSN output.

Backends (``FLOW_BACKENDS``): "torch" (our batched TV-L1, CPU or CUDA, the default), "opencv"
(cv2.optflow DualTVL1, the reference) and "dis" (OpenCV's DIS: much faster, a different and
usually less exact method). All take grayscale frames and return float32 (B, 2, H, W) flow
from ``prev`` to ``nxt`` in pixels, channel 0 = x (right), channel 1 = y (down), such that
``prev(x) ~ nxt(x + flow(x))``.

Frame values: uint8 in 0..255, or float in [0, 1] (scaled by 255, as OpenCV does), so every
backend sees the same intensities and lambda means the same thing.

TSN output (``flow_stacks``): values clipped to +-bound (20) and quantised to uint8 as
round(255 * (v + bound) / (2 * bound)); a stack of M frames gives M-1 pairs stored as 2*(M-1)
channels interleaved per pair: x1, y1, x2, y2, ... (the order of TSN's and mmaction's flow
stacks, where the x and y images of pair i are channels 2i and 2i+1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from extract.device import resolve_device
from extract.errors import UserError
from extract.flow.opencv import opencv_dis, opencv_tvl1
from extract.flow.tvl1_torch import tvl1

FLOW_BOUND = 20.0


class FlowInputError(UserError):
    """Frames or options that the flow backends cannot work with."""


@dataclass(frozen=True)
class FlowParams:
    """TV-L1 parameters; the defaults are OpenCV DualTVL1's (see docs/flow.md for meanings)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    scale_step: float = 0.8
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    median_filtering: int = 5
    gamma: float = 0.0
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise FlowInputError(
                f"flow interpolation {self.interpolation!r}: choose 'bicubic' or 'bilinear'"
            )
        if self.median_filtering > 1 and self.median_filtering % 2 == 0:
            raise FlowInputError(f"flow median_filtering={self.median_filtering}: must be odd")
        if min(self.nscales, self.warps, self.inner_iterations, self.outer_iterations) < 1:
            raise FlowInputError("flow nscales, warps and iteration counts must be >= 1")
        if not 0.0 < self.scale_step < 1.0:
            raise FlowInputError(f"flow scale_step={self.scale_step}: must be in (0, 1)")

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain values for recording in stores and checkpoints."""
        return asdict(self)


def backend_limitation(backend: str, params: FlowParams) -> tuple[str, str] | None:
    """(parameter, why) that `backend` cannot do with `params`, or None: one rule for the
    profile check and for the backend itself. DIS ignores the TV-L1 parameters altogether."""
    if backend == "torch" and params.gamma != 0.0:
        return "gamma", "only the opencv backend has the illumination term"
    if backend == "opencv" and params.interpolation != "bicubic":
        return "interpolation", "the opencv backend is bicubic only"
    return None


def _torch_backend(
    prev: np.ndarray, nxt: np.ndarray, params: FlowParams, device: str | torch.device
) -> np.ndarray:
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    i0 = torch.from_numpy(prev).to(dev, torch.float32).unsqueeze(1)
    i1 = torch.from_numpy(nxt).to(dev, torch.float32).unsqueeze(1)
    with torch.inference_mode():
        return tvl1(i0, i1, params).cpu().numpy()


def _cpu_backend(fn: Callable[[np.ndarray, np.ndarray, FlowParams], np.ndarray]) -> Callable:
    def run(prev: np.ndarray, nxt: np.ndarray, params: FlowParams, device: object) -> np.ndarray:
        return fn(np.rint(prev).astype(np.uint8), np.rint(nxt).astype(np.uint8), params)

    return run


FLOW_BACKENDS: dict[str, Callable[..., np.ndarray]] = {
    "torch": _torch_backend,
    "opencv": _cpu_backend(opencv_tvl1),
    "dis": _cpu_backend(opencv_dis),
}


def _as_frames(name: str, frames: np.ndarray) -> np.ndarray:
    """Validate one side of the input; return (B, H, W) float32 in 0..255."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        values = frames.astype(np.float32)
    elif np.issubdtype(frames.dtype, np.floating):
        if not np.isfinite(frames).all():
            raise FlowInputError(f"flow input {name!r} contains NaN or infinite values")
        if frames.size and (frames.min() < 0.0 or frames.max() > 1.0):
            raise FlowInputError(
                f"flow input {name!r}: float frames must lie in [0, 1] (pass uint8 for 0..255)"
            )
        values = frames.astype(np.float32) * 255.0
    else:
        raise FlowInputError(
            f"flow input {name!r} has dtype {frames.dtype}: expected uint8 or float grayscale"
        )
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise FlowInputError(
            f"flow input {name!r} has shape {frames.shape}: expected (B, H, W) or (H, W) grayscale"
        )
    if values.size == 0:
        raise FlowInputError(f"flow input {name!r} is empty (shape {frames.shape})")
    if min(values.shape[1:]) < 16:
        raise FlowInputError(f"flow input {name!r}: frames of {frames.shape} are below 16x16")
    return values


def compute_flow(
    prev: np.ndarray,
    nxt: np.ndarray,
    backend: str = "torch",
    params: FlowParams | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Flow from each ``prev`` frame to the matching ``nxt`` frame: float32 (B, 2, H, W).

    prev, nxt: (B, H, W) or a single (H, W) pair (-> B = 1), uint8 or float in [0, 1].
    ``device`` only matters to the torch backend ("auto", "cpu", "cuda").
    """
    if backend not in FLOW_BACKENDS:
        raise FlowInputError(
            f"unknown flow backend {backend!r}: choose one of {', '.join(FLOW_BACKENDS)}"
        )
    a, b = _as_frames("prev", prev), _as_frames("nxt", nxt)
    if a.shape != b.shape:
        raise FlowInputError(f"flow inputs differ in shape: prev {a.shape} vs nxt {b.shape}")
    params = params or FlowParams()
    if limitation := backend_limitation(backend, params):
        key, why = limitation
        raise FlowInputError(f"flow {key}={getattr(params, key)!r}: {why}")
    flow = FLOW_BACKENDS[backend](a, b, params, device)
    return np.ascontiguousarray(flow, dtype=np.float32)


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """TSN/denseflow quantisation: round(255 * (clip(v, -bound, bound) + bound) / (2 * bound))."""
    clipped = np.clip(np.asarray(flow, dtype=np.float32), -bound, bound)
    return np.rint(255.0 * (clipped + bound) / (2.0 * bound)).astype(np.uint8)


def dequantize_flow(q: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Inverse of quantize_flow (exact up to half a level, 2*bound/255/2 pixels)."""
    return (np.asarray(q, dtype=np.float32) * (2.0 * bound / 255.0) - bound).astype(np.float32)


def flow_stacks(
    stacks: np.ndarray,
    backend: str = "torch",
    params: FlowParams | None = None,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    bound: float = FLOW_BOUND,
) -> np.ndarray:
    """(K, M, H, W) frame stacks -> uint8 (K, 2*(M-1), H, W): x1, y1, x2, y2, ... per stack.

    All K*(M-1) consecutive pairs go through the backend together, in chunks of ``batch_size``
    pairs (None = all at once) to bound memory.
    """
    stacks = np.asarray(stacks)
    if stacks.ndim != 4 or stacks.shape[1] < 2:
        raise FlowInputError(
            f"flow stacks have shape {stacks.shape}: expected (K, M, H, W) with M >= 2 frames"
        )
    if batch_size is not None and batch_size < 1:
        raise FlowInputError(f"flow batch_size={batch_size}: must be >= 1")
    k, m, h, w = stacks.shape
    prev = stacks[:, :-1].reshape(k * (m - 1), h, w)
    nxt = stacks[:, 1:].reshape(k * (m - 1), h, w)
    step = batch_size or len(prev)
    chunks = [
        compute_flow(prev[i : i + step], nxt[i : i + step], backend, params, device)
        for i in range(0, len(prev), step)
    ]
    flow = np.concatenate(chunks)  # (K*(M-1), 2, H, W): pair-major, then x, y
    return quantize_flow(flow, bound).reshape(k, 2 * (m - 1), h, w)

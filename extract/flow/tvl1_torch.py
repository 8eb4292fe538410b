"""Batched TV-L1 optical flow in PyTorch: the same algorithm as OpenCV's DualTVL1, on CPU or CUDA.

Zach, Pock and Bischof (2007), as described by Sánchez, Meinhardt-Llopis and Facciolo (IPOL 2013)
and implemented in OpenCV: a pyramid of bilinear downscalings (step ``scale_step``, no extra
smoothing, as OpenCV), coarse to fine; at each scale ``warps`` warpings of I1 and its centred
gradient around the current flow; after each warping, outer iterations that start with a 5x5
median filter of the flow and run inner iterations of (thresholding step, primal update with the
divergence of the dual variable, dual update with the forward gradient) until the mean squared
change of the flow falls below ``epsilon**2``.

Batching: every tensor is (B, C, H, W), all pairs advance together. The stopping rule is kept per
pair by a device-side ``active`` mask: a converged pair is frozen (its flow and dual variable stop
changing) exactly where OpenCV would have left the loop, so a pair's result does not depend on
its batch mates. The host looks at the mask only every ``check_every`` inner iterations (one
sync), to leave the loop once every pair has converged.

Speed: the inner iterations (extract/flow/tvl1_inner.py) are pure elementwise arithmetic plus
shifted reads. On CPU they run as one fused C pass per iteration (extract/flow/tvl1_inner.c,
built once per machine: extract/flow/native.py), else as an ahead-of-time inductor artefact
(extract/flow/aot.py); on CUDA inductor fuses them by torch.compile (Triton, cached on disk by
PyTorch). If compilation fails we warn and fall back to eager, which computes the same thing.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from extract.flow.aot import inner_kernel
from extract.flow.native import NativeInner, native_inner
from extract.flow.tvl1_inner import inner_iterations

if TYPE_CHECKING:
    from extract.flow.stacks import FlowParams

# "0" forces eager mode; "1" or unset: compiled (CPU: the C loop of extract/flow/native.py,
# else ahead of time by inductor, extract/flow/aot.py)
COMPILE_ENV = "AC_FLOW_COMPILE"
NATIVE_ENV = "AC_FLOW_NATIVE"  # "0": on CPU the inductor artefact instead of the C loop


def _centred_gradient(img: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) -> (B,2,H,W) central differences with replicated borders, as OpenCV's."""
    padded = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
    gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
    return torch.cat([gx, gy], dim=1)


def _batcher_comparators(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sorting network on n (a power of two) wires, as (low, high)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.cache
def _median_network(count: int) -> tuple[tuple, ...]:
    """A min/max program that selects the median of ``count`` (odd) values.

    Batcher's network on the next power of two, padded with -inf and +inf wires so the median
    sits on one known output wire; comparisons against a padding wire are resolved here, and only
    the operations that the median depends on are kept. Entries: ("in", k) | (op, a, b) where a
    and b index earlier entries and op is "min" or "max"; the last entry is the median.
    """
    size = 1 << (count - 1).bit_length()
    low_pads = (size - count) // 2
    wires: list[object] = ["-inf"] * low_pads + list(range(count))
    wires += ["+inf"] * (size - len(wires))
    program: list[tuple] = [("in", k) for k in range(count)]
    for lo, hi in _batcher_comparators(size):
        a, b = wires[lo], wires[hi]
        if a == "-inf" or b == "+inf":
            continue  # already ordered
        if a == "+inf" or b == "-inf":
            wires[lo], wires[hi] = b, a
            continue
        program += [("min", a, b), ("max", a, b)]
        wires[lo], wires[hi] = len(program) - 2, len(program) - 1
    needed: set[int] = set()
    stack = [wires[low_pads + count // 2]]
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(program[node][1:] if program[node][0] != "in" else ())
    order = sorted(needed)
    index = {old: new for new, old in enumerate(order)}
    return tuple(
        program[old] if program[old][0] == "in"
        else (program[old][0], index[program[old][1]], index[program[old][2]])
        for old in order
    )


@functools.cache
def median_filter(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The size x size median of every channel, replicated borders (OpenCV's medianBlur).

    A selection network of elementwise min/max over the size*size shifted views: one fused loop
    once compiled, and no (size*size)-fold unfolded copy of the flow. Built per size so that the
    window size is a constant for the compiler.
    """
    r = size // 2
    program = tuple(
        ("in", *divmod(op[1], size)) if op[0] == "in" else op
        for op in _median_network(size * size)
    )

    def median(u: torch.Tensor) -> torch.Tensor:
        h, w = u.shape[-2:]
        padded = F.pad(u, (r, r, r, r), mode="replicate")
        values: list[torch.Tensor] = []
        for op in program:
            if op[0] == "in":
                values.append(padded[..., op[1] : op[1] + h, op[2] : op[2] + w])
            elif op[0] == "min":
                values.append(torch.minimum(values[op[1]], values[op[2]]))
            else:
                values.append(torch.maximum(values[op[1]], values[op[2]]))
        return values[-1]

    return median


def opencv_median(u: torch.Tensor, size: int) -> torch.Tensor:
    """The same median on CPU by cv2.medianBlur (float32 supports sizes 3 and 5): the very
    filter OpenCV's DualTVL1 applies, and ~20x faster than torch's sort-based median."""
    planes = u.detach().reshape(-1, *u.shape[-2:]).contiguous().numpy()
    filtered = np.stack([cv2.medianBlur(plane, size) for plane in planes])
    return torch.from_numpy(filtered).reshape(u.shape)


def sorting_median(u: torch.Tensor, size: int) -> torch.Tensor:
    """The same median as ``median_filter(size)`` via unfold + median (fewer ops when eager)."""
    b, c, h, w = u.shape
    r = size // 2
    padded = F.pad(u.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
    return F.unfold(padded, kernel_size=size).median(dim=1).values.reshape(b, c, h, w)


def warp(images: torch.Tensor, u: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Sample images (B,C,H,W) at x + u(x); borders replicated, coordinates exact (no 1/32 grid)."""
    _, _, h, w = images.shape
    ys = torch.arange(h, device=u.device, dtype=u.dtype).view(1, h, 1)
    xs = torch.arange(w, device=u.device, dtype=u.dtype).view(1, 1, w)
    gx = (xs + u[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + u[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(images, grid, mode=interpolation, padding_mode="border",
                         align_corners=True)


def compile_wanted(compile: bool | None, device: torch.device) -> bool:
    """Explicit choice, else AC_FLOW_COMPILE=0/1, else compiled on every device.

    Compiled means, on CPU, the ahead-of-time artefact of extract/flow/aot.py (built once per
    machine, then a few milliseconds per worker) and, on CUDA, torch.compile.
    """
    if compile is not None:
        return compile
    return os.environ.get(COMPILE_ENV, "") != "0"


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """One compiled wrapper per function, shape-generic so every pyramid level and batch size
    reuses one compilation (cached on disk by PyTorch across processes)."""
    return torch.compile(fn, fullgraph=True, dynamic=True)


class _Kernels:
    """The hot functions, compiled when asked, falling back to eager (same maths) on failure.

    On CPU only the inner loop is compiled: in C (extract/flow/native.py), else ahead of time
    by inductor; the median runs in OpenCV, and nothing calls torch.compile, whose tracing
    costs every fresh process many seconds.
    """

    def __init__(self, compile: bool, device: torch.device) -> None:
        self.compile = compile
        self.cpu = device.type == "cpu"
        self._inner: Callable | None = None  # looked up once per call of tvl1
        self.native = self._native() if compile and self.cpu else None

    @staticmethod
    def _native() -> NativeInner | None:
        if os.environ.get(NATIVE_ENV, "") == "0":
            return None
        try:
            return native_inner()
        except Exception as exc:  # no C compiler here: the inductor artefact computes the same
            warnings.warn(f"native TV-L1 loop unavailable ({type(exc).__name__}: {exc}); "
                          f"using the compiled torch loop", RuntimeWarning, stacklevel=3)
            return None

    def period(self, inner: int, device: torch.device) -> int:
        """Inner iterations per call: the C loop stops each pair itself, so it runs them all."""
        return inner if self.native is not None else check_period(inner, device)

    def _call(self, compiled: Callable[[], Callable], fn: Callable, *args: object) -> object:
        if self.compile:
            try:
                return compiled()(*args)
            except Exception as exc:  # compilation depends on the toolchain; eager is equivalent
                warnings.warn(f"TV-L1 compilation failed ({type(exc).__name__}: {exc}); "
                              f"TV-L1 falls back to eager mode", RuntimeWarning, stacklevel=3)
                self.compile = False
        return fn(*args)

    def inner(self, *args: object) -> tuple[torch.Tensor, ...]:
        if self.native is not None:
            return self.native(*args)

        def compiled() -> Callable:
            if self._inner is None:  # args[-1]: the block length, fixed within one tvl1 call
                self._inner = inner_kernel(args[-1]) if self.cpu else _compiled(inner_iterations)
            return self._inner

        return self._call(compiled, inner_iterations, *args)

    def median(self, u: torch.Tensor, size: int) -> torch.Tensor:
        if self.cpu and size in (3, 5):  # OpenCV's SIMD median beats both below
            return opencv_median(u, size)
        if self.compile and not self.cpu:
            return self._call(lambda: _compiled(median_filter(size)), median_filter(size), u)
        return sorting_median(u, size)  # one op instead of ~200 in eager mode; same values


def _downscale(img: torch.Tensor, step: float) -> torch.Tensor:
    """OpenCV's ``resize(fx=fy=step, INTER_LINEAR)``: rounded size, but the exact ``step`` in the
    pixel mapping (F.interpolate with an explicit size would use out/in instead)."""
    h, w = img.shape[-2:]
    out_h, out_w = round(h * step), round(w * step)
    ys = ((torch.arange(out_h, device=img.device, dtype=img.dtype) + 0.5) / step) * (2.0 / h) - 1
    xs = ((torch.arange(out_w, device=img.device, dtype=img.dtype) + 0.5) / step) * (2.0 / w) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    grid = grid.unsqueeze(0).expand(img.shape[0], -1, -1, -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _pyramid(img: torch.Tensor, nscales: int, scale_step: float) -> list[torch.Tensor]:
    """Bilinear downscalings by scale_step, as OpenCV's, stopping before a side drops under 16."""
    levels = [img]
    for _ in range(1, nscales):
        h, w = levels[-1].shape[-2:]
        if min(round(h * scale_step), round(w * scale_step)) < 16:
            break
        levels.append(_downscale(levels[-1], scale_step))
    return levels


def check_period(inner: int, device: torch.device) -> int:
    """Inner iterations between host checks of the stopping rule: a divisor of ``inner``.

    On CPU a check costs nothing, so we check often (fewer wasted masked iterations); on CUDA
    each check is a device sync, so we check about every 10 iterations.
    """
    wanted = 10 if device.type == "cuda" else 2
    return max(d for d in range(1, wanted + 1) if inner % d == 0)


def _solve_warping(
    kernels: _Kernels,
    u: torch.Tensor,
    px: torch.Tensor,
    py: torch.Tensor,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    params: FlowParams,
    period: int,
) -> None:
    """The outer and inner iterations of one warping, updating u, px, py in place.

    Pairs that meet the stopping rule are frozen inside a block of ``period`` iterations (the
    mask) and dropped from the working set at the next host check (compaction), so the batch
    costs the sum, not ``B`` times the maximum, of the pairs' iteration counts.
    """
    l_t = params.lambda_ * params.theta
    taut = params.tau / params.theta
    threshold = params.epsilon**2
    ids = torch.arange(u.shape[0], device=u.device)
    active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
    work = (u, px, py)
    for _ in range(params.outer_iterations):
        if params.median_filtering > 1:
            work = (kernels.median(work[0], params.median_filtering), *work[1:])
        for _ in range(params.inner_iterations // period):
            *work, active = kernels.inner(
                *work, active, *data, l_t, params.theta, taut, threshold, period
            )
            remaining = int(active.sum())
            if remaining < len(active):
                for full, part in zip((u, px, py), work, strict=True):
                    full.index_copy_(0, ids, part)
                if remaining == 0:
                    return
                keep = active.nonzero().view(-1)
                ids, active = ids[keep], active[keep]
                work = tuple(t.index_select(0, keep) for t in work)
                data = tuple(t.index_select(0, keep) for t in data)
    for full, part in zip((u, px, py), work, strict=True):
        full.index_copy_(0, ids, part)


def tvl1(
    i0: torch.Tensor, i1: torch.Tensor, params: FlowParams, compile: bool | None = None
) -> torch.Tensor:
    """Flow (B,2,H,W) from I0 to I1, both (B,1,H,W) float32 in 0..255, on their own device."""
    kernels = _Kernels(compile_wanted(compile, i0.device), i0.device)
    period = kernels.period(params.inner_iterations, i0.device)
    mode = "bicubic" if params.interpolation == "bicubic" else "bilinear"

    pyr0 = _pyramid(i0, params.nscales, params.scale_step)
    pyr1 = _pyramid(i1, len(pyr0), params.scale_step)
    b = i0.shape[0]
    u = torch.zeros((b, 2, *pyr0[-1].shape[-2:]), device=i0.device, dtype=torch.float32)
    for level in range(len(pyr0) - 1, -1, -1):
        im0, im1 = pyr0[level], pyr1[level]
        if u.shape[-2:] != im0.shape[-2:]:
            u = F.interpolate(u, size=im0.shape[-2:], mode="bilinear", align_corners=False)
            u = u / params.scale_step
        source = torch.cat([im1, _centred_gradient(im1)], dim=1)  # I1, I1x, I1y
        px = torch.zeros_like(u)
        py = torch.zeros_like(u)
        for _ in range(params.warps):
            warped = warp(source, u, mode)
            i1w_grad = warped[:, 1:3].contiguous()
            grad_sq = i1w_grad.square().sum(dim=1, keepdim=True)
            rho_c = warped[:, 0:1] - (i1w_grad * u).sum(dim=1, keepdim=True) - im0
            _solve_warping(kernels, u, px, py, (i1w_grad, grad_sq, rho_c), params, period)
    return u

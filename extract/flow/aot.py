"""The CPU TV-L1 inner loop compiled ahead of time: built once per machine, loaded in milliseconds.

Why not torch.compile on CPU: a fresh worker pays 35 s to 5 minutes cold, and still about 15 s
with inductor's on-disk caches warm, because dynamo re-traces the unrolled loop in every process
(docs/benchmarks.md, *Optical flow*). AOTInductor compiles the same loop once into a shared
library (a .pt2 package with dynamic batch, height and width) that a process loads through
torch's C++ loader without importing the compiler: a few milliseconds.

The package lives in one folder per machine (``cache_dir``), under a name made of everything
that makes it valid (``artefact_path``): torch version, CPU architecture and vector ISA, torch
thread count, the loop's block length and a hash of the loop's source. The first process that
needs it builds it under an exclusive flock into a temporary file that is then renamed, so
concurrent workers wait for one build instead of each compiling, and nobody reads half a file.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from extract.flow import tvl1_inner
from extract.flow.tvl1_inner import Scalar, inner_iterations

CACHE_ENV = "AC_FLOW_CACHE"  # the folder of compiled artefacts; default below
_SOURCES = (Path(tvl1_inner.__file__), Path(__file__))  # what the artefact is built from


def cache_dir() -> Path:
    """$AC_FLOW_CACHE, else $XDG_CACHE_HOME/attention-clusters/flow, else ~/.cache/...: one
    folder that every worker of a machine (same user) shares."""
    if chosen := os.environ.get(CACHE_ENV):
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attention-clusters" / "flow"


def artefact_path(count: int, threads: int | None = None) -> Path:
    """The package for blocks of ``count`` iterations at ``threads`` torch threads (default:
    the current count; inductor fixes a kernel's OpenMP thread count when it compiles it)."""
    threads = threads or torch.get_num_threads()
    key = json.dumps([torch.__version__, platform.machine(),
                      torch.backends.cpu.get_cpu_capability(), threads, count, _source_digest()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"tvl1-inner-c{count}-t{threads}-{digest}.pt2"


@functools.cache
def _source_digest() -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES)).hexdigest()


def ensure_artefact(path: Path, build: Callable[[Path], None]) -> bool:
    """Make ``path`` exist, building it with ``build(temporary_path)`` unless another process
    did; True if this call built it. Holders of the lock are serialised, so of several
    processes starting at once one builds and the others wait, then load."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:  # kept: removing it would race
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():  # built while we waited
                return False
            partial = path.with_name(f".{os.getpid()}-{path.name}")  # keeps the .pt2 suffix
            try:
                build(partial)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Inner(torch.nn.Module):
    """inner_iterations with the block length fixed, as torch.export needs a module."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def forward(self, u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, active: torch.Tensor,
                i1w_grad: torch.Tensor, grad_sq: torch.Tensor, rho_c: torch.Tensor,
                l_t: torch.Tensor, theta: torch.Tensor, taut: torch.Tensor,
                threshold: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return inner_iterations(u, px, py, active, i1w_grad, grad_sq, rho_c, l_t, theta, taut,
                                threshold, self.count)


def build_inner(dest: Path, count: int) -> None:
    """Export the loop with symbolic batch, height and width and compile it into ``dest``."""
    from torch._inductor import aoti_compile_and_package  # the compiler: only to build

    b, h, w = 4, 40, 52  # distinct sizes, so that none is mistaken for another or for 1
    u, grad = torch.zeros(b, 2, h, w), torch.ones(b, 2, h, w)
    example = (u, u.clone(), u.clone(), torch.ones(b, dtype=torch.bool), grad,
               torch.ones(b, 1, h, w), torch.zeros(b, 1, h, w), *_scalars(0.045, 0.3, 0.8, 1e-4))
    batch = torch.export.Dim("batch", min=1)
    side = {"min": 16}  # as the pyramid and compute_flow guarantee
    image = {0: batch, 2: torch.export.Dim("height", **side), 3: torch.export.Dim("width", **side)}
    shapes = (image, image, image, {0: batch}, image, image, image, None, None, None, None)
    exported = torch.export.export(_Inner(count), example, dynamic_shapes=shapes)
    aoti_compile_and_package(exported, package_path=str(dest))


@functools.lru_cache(maxsize=16)
def _scalars(*values: float) -> tuple[torch.Tensor, ...]:
    """The loop's float parameters as 0-d tensors (inputs of the artefact), made once."""
    return tuple(torch.tensor(v, dtype=torch.float32) for v in values)


class InnerKernel:
    """The loaded artefact, called like inner_iterations (the block length must match)."""

    def __init__(self, path: Path, count: int, built_here: bool, asked_at: float) -> None:
        start = time.perf_counter()
        self._loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        self.load_s = time.perf_counter() - start
        self.ready_s = time.perf_counter() - asked_at  # building (or waiting for it), loading
        self.path, self.count, self.built_here = path, count, built_here

    def __call__(self, u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, active: torch.Tensor,
                 i1w_grad: torch.Tensor, grad_sq: torch.Tensor, rho_c: torch.Tensor,
                 l_t: Scalar, theta: Scalar, taut: Scalar, threshold: Scalar, count: int
                 ) -> tuple[torch.Tensor, ...]:
        if count != self.count:
            raise ValueError(f"artefact built for blocks of {self.count}, called with {count}")
        tensors = [t.contiguous() for t in (u, px, py, active, i1w_grad, grad_sq, rho_c)]
        scalars = _scalars(*(float(s) for s in (l_t, theta, taut, threshold)))
        return tuple(self._loader.run(tensors + list(scalars)))


@functools.cache
def _kernel_or_error(path: Path, count: int) -> InnerKernel | Exception:
    """Built or loaded once per process; a failure is remembered, not retried per call."""
    asked_at = time.perf_counter()
    try:
        built = ensure_artefact(path, lambda dest: build_inner(dest, count))
        return InnerKernel(path, count, built, asked_at)
    except Exception as exc:  # compiler or loader missing, unwritable folder: eager instead
        return exc


def inner_kernel(count: int) -> InnerKernel:
    """The compiled loop for this machine and thread count; raises what building or loading
    raised (tvl1_torch then warns and runs eager)."""
    got = _kernel_or_error(artefact_path(count), count)
    if isinstance(got, Exception):
        raise got
    return got

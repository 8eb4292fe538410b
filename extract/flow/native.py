"""The CPU TV-L1 inner loop in C (extract/flow/tvl1_inner.c): built once per machine, loaded
with ctypes in microseconds.

Why: the ahead-of-time inductor loop (aot.py) reads the arrays about five times per iteration
and ran at six times the memory-traffic bound; the C loop makes one pass per iteration and
skips converged pairs, so a call can run a whole outer iteration (fewer calls, no masked
work). It needs a C compiler once (`cc`, or $CC); without one, the CPU path falls back to
the inductor artefact, then to eager, which compute the same thing.

The library is cached like the inductor artefact (aot.cache_dir, built under a flock, named by
what makes it valid): the source, the flags and the CPU's instruction-set flags, since it is
compiled for the CPU it is built on (-march=native).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from extract.flow.aot import cache_dir, ensure_artefact

SOURCE = Path(__file__).with_name("tvl1_inner.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-fopenmp-simd",
         "-fPIC", "-shared")
_FLOAT, _INT = ctypes.c_float, ctypes.c_int64
_POINTER = ctypes.c_void_p


def _cpu_flags() -> str:
    """The instruction-set flags of this CPU (what -march=native compiles for)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def library_path() -> Path:
    key = "\n".join([SOURCE.read_text(), " ".join(FLAGS), platform.machine(), _cpu_flags()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"tvl1-inner-native-{digest}.so"


def build_library(dest: Path) -> None:
    """Compile the C loop into ``dest``; a missing or failing compiler raises."""
    compiler = os.environ.get("CC", "cc")
    result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-lm", "-o", str(dest)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{compiler} failed: {message[0]}")


class NativeInner:
    """The loaded library, called like tvl1_inner.inner_iterations (any block length)."""

    def __init__(self, path: Path, built_here: bool, asked_at: float) -> None:
        start = time.perf_counter()
        self._fn = ctypes.CDLL(str(path)).tvl1_inner
        self.load_s = time.perf_counter() - start
        self.ready_s = time.perf_counter() - asked_at  # building (or waiting for it), loading
        self.path, self.built_here = path, built_here
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [_POINTER] * 7 + [_INT] * 3 + [_FLOAT] * 4 + [_INT]

    def __call__(self, u: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                 active: torch.Tensor, i1w_grad: torch.Tensor, grad_sq: torch.Tensor,
                 rho_c: torch.Tensor, l_t: float, theta: float, taut: float, threshold: float,
                 count: int) -> tuple[torch.Tensor, ...]:
        if u.device.type != "cpu":
            raise ValueError("the native TV-L1 loop runs on CPU tensors only")
        # New tensors, as the Python loop returns: the caller may still hold the inputs.
        u, px, py = (t.to(torch.float32, copy=True).contiguous() for t in (u, px, py))
        active = active.to(torch.bool, copy=True).contiguous()
        data = [t.to(torch.float32).contiguous() for t in (i1w_grad, grad_sq, rho_c)]
        batch, _, height, width = u.shape
        status = self._fn(u.data_ptr(), px.data_ptr(), py.data_ptr(), active.data_ptr(),
                          *(t.data_ptr() for t in data), batch, height, width,
                          float(l_t), float(theta), float(taut), float(threshold), count)
        if status != 0:
            raise MemoryError("the native TV-L1 loop could not allocate its row buffer")
        return u, px, py, active


@functools.cache
def _loaded_or_error() -> NativeInner | Exception:
    """Built or loaded once per process; a failure is remembered, not retried per call."""
    asked_at = time.perf_counter()
    try:
        path = library_path()
        built = ensure_artefact(path, build_library)
        return NativeInner(path, built, asked_at)
    except Exception as exc:  # no compiler, unwritable cache: the caller falls back
        return exc


def native_inner() -> NativeInner:
    """The C loop for this machine; raises what building or loading raised."""
    got = _loaded_or_error()
    if isinstance(got, Exception):
        raise got
    return got

"""Optical-flow benchmark: speed and accuracy of every backend on the same ground-truth pairs.

Prints one JSON object (``--json``) with pairs/s and mean end-point error per backend, measured
in one process with the backends alternating round by round (the machine is shared: alternation
makes the ratios fair), medians over rounds. Ground truth: extract/flow/truth.py (16 pairs, real
photographs moved by translations, rotations, zooms and smooth random fields).

Threads: torch and OpenCV both get ``--threads`` (default 1: what a `features` worker gives
torch, one worker per core), so the ratios compare one core with one core. ``torch_cpu`` is
exactly what `features` runs by default on CPU (the C inner loop of extract/flow/native.py),
``torch_cpu_inductor`` the ahead-of-time inductor loop it falls back to (extract/flow/aot.py,
``AC_FLOW_NATIVE=0``); the default's warm-up is measured apart, in fresh subprocesses: with
empty caches (``default_warmup_first_run_s``, the first run on a machine, which builds the
library) and then with it built (``default_warmup_later_runs_s``, every later worker and run).
Warm-up = the seconds the first flow call spends getting the compiled loop (building or
waiting for the build, then loading), timed inside the process; ``default_warmup_runs`` adds
each process's first and second call times (their difference, ``first_call_extra_s``, is the
same cost plus first-call noise, seconds on a busy machine).

    .venv/bin/python bench/flow.py --json [--rounds 3] [--threads 1] [--size 340 256]
        [--params '{"nscales": 3}'] [--cuda-batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract.flow.aot import CACHE_ENV  # noqa: E402
from extract.flow.stacks import FlowParams, compute_flow  # noqa: E402
from extract.flow.truth import TruthPair, endpoint_error, make_pairs  # noqa: E402
from extract.flow.tvl1_torch import COMPILE_ENV, NATIVE_ENV  # noqa: E402

RESOLUTION = (340, 256)
# A fresh process: the first and second default-path calls on the pairs, and how the artefact
# was obtained. Run with the caches it should see in the environment.
_WARMUP_SCRIPT = """
import json, sys, time
import numpy as np, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads({threads})
from extract.flow.native import native_inner
from extract.flow.stacks import FlowParams, compute_flow
from extract.flow.truth import make_pairs
pairs = make_pairs({size!r})
prev, nxt = np.stack([p.i0 for p in pairs]), np.stack([p.i1 for p in pairs])
params = FlowParams(**{params!r})
seconds = []
for _ in range(2):
    start = time.perf_counter()
    compute_flow(prev, nxt, "torch", params)
    seconds.append(time.perf_counter() - start)
kernel = native_inner()
print(json.dumps({{"first_call_s": seconds[0], "second_call_s": seconds[1],
                  "built_here": kernel.built_here, "kernel_ready_s": kernel.ready_s,
                  "load_s": kernel.load_s, "artefact_bytes": kernel.path.stat().st_size}}))
"""


def _epe(flow: np.ndarray, pairs: list[TruthPair]) -> dict[str, float]:
    """Mean EPE overall and per family."""
    errors = [endpoint_error(f, p) for f, p in zip(flow, pairs, strict=True)]
    out = {"all": float(np.mean(errors))}
    for family in dict.fromkeys(p.family for p in pairs):
        out[family] = float(np.mean([e for e, p in zip(errors, pairs, strict=True)
                                     if p.family == family]))
    return out


def _timed(backend: str, prev: np.ndarray, nxt: np.ndarray, device: str, params: FlowParams,
           compiled: bool | None = None, native: bool | None = None) -> tuple[float, object]:
    """Seconds and flow of one call; `compiled` sets AC_FLOW_COMPILE and `native`
    AC_FLOW_NATIVE for torch (None: unset, the default)."""
    for name, value in ((COMPILE_ENV, compiled), (NATIVE_ENV, native)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = "1" if value else "0"
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    flow = compute_flow(prev, nxt, backend, params, device)
    return time.perf_counter() - start, flow


def _warmups(size: tuple[int, int], params: FlowParams, threads: int, cache: Path) -> dict:
    """Fresh processes on the default path: one with empty caches (ours and inductor's: a
    machine that never ran it), then one that finds the artefact the first one built."""
    script = _WARMUP_SCRIPT.format(repo=str(Path(__file__).resolve().parents[1]),
                                   threads=threads, size=size, params=params.to_dict())
    env = {k: v for k, v in os.environ.items() if k not in (COMPILE_ENV, NATIVE_ENV)}
    env |= {CACHE_ENV: str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    runs = {}
    for name in ("first_run", "later_runs"):
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, check=True)
        runs[name] = report = json.loads(done.stdout.splitlines()[-1])
        report["first_call_extra_s"] = report["first_call_s"] - report["second_call_s"]
    return runs


def _cuda(prev: np.ndarray, nxt: np.ndarray, pairs: list[TruthPair], batch: int,
          params: FlowParams) -> dict | None:
    """Pairs/s on the GPU with the pairs tiled up to ``batch``; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    reps = -(-batch // len(prev))
    big_prev, big_nxt = np.tile(prev, (reps, 1, 1))[:batch], np.tile(nxt, (reps, 1, 1))[:batch]
    _timed("torch", big_prev, big_nxt, "cuda", params)  # compile / warm up
    seconds = [_timed("torch", big_prev, big_nxt, "cuda", params)[0] for _ in range(3)]
    _, flow = _timed("torch", prev, nxt, "cuda", params)
    return {"pairs_per_s": batch / statistics.median(seconds), "epe": _epe(flow, pairs)["all"],
            "epe_by_family": _epe(flow, pairs), "batch": batch,
            "device_name": torch.cuda.get_device_name()}


def run(rounds: int, cuda_batch: int, threads: int, size: tuple[int, int],
        params: FlowParams) -> dict:
    pairs = make_pairs(size)
    prev = np.stack([p.i0 for p in pairs])
    nxt = np.stack([p.i1 for p in pairs])
    with tempfile.TemporaryDirectory(prefix="flow-bench-") as temp:
        warmups = _warmups(size, params, threads, Path(temp))
        os.environ[CACHE_ENV] = temp  # the artefact just built: the timed rounds only load it
        result = _rounds(rounds, prev, nxt, pairs, params)
        result["torch_cuda"] = _cuda(prev, nxt, pairs, cuda_batch, params)
    result.update(resolution=list(size), pairs=len(pairs), rounds=rounds,
                  params=params.to_dict())
    result["default_warmup_first_run_s"] = warmups["first_run"]["kernel_ready_s"]
    result["default_warmup_later_runs_s"] = warmups["later_runs"]["kernel_ready_s"]
    result["default_warmup_runs"] = warmups
    return result


def _rounds(rounds: int, prev: np.ndarray, nxt: np.ndarray, pairs: list[TruthPair],
            params: FlowParams) -> dict:
    """The backends alternating round by round in this process; ratios per round."""
    _timed("torch", prev[:1], nxt[:1], "cpu", params)  # loads the C loop
    _timed("torch", prev[:1], nxt[:1], "cpu", params, native=False)  # builds the artefact
    load_before = os.getloadavg()
    # torch_cpu: the default, as `features` runs it (on CPU the C inner loop);
    # torch_cpu_inductor: AC_FLOW_NATIVE=0 (the ahead-of-time inductor loop, the fallback);
    # torch_cpu_eager: AC_FLOW_COMPILE=0.
    how = {"opencv": ("opencv", None, None), "torch_cpu": ("torch", None, None),
           "torch_cpu_inductor": ("torch", None, False),
           "torch_cpu_eager": ("torch", False, None), "dis": ("dis", None, None)}
    seconds: dict[str, list[float]] = {name: [] for name in how}
    flows: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, (backend, compiled, native) in how.items():
            dt, flows[name] = _timed(backend, prev, nxt, "cpu", params, compiled, native)
            seconds[name].append(dt)
    for name in (COMPILE_ENV, NATIVE_ENV):
        os.environ.pop(name, None)

    result: dict = {}
    for name in seconds:
        epe = _epe(flows[name], pairs)
        result[name] = {"pairs_per_s": len(pairs) / statistics.median(seconds[name]),
                        "epe": epe["all"], "epe_by_family": epe,
                        "seconds_per_round": seconds[name]}
    for key, other in (("speedup_default_cpu_vs_opencv", "opencv"),
                       ("speedup_default_cpu_vs_inductor", "torch_cpu_inductor"),
                       ("speedup_default_cpu_vs_eager", "torch_cpu_eager")):
        result[key] = statistics.median(
            o / t for o, t in zip(seconds[other], seconds["torch_cpu"], strict=True))
    result["epe_ratio_torch_vs_opencv"] = result["torch_cpu"]["epe"] / result["opencv"]["epe"]
    result["epe_ratio_by_family"] = {
        fam: result["torch_cpu"]["epe_by_family"][fam] / result["opencv"]["epe_by_family"][fam]
        for fam in result["opencv"]["epe_by_family"]
    }
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "torch": torch.__version__, "opencv": cv2.__version__,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and OpenCV CPU threads (default 1, as a features worker)")
    parser.add_argument("--size", type=int, nargs=2, default=RESOLUTION, metavar=("W", "H"),
                        help="frame width and height (default 340 256)")
    parser.add_argument("--params", type=json.loads, default={},
                        help='TV-L1 parameters as JSON, e.g. the toy profile\'s '
                             '\'{"nscales": 3, "warps": 2, "outer_iterations": 3, '
                             '"inner_iterations": 10}\'')
    parser.add_argument("--cuda-batch", type=int, default=256, help="pairs per call on CUDA")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    result = run(args.rounds, args.cuda_batch, args.threads, tuple(args.size),
                 FlowParams(**args.params))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name in ("opencv", "torch_cpu", "torch_cpu_inductor", "torch_cpu_eager", "dis",
                 "torch_cuda"):
        entry = result[name]
        if entry:
            print(f"{name:16s} {entry['pairs_per_s']:8.2f} pairs/s  EPE {entry['epe']:.4f} px")
    print(f"speedup default (torch_cpu) vs opencv: {result['speedup_default_cpu_vs_opencv']:.2f}x,"
          f" EPE ratio {result['epe_ratio_torch_vs_opencv']:.3f}; warm-up "
          f"{result['default_warmup_first_run_s']:.1f} s on a fresh machine, "
          f"{result['default_warmup_later_runs_s']:.2f} s later")


if __name__ == "__main__":
    main()

"""One-command GPU check (`make gpu-check`): the CUDA tests and the GPU figures, one JSON.

On a machine with CUDA, in order, each step's figures under its own key:
  tests     the CUDA test cases (`-k cuda` in tests/test_flow.py, test_backbones.py,
            test_cuda.py): counts, and the skip reasons if any were skipped
  tvl1      TV-L1 pairs/s at 340x256 for several batch sizes, eager and compiled (the
            compile's warm-up apart), the end-point error against the ground truth, and the
            warnings of each mode (a compile that failed and ran eager says so there)
  features  videos/s of `features` on a generated toy set with --device cuda: the default
            (one GPU worker batching across videos) and, time permitting, the per-video path
  classify  bench/classify.py on its 10 s clip (load, first video, median of 3, stages)
  memory    peak GPU memory: this process's allocator and the device's used memory
            (sampled, every process) while the steps ran
Steps that would pass `--budget-s` (default 420 s, under 8 minutes) are skipped and say so.

Without CUDA it stops at once with one line, "no CUDA device", and exit status 2; so it
does, naming the module, when a package the steps import is missing.
`--dry-run` runs the same steps on the CPU with tiny sizes (eager flow only, a light TV-L1:
a CPU compile takes minutes; features on 3 videos with one CPU worker declaring the GPU
resource; one torch thread), which is what the tests run here.
Usage: python bench/gpu_check.py [--dry-run] [--budget-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from extract.flow.stacks import FlowParams, compute_flow  # noqa: E402
from extract.flow.truth import endpoint_error, make_pairs  # noqa: E402
from extract.flow.tvl1_torch import COMPILE_ENV  # noqa: E402

RESOLUTION = (340, 256)
CUDA_TESTS = ("tests/test_flow.py", "tests/test_backbones.py", "tests/test_cuda.py")
# The dry run's TV-L1: the same code with a fraction of OpenCV's default work.
DRY_RUN_FLOW = FlowParams(nscales=2, warps=1, outer_iterations=2, inner_iterations=10)


class Budget:
    """Seconds left of the whole check; a step that needs more is skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def allows(self, seconds: float) -> bool:
        return time.monotonic() + seconds <= self.end


def run_tests(device: str) -> dict[str, Any]:
    """The CUDA test cases in a child pytest: its counts and skip reasons (CPU: all skip)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda",
                           "-p", "no:cacheprovider", *CUDA_TESTS], cwd=REPO,
                          capture_output=True, text=True)
    out = done.stdout + done.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)",
                                                     out.splitlines()[-1] if out else "")}
    skips = sorted(set(re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.+)", out)))
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"exit_status": done.returncode, "counts": counts, "skip_reasons": skips,
            "failed": failed, "seconds": round(time.perf_counter() - started, 1),
            "device": device}


def _pairs_per_s(prev: np.ndarray, nxt: np.ndarray, device: str, repeats: int,
                 params: FlowParams) -> tuple[float, float]:
    """(pairs/s from the median of `repeats` calls after a first one, seconds of the first)."""
    def call() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        compute_flow(prev, nxt, "torch", params, device)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    first = call()
    seconds = statistics.median(call() for _ in range(repeats))
    return len(prev) / seconds, first


def tvl1(device: str, batches: list[int], modes: list[bool], repeats: int,
         budget: Budget, params: FlowParams) -> dict[str, Any]:
    """TV-L1 at 340x256 on the ground-truth pairs tiled to each batch size."""
    pairs = make_pairs(RESOLUTION)
    prev, nxt = np.stack([p.i0 for p in pairs]), np.stack([p.i1 for p in pairs])
    result: dict[str, Any] = {"resolution": list(RESOLUTION), "device": device,
                              "params": params.to_dict()}
    before = os.environ.get(COMPILE_ENV)  # given back afterwards: later steps run as asked
    for compiled in modes:
        os.environ[COMPILE_ENV] = "1" if compiled else "0"
        name = "compiled" if compiled else "eager"
        with warnings.catch_warnings(record=True) as caught:  # a failed compile runs eager:
            warnings.simplefilter("always")                   # its figures must say so
            result[name] = _one_mode(prev, nxt, pairs, device, batches, repeats, budget, params)
        result[name]["warnings"] = sorted({str(w.message)[:300] for w in caught})
    if before is None:
        os.environ.pop(COMPILE_ENV, None)
    else:
        os.environ[COMPILE_ENV] = before
    return result


def _one_mode(prev: np.ndarray, nxt: np.ndarray, pairs: list, device: str, batches: list[int],
              repeats: int, budget: Budget, params: FlowParams) -> dict[str, Any]:
    """pairs/s per batch size and the end-point error, in the mode AC_FLOW_COMPILE says."""
    entry: dict[str, Any] = {"pairs_per_s": {}}
    for batch in batches:
        if not budget.allows(60):
            entry["pairs_per_s"][str(batch)] = "skipped: over the time budget"
            continue
        reps = -(-batch // len(prev))
        a, b = np.tile(prev, (reps, 1, 1))[:batch], np.tile(nxt, (reps, 1, 1))[:batch]
        rate, first = _pairs_per_s(a, b, device, repeats, params)
        entry["pairs_per_s"][str(batch)] = round(rate, 1)
        entry.setdefault("first_call_s", round(first, 2))  # the compile, when compiled
    few = min(4, batches[0])
    flow = compute_flow(prev[:few], nxt[:few], "torch", params, device)
    entry[f"epe_first_{few}"] = round(float(np.mean(
        [endpoint_error(f, p) for f, p in zip(flow, pairs[:few], strict=True)])), 4)
    return entry


def features(device: str, videos: int, workers: int, per_video_too: bool,
             budget: Budget) -> dict[str, Any]:
    """`features` on a generated toy set: the default path, then (if asked) per video."""
    from pipeline.datasets.generated.toy import generate_toy
    from pipeline.features.run import gpu_worker_count, run_features
    from pipeline.profiles import load_profile

    result: dict[str, Any] = {"videos": videos, "workers": workers, "device": device}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as temp:  # one video per class
        root = generate_toy(Path(temp) / "toy", seed=0, videos=max(12, videos), progress=False)
        gpus = gpu_worker_count(None, None, device) if device == "cuda" else 1
        paths = {"gpu_workers": gpus}
        if per_video_too:
            paths["per_video"] = 0
        for name, count in paths.items():
            if not budget.allows(120):
                result[name] = "skipped: over the time budget"
                continue
            started = time.perf_counter()
            run = run_features(kind="ucf101", root=root, profile=load_profile("toy"),
                               out=Path(temp) / f"{name}.zarr", dataset="toy", device=device,
                               workers=workers, gpu_workers=count, limit=videos,
                               progress=False).run
            result[name] = {"gpu_workers": count, "videos_per_s": round(
                run.completed / max(run.seconds, 1e-9), 3),
                "run_seconds": round(run.seconds, 1),
                "wall_seconds_with_cluster_start": round(time.perf_counter() - started, 1),
                "counts": dict(run.counts)}
    return result


def classify(device: str, repeats: int) -> dict[str, Any]:
    """bench/classify.py's figures for its 10 s clip."""
    import classify as classify_bench  # bench/classify.py

    return classify_bench.run(repeats, device, lambda message: print(message, file=sys.stderr))


@contextmanager
def device_memory_peak(device: str) -> Iterator[dict[str, Any]]:
    """Peak GPU memory while the block runs: this process's allocator and the device's used
    memory sampled every 0.2 s (worker processes included)."""
    peak: dict[str, Any] = {}
    if device != "cuda":
        yield peak
        return
    stop = threading.Event()
    torch.cuda.reset_peak_memory_stats()
    highest = [0]

    def sample() -> None:
        while not stop.wait(0.2):
            free, total = torch.cuda.mem_get_info()
            highest[0] = max(highest[0], total - free)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
        peak["this_process_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        peak["device_used_gib_sampled"] = round(highest[0] / 2**30, 3)


def check(dry_run: bool, budget_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    device = "cpu" if dry_run else "cuda"
    budget = Budget(budget_s)
    result: dict[str, Any] = {"benchmark": "gpu_check", "dry_run": dry_run,
                              "torch": torch.__version__, "cores": os.cpu_count()}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
        result["gpus"] = torch.cuda.device_count()
    started = time.perf_counter()
    with device_memory_peak(device) as peak:
        log("CUDA tests ...")
        result["tests"] = run_tests(device)
        log(f"TV-L1 ... ({time.perf_counter() - started:.0f} s so far)")
        result["tvl1"] = tvl1(device, [2] if dry_run else [16, 64, 256, 512],
                              [False] if dry_run else [False, True], 1 if dry_run else 3,
                              budget, DRY_RUN_FLOW if dry_run else FlowParams())
        log(f"features ... ({time.perf_counter() - started:.0f} s so far)")
        result["features"] = features(device, 3 if dry_run else 24,
                                      1 if dry_run else min(8, os.cpu_count() or 1),
                                      per_video_too=not dry_run, budget=budget)
        log(f"classify ... ({time.perf_counter() - started:.0f} s so far)")
        result["classify"] = (classify(device, 1 if dry_run else 3)
                              if budget.allows(90) else "skipped: over the time budget")
    result["memory"] = peak
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def missing_module() -> str | None:
    """The first module the steps import that this Python lacks, or None. A bare GPU machine
    has only what is carried there (docs/benchmarks.md), so the check stops in seconds with
    its name instead of minutes in, at the step that first needs it."""
    try:
        import classify  # noqa: F401  bench/classify.py: features, training, classify
    except ModuleNotFoundError as error:
        return error.name or str(error)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU, tiny sizes (what the tests run)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip steps that would end later than this [420]")
    parser.add_argument("--json", action="store_true", help="(the output is always JSON)")
    args = parser.parse_args()
    missing = missing_module()
    if missing:
        print(f"gpu-check: Python module '{missing}' is missing; install the project's "
              "requirements (or, on a bare GPU machine, carry its wheels: docs/benchmarks.md, "
              "'GPU check')", file=sys.stderr)
        sys.exit(2)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device (torch {torch.__version__} sees none); "
              "`--dry-run` runs the same steps on the CPU", file=sys.stderr)
        sys.exit(2)
    if args.dry_run:  # one thread holds up on a shared machine (pipeline/train/config.py)
        torch.set_num_threads(1)
    result = check(args.dry_run, args.budget_s,
                   lambda message: print(message, file=sys.stderr, flush=True))
    print(json.dumps(result))
    sys.exit(1 if result["tests"]["exit_status"] not in (0, 5) else 0)


if __name__ == "__main__":
    main()

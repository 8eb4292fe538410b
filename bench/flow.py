"""Optical-flow benchmark: speed and accuracy of every backend on the same ground-truth pairs.

Prints one JSON object (``--json``) with pairs/s and mean end-point error per backend, measured
in one process with the backends alternating round by round (the machine is shared: alternation
makes the ratios fair), medians over rounds. Ground truth: extract/flow/truth.py (16 pairs, real
photographs moved by translations, rotations, zooms and smooth random fields).

    .venv/bin/python bench/flow.py --json [--rounds 3] [--threads N] [--cuda-batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract.flow.stacks import FlowParams, compute_flow  # noqa: E402
from extract.flow.truth import TruthPair, endpoint_error, make_pairs  # noqa: E402
from extract.flow.tvl1_torch import COMPILE_ENV  # noqa: E402

RESOLUTION = (340, 256)


def _epe(flow: np.ndarray, pairs: list[TruthPair]) -> dict[str, float]:
    """Mean EPE overall and per family."""
    errors = [endpoint_error(f, p) for f, p in zip(flow, pairs, strict=True)]
    out = {"all": float(np.mean(errors))}
    for family in dict.fromkeys(p.family for p in pairs):
        out[family] = float(np.mean([e for e, p in zip(errors, pairs, strict=True)
                                     if p.family == family]))
    return out


def _timed(backend: str, prev: np.ndarray, nxt: np.ndarray, device: str,
           compiled: bool | None = None) -> tuple[float, object]:
    """Seconds and flow of one call; `compiled` sets AC_FLOW_COMPILE for torch (None: as is)."""
    if compiled is not None:
        os.environ[COMPILE_ENV] = "1" if compiled else "0"
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    flow = compute_flow(prev, nxt, backend, FlowParams(), device)
    return time.perf_counter() - start, flow


def _cuda(prev: np.ndarray, nxt: np.ndarray, pairs: list[TruthPair], batch: int) -> dict | None:
    """Pairs/s on the GPU with the pairs tiled up to ``batch``; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    reps = -(-batch // len(prev))
    big_prev, big_nxt = np.tile(prev, (reps, 1, 1))[:batch], np.tile(nxt, (reps, 1, 1))[:batch]
    _timed("torch", big_prev, big_nxt, "cuda", compiled=True)  # compile / warm up
    seconds = [_timed("torch", big_prev, big_nxt, "cuda")[0] for _ in range(3)]
    _, flow = _timed("torch", prev, nxt, "cuda")
    return {"pairs_per_s": batch / statistics.median(seconds), "epe": _epe(flow, pairs)["all"],
            "epe_by_family": _epe(flow, pairs), "batch": batch,
            "device_name": torch.cuda.get_device_name()}


def run(rounds: int, cuda_batch: int) -> dict:
    pairs = make_pairs(RESOLUTION)
    prev = np.stack([p.i0 for p in pairs])
    nxt = np.stack([p.i1 for p in pairs])
    warmup_s, _ = _timed("torch", prev, nxt, "cpu", compiled=True)  # compiles (then cached)
    load_before = os.getloadavg()

    # torch_cpu is the compiled path (what long extraction runs should use, AC_FLOW_COMPILE=1);
    # torch_cpu_eager is the CPU default, which starts at once.
    seconds: dict[str, list[float]] = {"opencv": [], "torch_cpu": [], "torch_cpu_eager": [],
                                       "dis": []}
    flows: dict[str, np.ndarray] = {}
    how = {"opencv": ("opencv", None), "torch_cpu": ("torch", True),
           "torch_cpu_eager": ("torch", False), "dis": ("dis", None)}
    for _ in range(rounds):
        for name, (backend, compiled) in how.items():
            dt, flows[name] = _timed(backend, prev, nxt, "cpu", compiled)
            seconds[name].append(dt)

    result: dict = {"resolution": list(RESOLUTION), "pairs": len(pairs), "rounds": rounds}
    for name in seconds:
        epe = _epe(flows[name], pairs)
        result[name] = {"pairs_per_s": len(pairs) / statistics.median(seconds[name]),
                        "epe": epe["all"], "epe_by_family": epe,
                        "seconds_per_round": seconds[name]}
    result["torch_cuda"] = _cuda(prev, nxt, pairs, cuda_batch)
    per_round = [o / t for o, t in zip(seconds["opencv"], seconds["torch_cpu"], strict=True)]
    result["speedup_torch_cpu_vs_opencv"] = statistics.median(per_round)
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
    result["torch_cpu_warmup_s"] = warmup_s
    result["params"] = FlowParams().to_dict()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--cuda-batch", type=int, default=256, help="pairs per call on CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.rounds, args.cuda_batch)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name in ("opencv", "torch_cpu", "torch_cpu_eager", "dis", "torch_cuda"):
        entry = result[name]
        if entry:
            print(f"{name:10s} {entry['pairs_per_s']:8.2f} pairs/s  EPE {entry['epe']:.4f} px")
    print(f"speedup torch_cpu vs opencv: {result['speedup_torch_cpu_vs_opencv']:.2f}x, "
          f"EPE ratio {result['epe_ratio_torch_vs_opencv']:.3f}")


if __name__ == "__main__":
    main()

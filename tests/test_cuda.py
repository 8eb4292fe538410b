"""The CUDA paths end to end, against the CPU results: `features --device cuda` (one GPU
worker per GPU batching flow and the CNNs across videos, decoding on the CPU workers) and
`classify --device cuda`. Flow (tests/test_flow.py) and the backbones
(tests/test_backbones.py) have their own `test_cuda_*` cases. Without CUDA every one is
skipped with its reason; `make gpu-check` (bench/gpu_check.py) runs them on a GPU machine.

CUDA and CPU kernels round differently (cuDNN, TV-L1's stopping decisions, then the uint8
flow quantisation), so features are compared by their direction (cosine), not bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.features.run import gpu_worker_count, run_features
from pipeline.inference.classify import classify_one, load_classifier
from pipeline.profiles import load_profile
from pipeline.store.format import Status
from tests.conftest import TOY_MODALITIES

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine (make gpu-check runs "
                                       "these on one)")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1])
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1)[norms > 0] / norms[norms > 0]


@needs_cuda
def test_features_on_cuda_agree_with_the_cpu_store(toy_dataset: tuple[Path, Path],
                                                   toy_store: Path, tmp_path: Path) -> None:
    root, profile = toy_dataset
    assert gpu_worker_count(None, None, "cuda") == torch.cuda.device_count()  # split path
    out = tmp_path / "cuda.zarr"
    run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                 dataset="toy", workers=2, device="cuda", progress=False)
    cpu, gpu = zarr.open_group(toy_store, mode="r"), zarr.open_group(out, mode="r")
    for name in TOY_MODALITIES:
        status = cpu[f"{name}/status"][:]
        assert (status == Status.DONE).sum() >= 8
        for field in ("status", "mask", "time"):
            np.testing.assert_array_equal(gpu[f"{name}/{field}"][:], cpu[f"{name}/{field}"][:],
                                          err_msg=f"{name}/{field}")
        cosines = _cosines(gpu[f"{name}/features"][:], cpu[f"{name}/features"][:])
        assert cosines.min() > 0.98, (name, cosines.min())


@needs_cuda
def test_classify_on_cuda_agrees_with_the_cpu(toy_checkpoint: Path,
                                              toy_dataset: tuple[Path, Path]) -> None:
    root, _ = toy_dataset
    clip = sorted(root.rglob("*_c01.mp4"))[0]
    on_cpu = classify_one(load_classifier(toy_checkpoint, "cpu"), clip)
    on_gpu = classify_one(load_classifier(toy_checkpoint, "cuda"), clip)
    assert on_gpu["modalities"] == on_cpu["modalities"]
    assert on_gpu["top"][0]["label"] == on_cpu["top"][0]["label"]
    assert abs(on_gpu["top"][0]["prob"] - on_cpu["top"][0]["prob"]) < 0.02

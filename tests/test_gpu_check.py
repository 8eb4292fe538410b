"""`make gpu-check` (bench/gpu_check.py): one clear line without CUDA or without a package it
needs, and its dry run (the same steps on the CPU with tiny sizes) gives one JSON with every
figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_stops_with_one_line() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no CUDA device" in done.stderr


def test_a_missing_package_is_named_in_one_line(tmp_path: Path) -> None:
    """As on the bare GPU machine without platformdirs, which librosa's pooch imports: the
    check stops before any step, naming the module to carry."""
    absent = tmp_path / "platformdirs"
    absent.mkdir()
    (absent / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'platformdirs'\", name='platformdirs')\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "'platformdirs' is missing" in done.stderr


@pytest.mark.slow
def test_the_dry_run_reports_every_step() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--budget-s", "3000"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    tests = result["tests"]
    assert tests["failed"] == [] and sum(tests["counts"].values()) >= 4
    if not torch.cuda.is_available():
        assert tests["counts"] == {"skipped": tests["counts"]["skipped"]}
        assert any("no CUDA device" in reason for reason in tests["skip_reasons"])
    eager = result["tvl1"]["eager"]
    assert eager["pairs_per_s"]["2"] > 0 and 0 < eager["epe_first_2"] < 5
    split = result["features"]["gpu_workers"]
    assert split["gpu_workers"] == 1 and split["counts"] == {"done": 3}
    assert split["videos_per_s"] > 0
    assert result["classify"]["total_seconds"] > 0
    assert set(result["classify"]["stage_seconds"]) == {"decode", "flow", "cnn", "audio",
                                                        "model"}


def test_a_compile_that_fell_back_to_eager_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no toolchain the compiled TV-L1 runs eager (same maths): the compiled figures of
    the check must carry that warning, or an eager rate would read as the compiled one."""
    from extract.flow import tvl1_torch

    def no_toolchain(*args: object) -> None:
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(sys, "path", list(sys.path))  # the bench module prepends bench/
    from bench.gpu_check import DRY_RUN_FLOW, Budget, tvl1

    monkeypatch.setattr(tvl1_torch._Kernels, "_native", staticmethod(lambda: None))
    monkeypatch.setattr(tvl1_torch, "inner_kernel", no_toolchain)
    result = tvl1("cpu", [2], [False, True], 1, Budget(600), DRY_RUN_FLOW)
    assert result["eager"]["warnings"] == []
    assert [w for w in result["compiled"]["warnings"] if "compilation failed" in w]
    assert result["compiled"]["pairs_per_s"]["2"] > 0
    assert result["compiled"]["epe_first_2"] == result["eager"]["epe_first_2"]

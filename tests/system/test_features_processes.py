"""`features` on the session's toy set (tests/conftest.py) where processes are the point: two
worker processes give the store one gives, and a run killed with SIGKILL resumes to it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.format import Status
from tests.processes import ROOT, kill_group_when

FIELDS = ("features", "mask", "time", "status", "error")


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {f"{m}/{f}": group[f"{m}/{f}"][:] for m in ("rgb", "flow", "audio") for f in FIELDS}


@pytest.mark.slow  # make test-all (CI); tests/test_worker_count.py checks 1 vs 2 workers
def test_two_workers_give_the_same_store(toy_dataset: tuple[Path, Path], toy_store: Path,
                                         tmp_path: Path) -> None:
    root, profile = toy_dataset
    out = tmp_path / "two.zarr"
    run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                 dataset="toy", workers=2, device="cpu", progress=False)
    one, two = arrays(toy_store), arrays(out)
    for key in one:
        if key.endswith("/features"):
            # 1 worker x 2 threads vs 2 workers x 1 thread: float sums may differ in the last bit
            np.testing.assert_allclose(one[key].astype(np.float32), two[key].astype(np.float32),
                                       rtol=1e-2, atol=1e-2, err_msg=key)
        else:
            np.testing.assert_array_equal(one[key], two[key], err_msg=key)


@pytest.mark.slow  # make test-all (CI): the kill -9 trials of test_crash_resume.py cover it
def test_killed_run_resumes_to_the_identical_store(toy_dataset: tuple[Path, Path],
                                                  toy_store: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root, profile = toy_dataset
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")  # eager TV-L1, as the shared store was made
    out = tmp_path / "killed.zarr"
    command = [sys.executable, str(ROOT / "cli.py"), "features", "toy", "--root", str(root),
               "--config", str(profile), "--out", str(out), "--workers", "1",
               "--device", "cpu", "--flush-seconds", "0"]
    for _attempt in range(5):  # on a fast machine the last rows can land before the kill
        partial = kill_after_three_rows(command, out)
        if partial < 13:
            break
        shutil.rmtree(out)
    assert 3 <= partial < 13
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    one, two = arrays(toy_store), arrays(out)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def rows_done(out: Path) -> int:
    """Rows with rgb done, read while `features` may be writing the store."""
    try:
        return int((zarr.open_group(out, mode="r")["rgb/status"][:] == Status.DONE).sum())
    except (KeyError, FileNotFoundError, RuntimeError, ValueError):
        return 0  # not created yet, or a shard replaced between two reads


def kill_after_three_rows(command: list[str], out: Path) -> int:
    """Run `command`, SIGKILL its whole process group once 3 rows are done; rows done then."""
    kill_group_when(command, ROOT, lambda: rows_done(out) >= 3, timeout_s=180, poll_s=0.1)
    return int((zarr.open_group(out, mode="r")["rgb/status"][:] == Status.DONE).sum())

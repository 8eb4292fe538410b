"""`features --scheduler` on a real multi-process Dask cluster that loses a worker mid-run.

The test starts the real `dask scheduler` and two `dask worker` processes on 127.0.0.1 (each
in its own process group), runs `cli.py features --scheduler tcp://...`, SIGKILLs one worker
(its nanny and its worker process: a machine lost) once some rows are written, and checks the
run completes with a store equal to a LocalCluster run. Every process is killed at the end,
whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.format import Status
from tests.hostile import clip_dataset
from tests.processes import ROOT
from tests.profiles import CHEAP_PROFILE

DASK = Path(sys.executable).with_name("dask")
MODALITIES = ("rgb", "flow", "audio")
FIELDS = ("features", "mask", "time", "status", "error")
VIDEOS = 24
# The same per-worker thread budget as a 2-worker LocalCluster on 2 cores.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                                stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """(scheduler address, [worker A, worker B]); all processes are killed afterwards."""
    processes: list[subprocess.Popen] = []
    scheduler_file = tmp_path / "scheduler.json"
    try:
        processes.append(start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                               tmp_path / "scheduler.log"))
        wait_for(scheduler_file.exists, 60, "the scheduler file")
        wait_for(lambda: "address" in scheduler_file.read_text(), 10, "the address")
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [start([str(DASK), "worker", address, "--nworkers", "1", "--nthreads", "1",
                          "--host", "127.0.0.1", "--no-dashboard", "--name", name],
                         tmp_path / f"worker-{name}.log") for name in ("a", "b")]
        processes.extend(workers)
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, workers
    finally:
        for process in processes:
            stop(process)


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {f"{m}/{f}": group[f"{m}/{f}"][:] for m in MODALITIES for f in FIELDS}


def rows_written(out: Path) -> int:
    try:
        return int((zarr.open_group(out, mode="r")["rgb/status"][:] != Status.PENDING).sum())
    except (KeyError, ValueError, FileNotFoundError, RuntimeError):
        return 0


@pytest.mark.slow  # make test-all (CI); the runner's retry of a killed worker: test_dask_runner.py
def test_features_on_a_cluster_survive_a_killed_worker(
        cluster: tuple[str, list[subprocess.Popen]], tmp_path: Path) -> None:
    address, (doomed, survivor) = cluster
    root = clip_dataset(tmp_path / "clips", VIDEOS, seconds=2.0)
    profile = tmp_path / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    out = tmp_path / "cluster.zarr"
    command = [sys.executable, str(ROOT / "cli.py"), "features", "clips", "--root", str(root),
               "--config", str(profile), "--out", str(out), "--scheduler", address,
               "--device", "cpu", "--flush-seconds", "0", "--json"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        wait_for(lambda: rows_written(out) >= 2 or run.poll() is not None, 300, "2 rows")
        assert run.poll() is None, "the run ended before a worker could be killed"
        os.killpg(doomed.pid, signal.SIGKILL)  # nanny and worker process: a machine lost
        # rows still to come, so tasks were queued on or running in the killed worker
        assert rows_written(out) <= VIDEOS - 6
        doomed.wait(timeout=30)
        stdout, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr[-3000:]
    assert survivor.poll() is None
    summary = json.loads(stdout)
    for name, info in summary["modalities"].items():
        assert info["counts"]["pending"] == 0 and info["counts"]["failed"] == 0, name

    local = tmp_path / "local.zarr"
    run_features(kind="folder", root=root, profile=load_profile(profile), out=local,
                 dataset="clips", workers=2, device="cpu", progress=False)
    expected, result = arrays(local), arrays(out)
    for key in expected:
        if key.endswith("/features"):
            np.testing.assert_allclose(result[key].astype(np.float32),
                                       expected[key].astype(np.float32),
                                       rtol=1e-2, atol=1e-2, err_msg=key)
        else:
            np.testing.assert_array_equal(result[key], expected[key], err_msg=key)

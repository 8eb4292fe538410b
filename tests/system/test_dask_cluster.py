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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipeline.features import worker_watch
from pipeline.features.run import run_features
from pipeline.features.worker_watch import WorkersLost
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


class Cluster:
    """A real `dask scheduler` on 127.0.0.1 and its `dask worker` processes, each in its own
    process group; `close()` kills them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []
        scheduler_file = tmp_path / "scheduler.json"
        self.processes.append(start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port",
                                     "0", "--no-dashboard", "--scheduler-file",
                                     str(scheduler_file)], tmp_path / "scheduler.log"))
        wait_for(scheduler_file.exists, 60, "the scheduler file")
        wait_for(lambda: "address" in scheduler_file.read_text(), 10, "the address")
        self.address = json.loads(scheduler_file.read_text())["address"]

    def worker(self, name: str, *options: str) -> subprocess.Popen:
        """One more worker (one thread), once the scheduler has it."""
        from distributed import Client

        process = start([str(DASK), "worker", self.address, "--nworkers", "1", "--nthreads",
                         "1", "--host", "127.0.0.1", "--no-dashboard", "--name", name,
                         *options], self.tmp_path / f"worker-{name}.log")
        self.processes.append(process)
        with Client(self.address, timeout=30) as client:
            wait_for(lambda: name in {worker["name"] for worker in client.scheduler_info(
                n_workers=-1)["workers"].values()}, 120, f"worker {name}")
        return process

    def close(self) -> None:
        for process in self.processes:
            stop(process)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """(scheduler address, [worker A, worker B]); all processes are killed afterwards."""
    made = Cluster(tmp_path)
    try:
        yield made.address, [made.worker("a"), made.worker("b")]
    finally:
        made.close()


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


@pytest.mark.slow  # make test-all (CI); the watch itself: test_gpu_pool.py
def test_features_stop_when_the_gpu_workers_are_lost_then_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster with a CPU worker and one worker declaring GPU=1 loses the GPU one (its
    machine: nanny and worker) mid-run. Dask would hold the model tasks for ever; the run
    stops with one clear error instead, keeps every video finished, fails none, and the same
    run resumes to the end once a GPU worker is back."""
    monkeypatch.setattr(worker_watch, "LOST_AFTER_S", 6.0)
    root = clip_dataset(tmp_path / "clips", VIDEOS, seconds=2.0)
    profile = tmp_path / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    out = tmp_path / "gpu.zarr"
    made = Cluster(tmp_path)
    try:
        made.worker("cpu")
        gpu = made.worker("gpu", "--resources", "GPU=1")

        def features() -> Any:
            return run_features(kind="folder", root=root, profile=load_profile(profile),
                                out=out, dataset="clips", scheduler=made.address,
                                device="cpu", flush_seconds=0, gpu_batch=4, progress=False)

        def lose_the_gpu_machine() -> None:
            wait_for(lambda: rows_written(out) >= 4, 300, "a first group")
            os.killpg(gpu.pid, signal.SIGKILL)

        killer = threading.Thread(target=lose_the_gpu_machine)
        killer.start()
        started = time.monotonic()
        with pytest.raises(WorkersLost, match="no worker declaring the GPU resource"):
            features()
        killer.join()
        assert time.monotonic() - started < 240
        status = zarr.open_group(out, mode="r")["rgb/status"][:]
        finished = int((status == Status.DONE).sum())
        assert 4 <= finished < VIDEOS and (status == Status.FAILED).sum() == 0
        made.worker("gpu-2", "--resources", "GPU=1")
        assert features().run.counts == {"done": VIDEOS - finished}  # only the rest
    finally:
        made.close()
    status = zarr.open_group(out, mode="r")["rgb/status"][:]
    assert (status == Status.DONE).sum() == VIDEOS

"""The Dask runner on a real 2-process LocalCluster: results, failures, dead workers, Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from extract.errors import UserError
from pipeline.features import dask_runner, worker_watch
from pipeline.features.dask_runner import (
    config_key,
    dask_client,
    format_run_summary,
    local_cluster_size,
    run_tasks,
    worker_cached,
)
from pipeline.store.create import create_store
from pipeline.store.format import ModalitySpec, Status, StoreError

# One cluster for the module; a task may kill a worker at most twice before it fails.
RETRIES = 1


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2, retries=RETRIES) as shared:
        yield shared


def features_of(seed: int) -> dict:
    """Cheap and deterministic, like real extraction: depends on the payload only."""
    if seed == 13:
        raise ValueError(f"cannot decode video {seed}")
    rng = np.random.default_rng(seed)
    return {"status": Status.DONE, "values": rng.standard_normal(16)}


def pid_and_threads(_: object) -> dict:
    return {"pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}


def sigint_blocked() -> bool:
    """Run on a worker: whether Ctrl-C (SIGINT to the process group) can reach it."""
    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def uses_a_cached_model(log_path: str) -> int:
    def load_model() -> object:
        with open(log_path, "a") as log:  # one line per load, from whichever process loads
            log.write(f"{os.getpid()}\n")
        return object()

    worker_cached(("model", log_path), load_model)
    return os.getpid()


def dies_the_first_time(payload: tuple[str, int]) -> dict:
    marker_dir, row = payload
    marker = Path(marker_dir) / f"{row}.died"
    if row == 1 and not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    return {"status": Status.DONE, "row": row}


def always_dies(row: int) -> dict:
    if row == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"status": Status.DONE, "row": row}


def collect(client, items, worker_fn, **options) -> tuple[dict, object]:
    results: dict[int, object] = {}
    summary = run_tasks(items, worker_fn, on_result=results.__setitem__, client=client,
                        progress=False, **options)
    return results, summary


def test_two_workers_give_the_same_results_as_one(client):
    items = [(row, row + 100) for row in range(30)]
    parallel, summary = collect(client, items, features_of)
    with dask_client(workers=1) as single:
        serial, _ = collect(single, items, features_of)
    assert sorted(parallel) == list(range(30)) == sorted(serial)
    for row in range(30):
        np.testing.assert_array_equal(parallel[row]["values"], serial[row]["values"])
        np.testing.assert_array_equal(parallel[row]["values"], features_of(row + 100)["values"])
    assert summary.completed == 30 and summary.counts == {"done": 30}


def test_existing_scheduler_address(client):
    client.wait_for_workers(2)
    seen: dict[int, object] = {}
    summary = run_tasks([(0, 1), (1, 2)], features_of, on_result=seen.__setitem__,
                        scheduler=client.scheduler.address, progress=False)
    assert summary.completed == 2 and seen[1]["status"] == Status.DONE


def test_a_failing_task_is_recorded_and_the_rest_finish(client):
    results, summary = collect(client, [(row, row) for row in range(20)], features_of)
    assert results[13] == {"status": Status.FAILED, "error": "ValueError: cannot decode video 13"}
    assert all(results[row]["status"] == Status.DONE for row in range(20) if row != 13)
    assert summary.counts == {"done": 19, "failed": 1}
    assert summary.failures == [(13, "ValueError: cannot decode video 13")]
    assert "row 13: ValueError: cannot decode video 13" in format_run_summary(summary)


def test_factory_runs_once_per_worker_process(client, tmp_path):
    log = tmp_path / "loads.txt"
    results, _ = collect(client, [(row, str(log)) for row in range(40)], uses_a_cached_model)
    loads = log.read_text().split()
    assert len(results) == 40
    assert sorted(loads) == sorted(set(loads))  # no process loaded twice
    assert set(map(int, loads)) == set(results.values())  # each process that ran tasks loaded
    assert config_key("rgb", {"a": 1, "b": [2]}) == config_key("rgb", {"b": [2], "a": 1})
    assert config_key("rgb", {"a": 1}) != config_key("rgb", {"a": 2})


def test_workers_share_the_cores(client):
    results, _ = collect(client, [(row, None) for row in range(8)], pid_and_threads)
    _, threads = local_cluster_size(2)
    assert {result["omp"] for result in results.values()} == {str(threads)}
    assert local_cluster_size(None, cores=8) == (8, 1)
    assert local_cluster_size(2, cores=8) == (2, 4)


def test_tasks_in_flight_stay_bounded(client):
    pulled = []
    outstanding = []

    def items():
        for row in range(200):
            pulled.append(row)
            yield row, row

    def on_result(row, result):
        outstanding.append(len(pulled) - len(outstanding))

    summary = run_tasks(items(), features_of, on_result=on_result, client=client,
                        max_in_flight=5, total=200, progress=True)
    assert summary.completed == 200 and len(pulled) == 200
    assert max(outstanding) <= 5


def test_a_worker_killed_once_is_retried_elsewhere(client, tmp_path):
    items = [(row, (str(tmp_path), row)) for row in range(4)]
    results, summary = collect(client, items, dies_the_first_time)
    assert (tmp_path / "1.died").exists()  # the worker really died once
    assert {row: r["status"] for row, r in results.items()} == dict.fromkeys(range(4), Status.DONE)
    assert summary.counts == {"done": 4}


def test_workers_never_see_ctrl_c_also_after_a_restart(client, tmp_path):
    """The terminal sends SIGINT to every process of the group: only the client must act."""
    assert set(client.run(sigint_blocked).values()) == {True}
    collect(client, [(1, (str(tmp_path), 1))], dies_the_first_time)  # a worker is restarted
    client.wait_for_workers(2)
    assert (tmp_path / "1.died").exists()
    assert set(client.run(sigint_blocked).values()) == {True}
    assert not sigint_blocked()  # and the client itself is reached


def test_ctrl_c_while_the_cluster_starts_stops_the_run_once_it_is_up(monkeypatch):
    real = dask_runner.LocalCluster

    def interrupted_while_starting(**options):
        os.kill(os.getpid(), signal.SIGINT)
        return real(**options)

    monkeypatch.setattr(dask_runner, "LocalCluster", interrupted_while_starting)
    seen: dict[int, object] = {}
    summary = run_tasks([(row, row) for row in range(4)], features_of,
                        on_result=seen.__setitem__, workers=1, progress=False)
    assert summary.interrupted and summary.completed == 0 and seen == {}


def test_a_task_that_kills_every_worker_fails_after_the_retries(client):
    results, summary = collect(client, [(row, row) for row in range(4)], always_dies)
    assert results[2]["status"] == Status.FAILED
    assert results[2]["error"] == (f"KilledWorker: {RETRIES + 1} worker processes died "
                                   "running this item (crash, segfault or out of memory)")
    assert all(results[row]["status"] == Status.DONE for row in (0, 1, 3))
    assert summary.counts == {"done": 3, "failed": 1}


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_the_run_cleanly(client, stop_signal):
    seen = []

    def on_result(row, result):
        seen.append(row)
        if len(seen) == 3:
            os.kill(os.getpid(), stop_signal)  # arrives while the result is being handled

    summary = run_tasks([(row, row) for row in range(200)], features_of, on_result=on_result,
                        client=client, max_in_flight=4, progress=False)
    assert summary.interrupted and summary.completed == len(seen) == 3
    assert "interrupted: 3/200" in format_run_summary(summary)
    again, _ = collect(client, [(0, 5)], features_of)  # the cluster is still usable
    assert again[0]["status"] == Status.DONE


def test_an_error_in_on_result_stops_the_run(client):
    def on_result(row, result):
        raise StoreError("cannot write features to x.zarr: No space left on device")

    with pytest.raises(StoreError, match="No space left"):
        run_tasks([(row, row) for row in range(50)], features_of, on_result=on_result,
                  client=client, progress=False)


def test_unreachable_scheduler_is_a_user_error():
    unreachable = "tcp://127.0.0.1:9"
    with pytest.raises(UserError, match=f"cannot reach the Dask scheduler at {unreachable}"), \
            dask_client(unreachable, connect_timeout_s=1):
        pass


def test_nothing_to_do_starts_no_cluster():
    """A finished run resumed: zero items return at once, even with no scheduler to reach."""
    summary = run_tasks([], features_of, on_result=lambda row, result: None,
                        scheduler="tcp://127.0.0.1:9", progress=False)
    assert (summary.total, summary.completed, summary.interrupted) == (0, 0, False)


def store_row(seed: int) -> dict:
    """A worker function producing one store row (per modality), deterministic per video."""
    rng = np.random.default_rng(seed)
    if seed % 5 == 0:
        return {"status": Status.FAILED, "error": f"DecodeError: video {seed} is truncated"}
    return {"rgb": {"features": rng.standard_normal((3, 4)), "time": np.arange(3.0)},
            "audio": {"status": Status.ABSENT} if seed % 2 else
            {"features": rng.standard_normal((2, 4)), "time": np.arange(2.0)}}


def new_store(path: Path, n: int):
    return create_store(path, dataset="toy", task="single", classes=["a", "b"],
                        ids=[f"v{i}.mp4" for i in range(n)], labels=np.arange(n) % 2,
                        splits=np.ones((n, 1)), split_names=["split1"],
                        modalities={"rgb": ModalitySpec(3, 4, {"backbone": "x"}),
                                    "audio": ModalitySpec(2, 4, {"backbone": "logmel"})})


def extract_into(store, client, stop_after: int | None = None):
    todo = store.todo_rows()
    with store.writer(expected_rows=todo, max_buffered_rows=8) as writer:
        def on_result(row, result):
            writer.add(row, result)
            if stop_after is not None and writer.flushed_rows + writer.buffered == stop_after:
                os.kill(os.getpid(), signal.SIGINT)

        return run_tasks([(int(row), int(row) + 1) for row in todo], store_row,
                         on_result=on_result, client=client, max_in_flight=4, progress=False)


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(client, tmp_path):
    straight = new_store(tmp_path / "a.zarr", 60)
    assert not extract_into(straight, client).interrupted

    first = extract_into(new_store(tmp_path / "b.zarr", 60), client, stop_after=25)
    assert first.interrupted
    resumed = new_store(tmp_path / "b.zarr", 60)
    handled = resumed.status("rgb") != Status.PENDING
    assert handled.sum() == 25  # everything handled before Ctrl-C was flushed
    retried = resumed.status("rgb") == Status.FAILED  # failed rows are tried again
    assert resumed.todo_rows().tolist() == np.flatnonzero(~handled | retried).tolist()
    assert not extract_into(resumed, client).interrupted

    a = zarr.open_group(tmp_path / "a.zarr", mode="r")
    b = zarr.open_group(tmp_path / "b.zarr", mode="r")
    for name in ("rgb", "audio"):
        for field in ("features", "mask", "time", "status", "error"):
            np.testing.assert_array_equal(a[f"{name}/{field}"][:], b[f"{name}/{field}"][:])
    assert (a["rgb/status"][:] == Status.FAILED).sum() == 12


def test_a_cluster_left_without_workers_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing cluster whose workers are all gone (their machines lost): Dask would hold
    the tasks for ever; after LOST_AFTER_S the run stops with one clear error instead."""
    monkeypatch.setattr(worker_watch, "LOST_AFTER_S", 0.5)
    monkeypatch.setattr(worker_watch, "POLL_S", 0.1)
    results: dict[int, dict] = {}
    lost = pytest.raises(worker_watch.WorkersLost, match="no worker has been in the Dask "
                         "cluster .* start one \\(`dask worker SCHEDULER`\\)")
    with LocalCluster(processes=False, n_workers=0, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as empty, lost:
        run_tasks([(0, 1), (1, 2)], features_of, client=empty, on_result=results.__setitem__,
                  progress=False)
    assert results == {}

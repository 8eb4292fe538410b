"""GPU stages that batch across videos (pipeline/features/gpu_pool.py), scheduled on CPU.

A Dask worker declaring the resource GPU=1 is what makes a run split: decode tasks, then one
model task per group of videos on that worker. Here the worker is a CPU one that declares
the resource, so the scheduling, the batching across videos and the store it writes are
checked without a GPU against the toy store (made per video by one worker process), bit for
bit: on CPU the backbones run one input per forward pass (CPU_FORWARD_BATCH), so a feature
does not depend on the batch its video travelled in. (From a batch of 16 on, oneDNN's
convolutions take another kernel on this CPU and differed by one float16 ulp; on a GPU,
cuDNN's choice depends on the batch too.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, as_completed

from pipeline.features import worker_watch
from pipeline.features.dask_runner import run_tasks
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.features.gpu_pool import (
    GPU,
    GPU_WORKER,
    SplitTask,
    compute_group,
    drive_auto,
    worker_roles,
)
from pipeline.features.run import compute_rows, decode_row, extract_row, run_features
from pipeline.profiles import load_profile
from pipeline.store.format import Status
from tests.conftest import TOY_MODALITIES

FIELDS = ("features", "mask", "time", "status", "error")


@pytest.fixture(scope="module")
def gpu_scheduler() -> Iterator[str]:
    """An in-process cluster whose one worker (2 threads, CPU) declares GPU=1."""
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                      resources={GPU: 1}, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


def _assert_same_store(made: Path, reference: Path) -> None:
    """Every array equal, with real features among them."""
    one, two = zarr.open_group(reference, mode="r"), zarr.open_group(made, mode="r")
    for name in TOY_MODALITIES:
        assert (one[f"{name}/status"][:] == Status.DONE).sum() >= 8  # real features compared
        for field in FIELDS:
            np.testing.assert_array_equal(two[f"{name}/{field}"][:], one[f"{name}/{field}"][:],
                                          err_msg=f"{name}/{field}")


def test_the_split_path_writes_the_store_of_the_plain_one(
        toy_dataset: tuple[Path, Path], toy_store: Path, gpu_scheduler: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of 5 videos (13 rows: 5, 5, 3, the corrupt one failing inside a group): 15
    RGB frames and 10 flow stacks per backbone batch, so the kernels are those of one video."""
    root, profile = toy_dataset
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")  # as toy_store was made
    out = tmp_path / "split.zarr"
    result = run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                          dataset="toy", scheduler=gpu_scheduler, device="cpu",
                          progress=False, gpu_batch=5)
    assert result.run.completed == 13 and result.run.counts["failed"] == 1
    _assert_same_store(out, toy_store)


@pytest.mark.slow
def test_local_gpu_workers_join_the_cluster(toy_dataset: tuple[Path, Path], toy_store: Path,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`features --gpu-workers 1`: one decoding process and one GPU-declaring process; groups
    of 8 videos (24 RGB frames and 16 flow stacks per backbone call)."""
    root, profile = toy_dataset
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")  # inherited by the worker processes
    out = tmp_path / "local.zarr"
    run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                 dataset="toy", workers=1, gpu_workers=1, device="cpu", progress=False)
    _assert_same_store(out, toy_store)


def test_only_workers_declaring_gpu_get_the_models(inprocess_scheduler: str,
                                                   gpu_scheduler: str) -> None:
    with Client(inprocess_scheduler) as client:
        gpu, cpu = worker_roles(client)
        assert gpu == [] and len(cpu) == 1
    with Client(gpu_scheduler) as client:
        gpu, cpu = worker_roles(client)
        assert len(gpu) == 1 and cpu == []


def test_a_failing_batch_fails_only_its_own_videos(toy_dataset: tuple[Path, Path]) -> None:
    """A decoded video whose inputs break a model fails alone in that modality; its group
    mate keeps the features it gets alone, and a video whose decode failed passes through."""
    root, profile = toy_dataset
    loaded = load_profile(profile)
    settings = {"modalities": loaded["modalities"], "limits": loaded["limits"],
                "device": "cpu"}
    videos = sorted(root.rglob("*_c01.mp4"))[:2]
    payloads = [{"path": str(v), "extractor": settings, "modalities": list(TOY_MODALITIES)}
                for v in videos]
    decoded = [decode_row(p) for p in payloads]
    rgb = decoded[1]["rgb"]
    broken = {**decoded[1], "rgb": {**rgb, "items": rgb["items"][..., 0]}}  # no colour axis
    whole_failure = {"status": Status.FAILED, "error": "KilledWorker: ..."}
    results = compute_group(compute_rows, settings, [decoded[0], broken, whole_failure])
    alone = extract_row(payloads[0])
    for name in TOY_MODALITIES:
        assert results[0][name]["status"] == alone[name]["status"]
        np.testing.assert_array_equal(results[0][name].get("features"),
                                      alone[name].get("features"), err_msg=name)
    assert results[1]["rgb"]["status"] == Status.FAILED and results[1]["rgb"]["error"]
    assert results[1]["flow"]["status"] == Status.DONE
    assert results[2] is whole_failure


def _plus_one(x: int) -> int:
    return x + 1


def _one_short_for_groups(context: int, decoded: list[int]) -> list[dict[str, int]]:
    """A model task whose result list lacks one entry for a group of several: compute_group
    fails as a whole (outside its per-item error handling), like a worker dying mid-group."""
    results = [{"value": context * d} for d in decoded]
    return results[:-1] if len(results) > 1 else results


def test_a_group_failing_as_a_whole_is_retried_item_by_item(gpu_scheduler: str) -> None:
    task = SplitTask(decode=_plus_one, compute=_one_short_for_groups, single=_plus_one,
                     context=10, batch=3)
    results: dict[int, dict] = {}
    with Client(gpu_scheduler) as client:
        summary = run_tasks([(row, row) for row in range(7)], task, client=client,
                            on_result=results.__setitem__, driver=drive_auto, progress=False)
    assert results == {row: {"value": 10 * (row + 1)} for row in range(7)}
    assert summary.completed == 7 and summary.counts == {"done": 7} and not summary.interrupted


def test_a_model_task_no_worker_can_take_stops_the_run(
        inprocess_scheduler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask holds a task needing GPU=1 until a worker declaring it joins: with the GPU
    workers gone for good, the watch cancels it and the driver stops with one clear error."""
    monkeypatch.setattr(worker_watch, "LOST_AFTER_S", 0.5)
    monkeypatch.setattr(worker_watch, "POLL_S", 0.1)
    with Client(inprocess_scheduler) as client:
        future = client.submit(abs, -1, resources={GPU: 1}, pure=False)  # no worker has GPU
        with worker_watch.WorkerWatch(client, GPU_WORKER, lambda: [future]) as watch:
            waited = next(iter(as_completed([future])))  # for ever, without the watch
            assert watch.lost.is_set() and waited.cancelled()
            with pytest.raises(worker_watch.WorkersLost, match="worker declaring the GPU "
                               "resource has been in the Dask cluster for 0 s"):
                watch.stopped_by_loss(waited)
        ran = client.submit(abs, -2, pure=False)  # a future the watch did not cancel passes
        assert ran.result() == 2
        watch.stopped_by_loss(ran)


def test_decode_workers_build_no_networks(toy_dataset: tuple[Path, Path]) -> None:
    """A decode-only extractor holds no backbone and decodes exactly what a full one does."""
    root, profile = toy_dataset
    loaded = load_profile(profile)
    video = sorted(root.rglob("*_c01.mp4"))[0]
    bare = VideoFeatureExtractor(loaded["modalities"], loaded["limits"], "cpu", models=False)
    full = VideoFeatureExtractor(loaded["modalities"], loaded["limits"], "cpu")
    assert bare.backbones == {} and set(full.backbones) == set(TOY_MODALITIES)
    got, expected = bare.decode(video), full.decode(video)
    for name in TOY_MODALITIES:
        assert got[name].keys() == expected[name].keys(), name
        if "items" in expected[name]:
            np.testing.assert_array_equal(got[name]["items"], expected[name]["items"])


"""GPU stages that batch across videos: decoding on CPU workers, models on GPU workers.

A worker that declares the Dask resource `GPU` (`dask worker --resources GPU=1`, or the
local ones `features --gpu-workers N` starts, one per GPU) runs only the model half of the
work: flow and the CNNs over the decoded inputs of `batch` videos at once. Decoding (frames,
flow stacks, audio and log-mel) runs on the other workers, ahead of the GPUs, and each
group's model task depends on its decode tasks, so Dask moves the decoded arrays to the GPU
worker. With no worker declaring `GPU`, the run is the plain per-video one of dask_runner.

Failures stay per video: a group whose task fails (a worker killed, a bad video) is retried
video by video, so only the video at fault fails.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from distributed import Client, Future

from pipeline.features.dask_runner import (
    RunSummary,
    _describe,
    _drive,
    _guarded,
    _StopSignals,
    exception_failure,
    hand_back,
    keep_in_flight,
    task_failure,
)
from pipeline.features.worker_watch import Needed

GPU = "GPU"
VIDEOS_PER_GPU_TASK = 8  # enough to fill a GPU batch with a toy or UCF101 profile


@dataclass(frozen=True)
class SplitTask:
    """The two halves of one item's work, and the plain task for a cluster without GPUs.

    `decode(payload)` runs on a CPU worker; `compute(context, decoded list)` on a GPU worker
    returns one result per decoded item; `single(payload)` is the unsplit task.
    """

    decode: Callable[[Any], Any]
    compute: Callable[[Any, list[Any]], list[Any]]
    single: Callable[[Any], Any]
    context: Any
    batch: int = VIDEOS_PER_GPU_TASK


def worker_roles(client: Client) -> tuple[list[str], list[str]]:
    """(addresses of the workers declaring GPU, addresses of the others)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    gpu = sorted(addr for addr, info in workers.items() if info.get("resources", {}).get(GPU))
    return gpu, sorted(set(workers) - set(gpu))


def has_gpu_worker(client: Client) -> bool:
    """Some worker declares GPU: a model task can run."""
    return bool(worker_roles(client)[0])


GPU_WORKER = Needed(has_gpu_worker, "worker declaring the GPU resource",
                    "`dask worker SCHEDULER --resources GPU=1`")


def _is_failure(result: Any) -> bool:
    return isinstance(result, Mapping) and "status" in result


def compute_group(compute: Callable[[Any, list[Any]], list[Any]], context: Any,
                  decoded: list[Any]) -> list[Any]:
    """Runs on the GPU worker: the decoded items of one group -> their results; items whose
    decode failed as a whole pass through, an error here fails the group's other items."""
    live = [i for i, item in enumerate(decoded) if not _is_failure(item)]
    results = list(decoded)
    try:
        computed = compute(context, [decoded[i] for i in live])
    except (Exception, SystemExit) as exc:  # every failure is reported per item
        computed = [task_failure(_describe(exc))] * len(live)
    for i, result in zip(live, computed, strict=True):
        results[i] = result
    return results


def drive_auto(client: Client, items: Iterator[tuple[int, Any]], task: SplitTask,
               on_result: Callable[[int, Any], None], limit: int, summary: RunSummary,
               outcome: Callable[[Any], str], bar: Any, stops: _StopSignals) -> None:
    """`run_tasks`'s driver: split stages when some worker declares GPU, else the plain one."""
    gpu, cpu = worker_roles(client)
    if not gpu:
        _drive(client, items, task.single, on_result, limit, summary, outcome, bar, stops)
        return
    groups = max(2 * len(gpu), -(-limit // task.batch))  # decodes run ahead of every GPU
    _drive_split(client, items, task, on_result, groups, cpu, summary, outcome, bar, stops)


def _drive_split(client: Client, items: Iterator[tuple[int, Any]], task: SplitTask,
                 on_result: Callable[[int, Any], None], groups: int, cpu: list[str],
                 summary: RunSummary, outcome: Callable[[Any], str], bar: Any,
                 stops: _StopSignals) -> None:
    """Keep `groups` groups in flight, each a model task on its decode tasks; the items of a
    group whose task fails as a whole (its worker died, its result broke) go again one by
    one, so one bad item costs only itself. If no GPU worker is left for good, the run stops
    (worker_watch) instead of waiting for one."""
    run_id = uuid.uuid4().hex[:8]
    serial = itertools.count()
    members: dict[Any, list[tuple[int, Any]]] = {}
    alone: deque[tuple[int, Any]] = deque()  # items of a failed group, retried one by one
    place = {"workers": cpu, "allow_other_workers": True} if cpu else {}

    def submit() -> Future | None:
        group = [alone.popleft()] if alone else list(itertools.islice(items, task.batch))
        if not group:
            return None
        n = next(serial)
        decoded = [client.submit(_guarded, task.decode, payload, pure=False,
                                 key=f"decode-{run_id}-{n}-{row}", **place)
                   for row, payload in group]
        future = client.submit(compute_group, task.compute, task.context, decoded, pure=False,
                               key=f"compute-{run_id}-{n}", resources={GPU: 1})
        members[future.key] = group
        return future

    def finish(key: Any, results: Any, error: BaseException | None) -> int:
        group = members.pop(key)
        if error is not None:  # the task failed as a whole: KilledWorker, a broken result
            if len(group) > 1:
                alone.extend(group)
                return len(group)
            results = [exception_failure(error)]
        for (row, _), result in zip(group, results, strict=True):
            hand_back(row, result, on_result, summary, outcome, bar, stops)
        return 1

    keep_in_flight(client, submit, finish, groups, summary, needed=GPU_WORKER)

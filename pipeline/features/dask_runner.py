"""Run one function over many items on Dask workers; results come back to this process.

Generic on purpose: it knows nothing about videos (a failed item is reported with the store's
`Status.FAILED`, so a failure becomes a failed row). Workers only compute; `on_result` runs in
the client, so a single process writes the store. Tasks are submitted lazily with a bounded
number in flight (memory stays flat for any number of items), a task that raises becomes a
failed result, a worker that dies has its task retried elsewhere, and Ctrl-C / SIGTERM stop the
run cleanly so the caller can flush what is done. Local worker processes never see Ctrl-C (the
terminal sends it to the whole process group): the client stops and closes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from typing import Any, TypeVar

import dask
from distributed import Client, Future, LocalCluster, as_completed
from distributed.scheduler import KilledWorker

from extract.errors import UserError
from pipeline.features.worker_malloc import LOCAL_WORKER_CONFIG, malloc_note, slow_malloc_workers
from pipeline.features.worker_watch import ANY_WORKER, Needed, WorkerWatch
from pipeline.store.format import Status

T = TypeVar("T")

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_worker_cache: dict[Hashable, Any] = {}
_worker_cache_lock = threading.Lock()


def worker_cached(key: Hashable, factory: Callable[[], T]) -> T:
    """The object made by `factory` for `key`, made once per worker process and then reused.

    This is how models load once per worker rather than once per video: call it inside the
    task function with a key derived from the model config (see `config_key`).
    """
    with _worker_cache_lock:
        if key not in _worker_cache:
            _worker_cache[key] = factory()
        return _worker_cache[key]


def config_key(name: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """A hashable cache key for a (JSON-able) config: equal configs share one cached object."""
    return name, json.dumps(config, sort_keys=True, default=str)


def task_failure(error: str) -> dict[str, str]:
    """The result a task gets when it raised or killed its workers."""
    return {"status": Status.FAILED, "error": error}


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _guarded(worker_fn: Callable[[Any], Any], payload: Any) -> Any:
    """Runs on the worker: an exception becomes a failed result instead of a failed task."""
    try:
        return worker_fn(payload)
    except (Exception, SystemExit) as exc:  # every failure is reported per item
        return task_failure(_describe(exc))


def default_outcome(result: Any) -> str:
    """Label used for the summary counts: a result's `Status` (e.g. 'failed'), else 'done'."""
    status = result.get("status", Status.DONE) if isinstance(result, Mapping) else Status.DONE
    return Status(status).label


@dataclass
class RunSummary:
    """What happened: counts per outcome label, the failures, and whether it was cut short."""

    total: int | None
    completed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[int, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "completed": self.completed,
            "counts": dict(self.counts),
            "failures": [{"row": row, "error": error} for row, error in self.failures],
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
        }


def format_run_summary(summary: RunSummary, max_failures: int = 20) -> str:
    counts = ", ".join(f"{n} {label}" for label, n in sorted(summary.counts.items())) or "nothing"
    rate = summary.completed / summary.seconds if summary.seconds > 0 else 0.0
    head = "interrupted" if summary.interrupted else "finished"
    lines = [
        f"{head}: {summary.completed}/{summary.total or summary.completed} items in "
        f"{summary.seconds:.1f} s ({rate:.2f}/s): {counts}"
    ]
    lines += [f"  row {row}: {error}" for row, error in summary.failures[:max_failures]]
    if len(summary.failures) > max_failures:
        lines.append(f"  ... and {len(summary.failures) - max_failures} more failures")
    return "\n".join(lines)


def local_cluster_size(workers: int | None, cores: int | None = None) -> tuple[int, int]:
    """(worker processes, threads per worker for the decoders and BLAS) to share the cores.

    The models' math runs on a fixed number of threads whatever this gives (see
    `extraction_threads`), so features do not depend on the worker count.
    """
    cores = cores or os.cpu_count() or 1
    count = max(1, workers or cores)
    return count, max(1, cores // count)


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    retries: int = 2,
    connect_timeout_s: float = 20.0,
    gpu_workers: int = 0,
) -> Iterator[Client]:
    """A client on an existing scheduler address, or on a LocalCluster sized to the machine.

    The local cluster runs one process per worker and gives each `cores / workers` threads
    (OMP_NUM_THREADS & co.), so workers do not oversubscribe the cores. `retries` is how many
    times a task may lose its worker before it fails (the scheduler's allowed-failures); on an
    existing cluster that setting belongs to its scheduler. `gpu_workers` more local workers
    declare the resource GPU=1, worker i seeing only GPU i (CUDA_VISIBLE_DEVICES).
    """
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise UserError(
                f"cannot reach the Dask scheduler at {scheduler} (--scheduler): {_describe(exc)}"
            ) from exc
        with client:
            if note := malloc_note(slow_malloc_workers(client)):
                print(note, file=sys.stderr, flush=True)
            yield client
        return
    count, threads = local_cluster_size(workers)
    env = dict.fromkeys(THREAD_ENV_VARS, str(threads))
    # Saturation 1.0: a worker holds only the task it runs, so when a video kills its worker
    # no innocent queued task is blamed (and failed) with it.
    settings = {"distributed.scheduler.allowed-failures": retries,
                "distributed.scheduler.worker-saturation": 1.0}
    # The malloc setting stays set while the cluster lives: GPU workers join it later.
    with dask.config.set(LOCAL_WORKER_CONFIG), contextlib.ExitStack() as own:
        with dask.config.set(settings), _sigint_blocked():
            cluster = own.enter_context(LocalCluster(
                n_workers=count,
                threads_per_worker=threads_per_worker,
                processes=True,
                env=env,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ))
        client = own.enter_context(Client(cluster))
        if gpu_workers:
            _add_gpu_workers(cluster, gpu_workers, env)
            client.wait_for_workers(count + gpu_workers)
        yield client


def _add_gpu_workers(cluster: LocalCluster, count: int, env: dict[str, str]) -> None:
    """`count` workers of one thread declaring GPU=1, each on its own GPU."""
    for i in range(count):
        options = {**cluster.new_spec["options"], "nthreads": 1, "resources": {"GPU": 1},
                   "env": {**env, "CUDA_VISIBLE_DEVICES": str(i)}}
        cluster.worker_spec[f"gpu-{i}"] = {**cluster.new_spec, "options": options}
    with _sigint_blocked():
        cluster.scale(len(cluster.worker_spec))


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread while a local cluster starts.

    The threads the cluster starts (its event loop, which also restarts dead workers) inherit
    the mask, and so do the worker processes they spawn: Ctrl-C, which the terminal sends to
    the whole process group, is then handled by this process alone (it stops the run and
    closes the workers) instead of printing a traceback from every worker. The
    multiprocessing resource tracker is started first: starting it unblocks SIGINT in the
    thread that does so (CPython's resource_tracker.ensure_running), which would undo this.
    """
    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class _StopSignals:
    """Ctrl-C and SIGTERM stop the run, but never in the middle of `on_result`, nor while the
    local cluster starts or closes.

    A signal during `on_result` (which may be writing the store) or while the cluster starts
    is remembered and acted on right after; a second signal there, or one while waiting for
    results, raises KeyboardInterrupt at once. Once stopping, the cluster closes in peace.
    """

    def __init__(self) -> None:
        self.in_critical = False
        self.requested = False
        self.closing = False

    def handle(self, signum: int, frame: object) -> None:
        if self.closing or (self.in_critical and not self.requested):
            self.requested = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self.in_critical = True
        try:
            yield
        finally:
            self.in_critical = False
        if self.requested:
            raise KeyboardInterrupt


def run_tasks(
    items: Iterable[tuple[int, Any]],
    worker_fn: Callable[[Any], Any],
    *,
    on_result: Callable[[int, Any], None],
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    retries: int = 2,
    max_in_flight: int | None = None,
    total: int | None = None,
    progress: bool = True,
    outcome: Callable[[Any], str] = default_outcome,
    description: str = "items",
    driver: Callable[..., None] | None = None,
    gpu_workers: int = 0,
) -> RunSummary:
    """Run `worker_fn(payload)` for every (row, payload); call `on_result(row, result)` here.

    `worker_fn` must be importable by the workers (a module-level function). A task that
    raises, or that kills `retries + 1` workers, yields `task_failure(...)` as its result and
    the run goes on. Returns early with `interrupted=True` on Ctrl-C or SIGTERM; an exception
    from `on_result` (e.g. a full disk) stops the run and propagates. `driver` replaces the
    per-item one (gpu_pool.drive_auto: `worker_fn` is then its SplitTask); `gpu_workers`
    local workers declaring the GPU resource join the local cluster.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    summary = RunSummary(total=total)
    if total == 0:  # a finished run resumed: no cluster to start for nothing
        return summary
    started = time.monotonic()
    stops = _StopSignals()
    with stops.installed():
        try:
            with contextlib.ExitStack() as own:
                if client is None:
                    with stops.critical():  # a Ctrl-C now stops the run once the cluster is up
                        client = own.enter_context(
                            dask_client(scheduler, workers, threads_per_worker, retries,
                                        gpu_workers=gpu_workers))
                        own.callback(setattr, stops, "closing", True)  # runs before the close
                threads = sum(client.nthreads().values()) or 1
                limit = max_in_flight or 2 * threads + 2
                started = time.monotonic()  # the rate is of tasks, not of the cluster's start
                with _progress_bar(total, progress, description) as bar:
                    (driver or _drive)(client, iter(items), worker_fn, on_result, limit,
                                       summary, outcome, bar, stops)
        except KeyboardInterrupt:
            summary.interrupted = True
    summary.seconds = time.monotonic() - started
    return summary


@contextlib.contextmanager
def _progress_bar(total: int | None, enabled: bool, description: str) -> Iterator[Any]:
    from tqdm import tqdm

    with tqdm(
        total=total,
        disable=not enabled,
        unit=description.rstrip("s") or "item",
        desc=description,
        dynamic_ncols=True,
        smoothing=0.05,
    ) as bar:
        yield bar


def keep_in_flight(client: Client, submit: Callable[[], Future | None],
                   finish: Callable[[Any, Any, BaseException | None], int], limit: int,
                   summary: RunSummary, needed: Needed = ANY_WORKER) -> None:
    """Keep `limit` units of work in flight: `submit()` starts the next one (None when nothing
    is left); `finish(key, result, error)` takes a completed one (its result, or the error
    its future raised: KilledWorker, an unpicklable result) and says how many to start in its
    place. Ctrl-C marks the run interrupted; whatever is still running is cancelled. If the
    `needed` workers are gone for good, the run stops with WorkersLost (worker_watch)."""
    pending = as_completed(loop=client.loop)
    taking: list[Future] = []  # whose result is being fetched: it waits for ever if the
                               # worker holding it was lost, so the watch may cancel it too

    def in_flight() -> list[Future]:
        with pending.lock:  # the watch reads from its own thread
            return [*pending.futures, *taking]

    def start(count: int) -> None:
        for _ in range(count):
            future = submit()
            if future is not None:
                pending.add(future)

    try:
        with WorkerWatch(client, needed, in_flight) as watch:
            start(limit)
            for future in pending:
                taking.append(future)
                try:
                    result, error = future.result(), None
                except (Exception, SystemExit) as exc:
                    watch.stopped_by_loss(future)
                    result, error = None, exc
                finally:
                    taking.clear()
                future.release()
                start(finish(future.key, result, error))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        outstanding = list(pending.futures)
        if outstanding:
            client.cancel(outstanding)


def _drive(
    client: Client,
    items: Iterator[tuple[int, Any]],
    worker_fn: Callable[[Any], Any],
    on_result: Callable[[int, Any], None],
    limit: int,
    summary: RunSummary,
    outcome: Callable[[Any], str],
    bar: Any,
    stops: _StopSignals,
) -> None:
    """One task per item, `limit` in flight, each result handed to `on_result` as it comes."""
    run_id = uuid.uuid4().hex[:8]
    prefix = getattr(worker_fn, "__name__", "task")
    rows: dict[Any, int] = {}

    def submit() -> Future | None:
        item = next(items, None)
        if item is None:
            return None
        row, payload = item
        future = client.submit(
            _guarded, worker_fn, payload, key=f"{prefix}-{run_id}-{row}", pure=False
        )
        rows[future.key] = int(row)
        return future

    def finish(key: Any, result: Any, error: BaseException | None) -> int:
        if error is not None:
            result = exception_failure(error)
        hand_back(rows.pop(key), result, on_result, summary, outcome, bar, stops)
        return 1

    keep_in_flight(client, submit, finish, limit, summary)


def exception_failure(exc: BaseException) -> dict[str, str]:
    """The failed result of a task whose future raised (its workers died, or worse)."""
    if isinstance(exc, KilledWorker):
        deaths = exc.allowed_failures + 1
        return task_failure(f"KilledWorker: {deaths} worker process"
                            f"{'es' if deaths > 1 else ''} died running this item "
                            "(crash, segfault or out of memory)")
    return task_failure(_describe(exc))


def hand_back(row: int, result: Any, on_result: Callable[[int, Any], None],
              summary: RunSummary, outcome: Callable[[Any], str], bar: Any,
              stops: _StopSignals) -> None:
    """Count one result and give it to `on_result`, never interrupted half way."""
    label = outcome(result)
    summary.counts[label] += 1
    if label == Status.FAILED.label and isinstance(result, Mapping) and "error" in result:
        summary.failures.append((row, str(result["error"])))
    with stops.critical():
        on_result(row, result)
        summary.completed += 1
        bar.update(1)
        bar.set_postfix(failed=summary.counts[Status.FAILED.label], refresh=False)

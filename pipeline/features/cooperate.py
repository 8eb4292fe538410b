"""`features --cooperate`: this run fills one store together with others, block by block.

The store is created (or resumed) under the single-run lock as usual, which is then let go;
from there every run claims blocks of rows with leases (`pipeline/remote/leases.py`),
computes the pending rows of the blocks it holds, writes them (holding their shard's write
lease) and releases the block. A block whose lease expired (its run died) is taken over and
only its still-pending rows computed, so every finished row is written once. A run ends when
no block has pending rows; while others still hold the last ones it waits for them to finish
or to expire.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from pipeline.features.dask_runner import RunSummary, dask_client, run_tasks
from pipeline.remote.leases import Leases
from pipeline.store.feature_store import FeatureStore
from pipeline.store.format import Status

WAIT_POLL_S = 1.0


def block_rows(requested: int | None, rows_per_shard: int) -> int:
    """Rows per lease: a power of two that divides the shard (default: the whole shard, so
    each shard has one writer and is uploaded once per block)."""
    rows = rows_per_shard
    while requested is not None and rows > max(1, requested):
        rows //= 2
    return rows


class BlockWriter:
    """Writes the rows of each held block once they have all arrived (and every
    `flush_seconds` what has arrived), then releases the block."""

    def __init__(self, store: FeatureStore, leases: Leases, rows: int,
                 flush_seconds: float) -> None:
        self.store, self.leases, self.rows = store, leases, rows
        self.flush_seconds = flush_seconds
        self.lost = 0  # rows dropped: their block was taken over while this run was stalled
        self._buffer: dict[int, Mapping[str, Any]] = {}
        self._waiting: Counter[int] = Counter()
        self._last = time.monotonic()

    def expect(self, block: int, rows: int) -> None:
        self._waiting[block] += rows

    def add(self, row: int, result: Mapping[str, Any]) -> None:
        row = int(row)
        self._buffer[row] = result
        block = row // self.rows
        self._waiting[block] -= 1
        if self._waiting[block] == 0:
            self._write([r for r in self._buffer if r // self.rows == block])
            del self._waiting[block]
            self.leases.release(block)
        if time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._write(list(self._buffer))
        self._last = time.monotonic()

    def _write(self, rows: list[int]) -> None:
        per_shard = self.store.rows_per_shard
        for shard in sorted({row // per_shard for row in rows}):
            mine = sorted(row for row in rows if row // per_shard == shard)
            with self.leases.writing(shard):
                held = {block: self.leases.holds(block) for block in {r // self.rows
                                                                     for r in mine}}
                kept = [row for row in mine if held[row // self.rows]]
                self.store.write_rows(kept, [self._buffer[row] for row in kept])
            self.lost += len(mine) - len(kept)
            for row in mine:
                del self._buffer[row]


class Work:
    """Which rows still need this run: pending ones, and those that had failed before it
    started (retried once, as a resume does); a row that fails now is not retried."""

    def __init__(self, store: FeatureStore, rows: int) -> None:
        self.store, self.rows = store, rows
        self.retry = self._status_is(Status.FAILED)

    def _status_is(self, status: Status) -> np.ndarray:
        found = np.zeros(self.store.n, dtype=bool)
        for name in self.store.modalities:
            found |= self.store.recorded_status(name)[0] == status
        return found

    def needed(self) -> np.ndarray:
        return (self._status_is(Status.PENDING) | self.retry) & self.store.listed

    def blocks(self) -> list[int]:
        """Blocks with a row still needed, from the statuses stored now."""
        self.store.refresh_status(slice(0, self.store.n))
        return sorted({int(row) // self.rows for row in np.flatnonzero(self.needed())})

    def claim(self, block: int) -> list[int]:
        """The rows of `block` still needed, read again once it is held; no longer retried."""
        first, stop = block * self.rows, min(self.store.n, (block + 1) * self.rows)
        self.store.refresh_status(slice(first, stop))  # another run may have just written it
        todo = [first + int(i) for i in np.flatnonzero(self.needed()[first:stop])]
        self.retry[first:stop] = False
        return todo


def _claimed_items(work: Work, leases: Leases, writer: BlockWriter,
                   payload: Callable[[int], dict[str, Any]]) -> Iterator[tuple[int, Any]]:
    """Items of one block after another, each claimed just before its rows are needed; the
    blocks are visited from a random start, so runs starting together rarely collide."""
    blocks = work.blocks()
    start = random.randrange(len(blocks)) if blocks else 0
    for block in blocks[start:] + blocks[:start]:
        if not leases.take(block):
            continue
        todo = work.claim(block)
        if not todo:
            leases.release(block)
            continue
        writer.expect(block, len(todo))
        for row in todo:
            yield row, payload(row)


def _merge(total: RunSummary, part: RunSummary) -> None:
    total.completed += part.completed
    total.counts.update(part.counts)
    total.failures += part.failures
    total.interrupted |= part.interrupted
    total.seconds += part.seconds


def fill_together(store: FeatureStore, leases: Leases, *, rows: int,
                  payload: Callable[[int], dict[str, Any]], outcome: Callable[[Any], str],
                  scheduler: str | None, workers: int | None, progress: bool,
                  flush_seconds: float, split: tuple[Any, dict[str, Any]]
                  ) -> tuple[RunSummary, int]:
    """Compute and write blocks until none has pending rows: (summary, rows dropped).

    `split` is (task, run_tasks options): the per-video task, or gpu_pool's split stages
    with their driver and the local GPU workers to start."""
    worker_fn, options = split
    gpu_workers = options.get("gpu_workers", 0)
    driver = options.get("driver")
    summary = RunSummary(total=None)
    writer = BlockWriter(store, leases, rows, flush_seconds)
    work = Work(store, rows)
    try:
        with dask_client(scheduler, workers, gpu_workers=gpu_workers) as client:
            while True:
                items = _claimed_items(work, leases, writer, payload)
                try:
                    part = run_tasks(items, worker_fn, on_result=writer.add, client=client,
                                     progress=progress, description="videos",
                                     outcome=outcome, driver=driver)
                finally:
                    writer.flush()
                _merge(summary, part)
                if part.interrupted or not _wait_for_blocks(work, leases):
                    break
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        leases.close()
    summary.total = summary.completed
    return summary, writer.lost


def _wait_for_blocks(work: Work, leases: Leases) -> bool:
    """True once a block with rows still needed is free to claim; False when none is left."""
    while True:
        pending = set(work.blocks())
        if not pending:
            return False
        if pending - leases.live_others():
            return True
        time.sleep(WAIT_POLL_S)

"""Writing rows into sharded arrays: each shard file touched once per write, and a buffer that
collects finished rows until a whole shard (or a deadline) is ready.

A shard file is rewritten whole on every write, so concurrent writers to one shard would lose
updates: Dask workers only compute, and the client writes through `BufferedWriter`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from pipeline.store.format import StoreError

if TYPE_CHECKING:
    from pipeline.store.feature_store import FeatureStore


def _shard_groups(rows: np.ndarray, shard_rows: int) -> Iterator[np.ndarray]:
    """Indices into sorted `rows`, grouped by the shard each row falls in."""
    shards = rows // shard_rows
    boundaries = np.flatnonzero(np.diff(shards)) + 1
    yield from np.split(np.arange(len(rows)), boundaries)


def write_sorted_rows(array: zarr.Array, rows: np.ndarray, values: np.ndarray,
                      shard_rows: int) -> None:
    """Write values at sorted rows, touching each shard file once.

    zarr 3.1.6 fails on integer-array (`oindex`) writes into sharded arrays
    (zarr-developers/zarr-python#2834), so each shard's rows are written as one slice: the
    span between its first and last row is read, patched and written back. Only this
    process writes, so the rows in between come back unchanged.
    """
    for index in _shard_groups(rows, shard_rows):
        block = rows[index]
        start, stop = int(block[0]), int(block[-1]) + 1
        if stop - start == len(block):
            array[start:stop] = values[index]
            continue
        span = array[start:stop]
        span[block - start] = values[index]
        array[start:stop] = span


class BufferedWriter:
    """Collects finished rows in memory and writes them in shard-aligned blocks.

    A shard is written as soon as every expected row in it has arrived; everything buffered
    is also written every `flush_seconds`, when `max_buffered_rows` are waiting, and on
    close (also on Ctrl-C), so little work is lost and each shard file is rewritten rarely.
    """

    def __init__(self, store: FeatureStore, expected_rows: Iterable[int] | None = None,
                 flush_seconds: float = 30.0, max_buffered_rows: int | None = None) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.max_buffered_rows = max_buffered_rows or 2 * store.rows_per_shard
        self.flushed_rows = 0
        self._buffer: dict[int, Mapping[str, Any]] = {}
        expected = () if expected_rows is None else expected_rows
        self._waiting: Counter[int] = Counter(int(row) // store.rows_per_shard
                                              for row in expected)
        self._last_flush = time.monotonic()

    def add(self, row: int, result: Mapping[str, Any]) -> None:
        row = int(row)
        self._buffer[row] = result
        shard = row // self.store.rows_per_shard
        if self._waiting[shard] > 0:
            self._waiting[shard] -= 1
            if self._waiting[shard] == 0:
                self._flush_rows([r for r in self._buffer if r // self.store.rows_per_shard
                                  == shard])
        overdue = time.monotonic() - self._last_flush >= self.flush_seconds
        if overdue or len(self._buffer) >= self.max_buffered_rows:
            self.flush()

    def flush(self) -> None:
        self._flush_rows(list(self._buffer))
        self._last_flush = time.monotonic()

    def _flush_rows(self, rows: list[int]) -> None:
        if not rows:
            return
        self.store.write_rows(rows, [self._buffer[row] for row in rows])
        for row in rows:
            del self._buffer[row]
        self.flushed_rows += len(rows)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def __enter__(self) -> BufferedWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None or not issubclass(exc_type, StoreError):
            self.flush()

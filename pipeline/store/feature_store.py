"""The feature store, format version 1: one Zarr v3 group per dataset and profile.

Layout and semantics are documented in docs/store-format.md. Three rules shape this module:

* A row is complete or still pending: `status` is written after features/mask/time/error, so a
  crash between the two leaves the row pending and a rerun recomputes it.
* One process writes. A shard file is rewritten whole on every write, so concurrent writers
  to one shard would lose updates; Dask workers only compute and the client writes, buffered
  into shard-aligned blocks by `BufferedWriter`.
* Any Zarr user can read it: plain arrays, standard codecs, dimension names for xarray.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from extract.errors import UserError

FORMAT_NAME = "attention-clusters-features"
FORMAT_VERSION = 1

MAX_ROWS_PER_SHARD = 1024
MIN_ROWS_PER_SHARD = 64
TARGET_SHARD_BYTES = 128 * 2**20
TARGET_FEATURE_CHUNK_BYTES = 128 * 2**10
MAX_FEATURE_CHUNK_ROWS = 16
SMALL_CHUNK_ROWS = 64
MAX_ERROR_CHARS = 2000

SPLIT_UNUSED, SPLIT_TRAIN, SPLIT_TEST = 0, 1, 2


class Status(IntEnum):
    """Per-row, per-modality state; the values are what `<modality>/status` holds."""

    PENDING = 0
    DONE = 1
    FAILED = 2
    ABSENT = 3


COMPLETE = (Status.DONE, Status.ABSENT)


class StoreError(UserError):
    """The store cannot be created, opened, resumed or written; the message says what to do."""


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality stores: L positions of D-wide features, made by `config`."""

    positions: int
    dim: int
    config: Mapping[str, Any]


@dataclass
class ModalityRows:
    """Normalised arrays for a block of rows of one modality, ready to be written."""

    features: np.ndarray
    mask: np.ndarray
    time: np.ndarray
    status: np.ndarray
    error: np.ndarray


def software_versions() -> dict[str, str]:
    """Versions that can change what gets stored, recorded so a store explains itself."""
    versions = {"python": sys.version.split()[0]}
    for package in ("attention-clusters", "zarr", "numpy", "torch", "torchvision", "av",
                    "opencv-contrib-python-headless", "librosa"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def rows_per_shard(row_bytes: int) -> int:
    """Rows per shard file: up to 1024, fewer when a shard would exceed ~128 MiB."""
    rows = MAX_ROWS_PER_SHARD
    while rows > MIN_ROWS_PER_SHARD and rows * row_bytes > TARGET_SHARD_BYTES:
        rows //= 2
    return rows


def feature_chunk_rows(row_bytes: int) -> int:
    """Rows per inner feature chunk: one row when rows are big, a few (<=16) when tiny."""
    rows = 1
    while rows < MAX_FEATURE_CHUNK_ROWS and rows * row_bytes < TARGET_FEATURE_CHUNK_BYTES:
        rows *= 2
    return rows


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so configs compare equal to what the store attrs hold."""
    return json.loads(json.dumps(value, sort_keys=True))


def _first_difference(old: Any, new: Any, where: str = "") -> str:
    """Name the first setting that differs, e.g. 'backend torch vs opencv'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in old:
                return f"{name} not set vs {new[key]!r}"
            if key not in new:
                return f"{name} {old[key]!r} vs not set"
            if old[key] != new[key]:
                return _first_difference(old[key], new[key], name)
        return ""
    label = where or "value"
    plain = (str, int, float, bool)
    if isinstance(old, plain) and isinstance(new, plain):
        return f"{label} {old} vs {new}"
    return f"{label} {old!r} vs {new!r}"


@contextmanager
def _storage_errors(path: Path, action: str) -> Iterator[None]:
    """Turn file-system failures (read-only, disk full...) into one clear line."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = ""
        if exc.errno == errno.ENOSPC:
            hint = ": free some space and rerun the same command to resume"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            hint = ": choose a writable --out"
        raise StoreError(f"cannot {action} {path}: {reason}{hint}") from exc


def _parse_status(value: Any) -> Status:
    if isinstance(value, str):
        try:
            return Status[value.upper()]
        except KeyError:
            raise ValueError(f"unknown status {value!r}") from None
    return Status(int(value))


def _row_arrays(result: Mapping[str, Any], spec: ModalitySpec) -> tuple[np.ndarray, ...]:
    """One modality result -> padded (features, mask, time, status, error) for one row."""
    status = _parse_status(result.get("status", Status.DONE))
    if status == Status.PENDING:
        raise ValueError("a result cannot set a row back to pending")
    length, dim = spec.positions, spec.dim
    features = np.zeros((length, dim), dtype=np.float16)
    mask = np.zeros(length, dtype=bool)
    times = np.zeros(length, dtype=np.float32)
    if status == Status.DONE:
        values = np.asarray(result["features"])
        if values.ndim != 2 or values.shape[1] != dim or values.shape[0] > length:
            raise ValueError(f"features of shape {values.shape} do not fit ({length}, {dim})")
        used = values.shape[0]
        features[:used] = values
        given_mask = result.get("mask")
        mask[:used] = True if given_mask is None else np.asarray(given_mask, dtype=bool)[:used]
        if result.get("time") is not None:
            times[:used] = np.asarray(result["time"], dtype=np.float32)[:used]
    error = str(result.get("error") or "")[:MAX_ERROR_CHARS]
    return features, mask, times, np.uint8(status), error


def _shard_groups(rows: np.ndarray, shard_rows: int) -> Iterator[np.ndarray]:
    """Indices into sorted `rows`, grouped by the shard each row falls in."""
    shards = rows // shard_rows
    boundaries = np.flatnonzero(np.diff(shards)) + 1
    yield from np.split(np.arange(len(rows)), boundaries)


def _write_rows(array: zarr.Array, rows: np.ndarray, values: np.ndarray, shard_rows: int) -> None:
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


class FeatureStore:
    """An open feature store. The only writer of its path while it is open for writing."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        attrs = group.attrs.asdict()
        self.dataset: str = attrs["dataset"]
        self.task: str = attrs["task"]
        self.classes: list[str] = list(attrs["classes"])
        self.created: str = attrs.get("created", "")
        self.software: dict[str, str] = dict(attrs.get("software", {}))
        self.modalities: dict[str, ModalitySpec] = {}
        for name, config in attrs["modalities"].items():
            features = group[f"{name}/features"]
            self.modalities[name] = ModalitySpec(features.shape[1], features.shape[2], config)
        ids = group["videos/id"]
        self.rows_per_shard: int = ids.shards[0] if ids.shards else ids.chunks[0]
        self.ids: list[str] = [str(video_id) for video_id in ids[:]]
        self.split_names: list[str] = list(group["videos/split"].attrs.get("split_names", []))
        self._status = {name: group[f"{name}/status"][:] for name in self.modalities}

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int32 for single-label stores, (N, C) bool for multi-label ones."""
        name = "videos/label" if self.task == "single" else "videos/labels"
        return self._group[name][:]

    @property
    def splits(self) -> np.ndarray:
        """(N, S) uint8: 0 unused, 1 train, 2 test, one column per name in `split_names`."""
        return self._group["videos/split"][:]

    def status(self, modality: str) -> np.ndarray:
        return self._status[self._known(modality)].copy()

    def _known(self, modality: str) -> str:
        if modality not in self.modalities:
            known = ", ".join(self.modalities)
            raise StoreError(f"{self.path} has no modality '{modality}' (it has: {known})")
        return modality

    def _needs_work(self, modality: str, overwrite: bool) -> np.ndarray:
        status = self._status[modality]
        if overwrite:
            return np.ones(len(status), dtype=bool)
        return ~np.isin(status, COMPLETE)

    def todo_rows(self, overwrite: bool = False, modalities: Iterable[str] | None = None
                  ) -> np.ndarray:
        """Rows that some modality still needs: pending or failed (absent counts as complete)."""
        names = [self._known(m) for m in (modalities or self.modalities)]
        needed = np.zeros(self.n, dtype=bool)
        for name in names:
            needed |= self._needs_work(name, overwrite)
        return np.flatnonzero(needed)

    def todo_modalities(self, row: int, overwrite: bool = False) -> list[str]:
        """The modalities of one row that still need computing, so done ones are not redone."""
        return [m for m in self.modalities if overwrite or self._status[m][row] not in COMPLETE]

    def write_rows(self, rows: Sequence[int], results: Sequence[Mapping[str, Any]]) -> None:
        """Write finished rows: data arrays first, then status, so a crash leaves them pending.

        Each result maps modality -> {features (l<=L, D), mask, time, status, error}; a
        modality left out is not touched. A result with a top-level "status" (a whole-task
        failure from the runner) applies to every modality of that row not yet complete.
        """
        if len(rows) != len(results):
            raise ValueError("rows and results differ in length")
        if len(rows) == 0:
            return
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
        sorted_rows = np.asarray(rows, dtype=np.int64)[order]
        if np.any(np.diff(sorted_rows) == 0):
            raise ValueError("a row appears twice in one write")
        blocks = self._blocks(sorted_rows, [results[i] for i in order])
        with _storage_errors(self.path, "write features to"):
            for name, (block_rows, block) in blocks.items():
                for field in ("features", "mask", "time", "error"):
                    _write_rows(self._group[f"{name}/{field}"], block_rows,
                                getattr(block, field), self.rows_per_shard)
            for name, (block_rows, block) in blocks.items():
                _write_rows(self._group[f"{name}/status"], block_rows, block.status,
                            self.rows_per_shard)
                self._status[name][block_rows] = block.status

    def _blocks(self, rows: np.ndarray, results: Sequence[Mapping[str, Any]]
                ) -> dict[str, tuple[np.ndarray, ModalityRows]]:
        per_modality: dict[str, tuple[list[int], list[tuple[np.ndarray, ...]]]] = {}
        for row, result in zip(rows.tolist(), results, strict=True):
            if "status" in result and "status" not in self.modalities:
                parts = {m: result for m in self.todo_modalities(row)}
            else:
                parts = result
            for name, part in parts.items():
                spec = self.modalities[self._known(name)]
                row_list, arrays = per_modality.setdefault(name, ([], []))
                row_list.append(row)
                arrays.append(_row_arrays(part, spec))
        blocks = {}
        for name, (row_list, arrays) in per_modality.items():
            features, mask, times, status, error = zip(*arrays, strict=True)
            blocks[name] = (np.asarray(row_list, dtype=np.int64), ModalityRows(
                np.stack(features), np.stack(mask), np.stack(times),
                np.asarray(status, dtype=np.uint8), np.asarray(error, dtype=str)))
        return blocks

    def read(self, modality: str, rows: Sequence[int] | slice | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(features float16 (n,L,D), mask bool (n,L), time float32 (n,L), status uint8 (n,))."""
        group = self._group[self._known(modality)]
        selection: Any = slice(None) if rows is None else rows
        if not isinstance(selection, slice):
            selection = np.asarray(selection, dtype=np.int64)
        return tuple(group[field][selection] for field in ("features", "mask", "time", "status"))

    def errors(self, modality: str) -> np.ndarray:
        return self._group[f"{self._known(modality)}/error"][:]

    def writer(self, expected_rows: Iterable[int] | None = None, flush_seconds: float = 30.0,
               max_buffered_rows: int | None = None) -> BufferedWriter:
        return BufferedWriter(self, expected_rows, flush_seconds, max_buffered_rows)

    def summary(self, max_failures: int = 20) -> dict[str, Any]:
        """Counts per modality and status, the first failures with their errors, the configs."""
        modalities = {}
        for name, spec in self.modalities.items():
            status = self._status[name]
            counts = Counter({s.name.lower(): 0 for s in Status})
            counts.update(Status(int(value)).name.lower() for value in status)
            failed_rows = np.flatnonzero(status == Status.FAILED)[:max_failures]
            errors = self._group[f"{name}/error"]
            failures = [{"row": int(r), "id": self.ids[r], "error": str(errors[int(r)])}
                        for r in failed_rows]
            modalities[name] = {"positions": spec.positions, "dim": spec.dim,
                                "counts": dict(counts), "failures": failures,
                                "config": spec.config}
        return {"path": str(self.path), "format_version": FORMAT_VERSION,
                "dataset": self.dataset, "task": self.task, "videos": self.n,
                "classes": len(self.classes), "splits": self.split_names,
                "rows_per_shard": self.rows_per_shard, "created": self.created,
                "software": self.software, "modalities": modalities}


class BufferedWriter:
    """Collects finished rows in memory and writes them in shard-aligned blocks.

    A shard is written as soon as every expected row in it has arrived; everything buffered
    is also written every `flush_seconds`, when `max_buffered_rows` are waiting, and on
    close (also on Ctrl-C), so little work is lost and each shard file is rewritten rarely.
    """

    def __init__(self, store: FeatureStore, expected_rows: Iterable[int] | None,
                 flush_seconds: float, max_buffered_rows: int | None) -> None:
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


def _open_group(path: Path, mode: str) -> zarr.Group:
    if not path.exists():
        raise StoreError(f"{path} does not exist: run `make features` (or `cli.py features`)")
    try:
        group = zarr.open_group(path, mode=mode)
    except (zarr.errors.BaseZarrError, OSError, ValueError, TypeError) as exc:
        raise StoreError(f"{path} is not an attention-clusters feature store") from exc
    attrs = group.attrs.asdict()
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not an attention-clusters feature store")
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(f"{path}: format version {version} is newer than this software "
                         f"supports ({FORMAT_VERSION}); upgrade attention-clusters")
    return group


def open_store(path: str | Path, *, writable: bool = False) -> FeatureStore:
    """Open and validate an existing store (read-only unless `writable`)."""
    path = Path(path)
    with _storage_errors(path, "open"):
        return FeatureStore(path, _open_group(path, "r+" if writable else "r"))


def _create_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any, *,
                  chunk_rows: int, shard_rows: int, dims: tuple[str, ...], fill: Any) -> None:
    inner = tuple(max(1, size) for size in shape[1:])
    group.create_array(name, shape=shape, dtype=dtype, chunks=(chunk_rows, *inner),
                       shards=(shard_rows, *inner), fill_value=fill, dimension_names=dims)


def _create_modality(group: zarr.Group, name: str, spec: ModalitySpec, n: int,
                     shard_rows: int) -> None:
    length, dim = spec.positions, spec.dim
    small = min(SMALL_CHUNK_ROWS, shard_rows)
    _create_array(group, f"{name}/features", (n, length, dim), np.float16,
                  chunk_rows=feature_chunk_rows(length * dim * 2), shard_rows=shard_rows,
                  dims=("video", "position", "channel"), fill=0)
    _create_array(group, f"{name}/mask", (n, length), bool, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video", "position"), fill=False)
    _create_array(group, f"{name}/time", (n, length), np.float32, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video", "position"), fill=0.0)
    _create_array(group, f"{name}/status", (n,), np.uint8, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video",), fill=int(Status.PENDING))
    _create_array(group, f"{name}/error", (n,), str, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video",), fill="")


def _write_videos(group: zarr.Group, *, task: str, labels: np.ndarray, splits: np.ndarray,
                  split_names: Sequence[str]) -> None:
    name = "videos/label" if task == "single" else "videos/labels"
    group[name][:] = labels
    group["videos/split"][:] = splits
    group["videos/split"].attrs["split_names"] = list(split_names)


def _check_inputs(task: str, classes: Sequence[str], ids: Sequence[str], labels: Any,
                  splits: Any, split_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if task not in ("single", "multi"):
        raise ValueError(f"task must be 'single' or 'multi', not {task!r}")
    if len(set(ids)) != len(ids):
        raise ValueError("video ids must be unique")
    n = len(ids)
    if labels is None:
        labels = np.full(n, -1) if task == "single" else np.zeros((n, len(classes)))
    dtype, shape = (np.int32, (n,)) if task == "single" else (bool, (n, len(classes)))
    labels = np.asarray(labels, dtype=dtype)
    if labels.shape != shape:
        raise ValueError(f"labels of shape {labels.shape}, expected {shape}")
    splits = np.zeros((n, 0)) if splits is None else splits
    splits = np.asarray(splits, dtype=np.uint8).reshape(n, len(split_names))
    return labels, splits


def create_store(path: str | Path, *, dataset: str, task: str, classes: Sequence[str],
                 ids: Sequence[str], labels: Any = None, splits: Any = None,
                 split_names: Sequence[str] = (), modalities: Mapping[str, ModalitySpec],
                 overwrite: bool = False) -> FeatureStore:
    """Create a store, or reopen the same one to resume.

    Same dataset, ids and modality configs: the store is reopened (labels, classes and
    splits refreshed from the manifest) and only rows not yet complete need work. Anything
    else is refused unless `overwrite`, which deletes the old store. `labels` is (N,) int
    (-1 unlabelled) for task "single" and (N, C) bool for "multi"; `splits` is (N, S).
    """
    path = Path(path)
    labels, splits = _check_inputs(task, classes, ids, labels, splits, split_names)
    wanted = {name: ModalitySpec(spec.positions, spec.dim, _jsonable(spec.config))
              for name, spec in modalities.items()}
    with _storage_errors(path, "create feature store at"):
        if path.exists() and overwrite:
            open_store(path)  # refuses anything that is not a feature store
            shutil.rmtree(path)
        if path.exists():
            store = open_store(path, writable=True)
            _check_resumable(store, dataset=dataset, task=task, ids=ids, classes=classes,
                             modalities=wanted)
            store._group.attrs["classes"] = list(classes)
            store.classes = list(classes)
            _write_videos(store._group, task=task, labels=labels, splits=splits,
                          split_names=split_names)
            store.split_names = list(split_names)
            return store
        return _create_new(path, dataset=dataset, task=task, classes=classes, ids=ids,
                           labels=labels, splits=splits, split_names=split_names,
                           modalities=wanted)


def _check_resumable(store: FeatureStore, *, dataset: str, task: str, ids: Sequence[str],
                     classes: Sequence[str], modalities: Mapping[str, ModalitySpec]) -> None:
    advice = "use --overwrite or another --out"
    if store.dataset != dataset or store.task != task:
        raise StoreError(f"{store.path} holds dataset '{store.dataset}' ({store.task}-label), "
                         f"not '{dataset}' ({task}-label): {advice}")
    if task == "multi" and len(classes) != len(store.classes):
        raise StoreError(f"{store.path} has {len(store.classes)} classes, not {len(classes)}: "
                         f"{advice}")
    if store.ids != list(ids):
        raise StoreError(f"{store.path} was made for a different list of videos "
                         f"({store.n} vs {len(ids)}): {advice}")
    if set(store.modalities) != set(modalities):
        raise StoreError(f"{store.path} holds modalities {sorted(store.modalities)}, not "
                         f"{sorted(modalities)}: {advice}")
    for name, spec in modalities.items():
        old = store.modalities[name]
        if (old.positions, old.dim) != (spec.positions, spec.dim):
            raise StoreError(f"{store.path} stores '{name}' as {old.positions}x{old.dim}, not "
                             f"{spec.positions}x{spec.dim}: {advice}")
        if old.config != spec.config:
            raise StoreError(f"{store.path} was made with a different extraction config for "
                             f"'{name}' ({_first_difference(old.config, spec.config)}): "
                             f"{advice}")


def _create_new(path: Path, *, dataset: str, task: str, classes: Sequence[str],
                ids: Sequence[str], labels: np.ndarray, splits: np.ndarray,
                split_names: Sequence[str], modalities: Mapping[str, ModalitySpec]
                ) -> FeatureStore:
    n = len(ids)
    row_bytes = max([spec.positions * spec.dim * 2 for spec in modalities.values()] or [1])
    shard_rows = rows_per_shard(row_bytes)
    small = min(SMALL_CHUNK_ROWS, shard_rows)
    # Built beside its final path and renamed into place once complete: a process killed
    # while creating leaves only the partial folder (removed by the next attempt), never a
    # half-made store at `path` that every rerun, even with --overwrite, would refuse.
    partial = partial_path(path)
    if partial.exists():
        shutil.rmtree(partial)
    group = zarr.open_group(partial, mode="w-", zarr_format=3)
    _create_array(group, "videos/id", (n,), str, chunk_rows=small, shard_rows=shard_rows,
                  dims=("video",), fill="")
    if task == "single":
        _create_array(group, "videos/label", (n,), np.int32, chunk_rows=small,
                      shard_rows=shard_rows, dims=("video",), fill=-1)
    else:
        _create_array(group, "videos/labels", (n, len(classes)), bool, chunk_rows=small,
                      shard_rows=shard_rows, dims=("video", "class"), fill=False)
    _create_array(group, "videos/split", (n, len(split_names)), np.uint8, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video", "split"), fill=SPLIT_UNUSED)
    group["videos/id"][:] = np.asarray(list(ids), dtype=str)
    _write_videos(group, task=task, labels=labels, splits=splits, split_names=split_names)
    for name, spec in modalities.items():
        _create_modality(group, name, spec, n, shard_rows)
    # The format marker goes last: a store interrupted while being created is not a store.
    group.attrs.update({
        "dataset": dataset, "task": task, "classes": list(classes),
        "modalities": {name: spec.config for name, spec in modalities.items()},
        "software": software_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
    })
    os.replace(partial, path)
    return FeatureStore(path, zarr.open_group(path, mode="r+"))


def partial_path(path: Path) -> Path:
    """Where a new store is built before it is renamed to `path`."""
    return path.with_name(f".{path.name}.partial")


def _describe_config(config: Mapping[str, Any]) -> str:
    """One line of the settings that matter most; `store info --json` has the full config."""
    plain = [f"{k}={v}" for k, v in config.items() if not isinstance(v, Mapping)]
    backbone = config.get("backbone", {})
    spec = backbone.get("spec", backbone) if isinstance(backbone, Mapping) else {}
    if spec.get("name"):
        weights = backbone.get("weights")
        plain.append(f"backbone={spec['name']}" + (f" ({weights})" if weights else ""))
    return ", ".join(plain) or "(not recorded)"


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable `store info`: what the store holds and what is left to do."""
    lines = [
        f"{summary['path']}: dataset {summary['dataset']} ({summary['task']}-label), "
        f"{summary['videos']} videos, {summary['classes']} classes",
        f"splits: {', '.join(summary['splits']) or 'none'}; created {summary['created']}; "
        f"format v{summary['format_version']}, {summary['rows_per_shard']} rows per shard",
    ]
    for name, info in summary["modalities"].items():
        counts = info["counts"]
        described = ", ".join(f"{counts[s.name.lower()]} {s.name.lower()}" for s in Status)
        lines.append(f"{name}: {info['positions']} x {info['dim']}: {described}")
        lines.append(f"  extraction: {_describe_config(info['config'])}")
        for failure in info["failures"]:
            lines.append(f"  failed {failure['id']}: {failure['error']}")
        shown = len(info["failures"])
        if counts["failed"] > shown:
            lines.append(f"  ... and {counts['failed'] - shown} more failures")
    return "\n".join(lines)

"""An open feature store: the one reader of the store format, and the writer of its rows.

Training, evaluation, `store info` and the Flash-MNIST study all read a store through
`open_store`, so one set of checks and error messages guards every reader. Layout and
semantics: docs/store-format.md. A row is complete or still pending: `status` is written after
features/mask/time/error, so a crash between the two leaves the row pending. Metadata that is
damaged or foreign is refused here with one line naming the store and what is wrong.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from pipeline.remote import objects
from pipeline.remote.urls import Location, as_location, is_url, join, remote_errors
from pipeline.store.format import (
    COMPLETE,
    ModalitySpec,
    Status,
    StoreError,
    check_attributes,
    damaged,
)
from pipeline.store.rows import PaddedRow, pad_row
from pipeline.store.verify import read_rows, read_status, rewrite_array, write_errors
from pipeline.store.writer import BufferedWriter, write_sorted_rows

if TYPE_CHECKING:
    from pipeline.store.resume import Relisting
    from pipeline.store.verify import DamageReport

FIELDS = ("features", "mask", "time", "status")


@dataclass
class ModalityRows:
    """Normalised arrays for a block of rows of one modality, ready to be written."""

    features: np.ndarray
    mask: np.ndarray
    time: np.ndarray
    status: np.ndarray
    error: np.ndarray
    stream: np.ndarray


@contextmanager
def storage_errors(path: Location, action: str) -> Iterator[None]:
    """Turn file-system failures (read-only, disk full...) and object-storage ones (no
    bucket, no credentials, unreachable) into one clear line."""
    try:
        with remote_errors(StoreError, action, path) if is_url(path) else nullcontext():
            yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = ""
        if exc.errno == errno.ENOSPC:
            hint = ": free some space and rerun the same command to resume"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            hint = ": choose a writable --out"
        raise StoreError(f"cannot {action} {path}: {reason}{hint}") from exc


def write_videos(group: zarr.Group, *, task: str, labels: np.ndarray, splits: np.ndarray,
                 split_names: Sequence[str]) -> None:
    """Labels and split membership of every video (refreshed from the manifest on resume)."""
    name = "videos/label" if task == "single" else "videos/labels"
    rewrite_array(group[name], labels)
    rewrite_array(group["videos/split"], splits)
    group["videos/split"].attrs["split_names"] = list(split_names)


class FeatureStore:
    """An open feature store. The only writer of its path while it is open for writing."""

    def __init__(self, path: Location, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        self.fence: Callable[[], None] | None = None  # raises once this run may not write
        attrs = group.attrs.asdict()
        self.dataset: str = attrs["dataset"]
        self.task: str = attrs["task"]
        self.classes: list[str] = list(attrs["classes"])
        self.created: str = attrs.get("created", "")
        self.format_version: int = attrs["format_version"]
        self.software: dict[str, str] = dict(attrs.get("software", {}))
        self.relisting: Relisting | None = None  # set by create_store when it resumes
        self.repaired: DamageReport | None = None  # damaged rows create_store made pending
        ids = self._array("videos/id", 1, 0)
        self.rows_per_shard: int = ids.shards[0] if ids.shards else ids.chunks[0]
        rows = ids.shape[0]
        self._array("videos/label" if self.task == "single" else "videos/labels",
                    1 if self.task == "single" else 2, rows)
        split = self._array("videos/split", 2, rows)
        self.split_names: list[str] = list(split.attrs.get("split_names", []))
        self.modalities: dict[str, ModalitySpec] = {}
        for name, config in attrs["modalities"].items():
            features = self._array(f"{name}/features", 3, rows)
            for field, ndim in (("mask", 2), ("time", 2), ("status", 1), ("error", 1)):
                self._array(f"{name}/{field}", ndim, rows)
            self.modalities[name] = ModalitySpec(features.shape[1], features.shape[2], config)
        self._streams = {f"{name}/stream" for name in self.modalities
                         if self._array(f"{name}/stream", 1, rows, required=False) is not None}
        recorded = {name: read_status(group[f"{name}/status"], rows) for name in self.modalities}
        statuses = {name: status for name, (status, _) in recorded.items()}
        self.ids: list[str] = self._read_ids(ids, statuses)
        self._status = {name: status[:self.n] for name, status in statuses.items()}
        self._lost = {name: lost[:self.n] for name, (_, lost) in recorded.items()}
        listed = self._array("videos/listed", 1, rows, required=False)  # v1: all listed
        self.listed: np.ndarray = (np.ones(self.n, dtype=bool) if listed is None
                                   else listed[:self.n].astype(bool))

    def _array(self, name: str, ndim: int, rows: int, required: bool = True) -> Any:
        """The array `name` with at least `rows` rows (None if missing and not `required`),
        or one damaged-store line. Arrays longer than `videos/id` are normal: a run adding
        videos grows them first."""
        try:
            array = self._group[name]
        except KeyError:
            if not required:
                return None
            raise damaged(self.path, f"array {name} is missing") from None
        except (zarr.errors.BaseZarrError, ValueError, TypeError) as exc:
            raise damaged(self.path, f"the metadata of {name} is unreadable ({exc})") from exc
        if not isinstance(array, zarr.Array) or array.ndim != ndim:
            raise damaged(self.path, f"{name} is not a {ndim}-d array")
        if array.shape[0] < rows:
            raise damaged(self.path, f"{name} has {array.shape[0]} rows, videos/id {rows}")
        return array

    def _read_ids(self, array: zarr.Array, statuses: Mapping[str, np.ndarray]) -> list[str]:
        """The video ids, without the empty ones a run adding videos leaves at the end if it
        is stopped between growing `videos/id` and writing it (their rows are all pending).

        Any other empty id means the id data is lost: the rows could not be matched to their
        videos, so the store is refused rather than resumed under the wrong names."""
        ids = [str(video_id) for video_id in read_rows(self, array.path, slice(None))]
        n = len(ids)
        while n and not ids[n - 1]:
            n -= 1
        empty = len(ids) - n + sum(1 for video_id in ids[:n] if not video_id)
        started = any((status[n:] != Status.PENDING).any() for status in statuses.values())
        if ids[:n].count("") or started:
            raise damaged(self.path, f"videos/id has {empty} empty ids of {len(ids)}: the "
                                     f"video id array is missing data")
        if len(set(ids[:n])) != n:
            raise damaged(self.path, "videos/id names a video twice")
        return ids[:n]

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int32 for single-label stores, (N, C) bool for multi-label ones."""
        name = "videos/label" if self.task == "single" else "videos/labels"
        return read_rows(self, name, slice(0, self.n))

    @property
    def num_splits(self) -> int:
        return int(self._group["videos/split"].shape[1])

    @property
    def splits(self) -> np.ndarray:
        """(N, S) uint8: 0 unused, 1 train, 2 test, one column per name in `split_names`."""
        return read_rows(self, "videos/split", slice(0, self.n))

    def status(self, modality: str) -> np.ndarray:
        """Per-row status codes. A reader stops at rows whose status chunk is damaged; the
        writer (`features`) sees them as pending and recomputes them."""
        lost = np.flatnonzero(self._lost[self._known(modality)])
        if len(lost) and self._group.store.read_only:
            read_rows(self, f"{modality}/status", lost)  # raises with the damaged rows
        return self._status[modality].copy()

    def recorded_status(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(status, lost): lost rows (status chunk damaged) read as pending in `status`."""
        return self._status[modality].copy(), self._lost[modality].copy()

    def refresh_status(self, rows: slice) -> None:
        """Read the status of `rows` again: cooperating runs write this store too."""
        first, stop, _ = rows.indices(self.n)
        for name in self.modalities:
            status, lost = read_status(self._group[f"{name}/status"], stop)
            self._status[name][first:stop] = status[first:stop]
            self._lost[name][first:stop] = lost[first:stop]

    def array(self, name: str) -> zarr.Array:
        return self._group[name]

    def records_streams(self, modality: str) -> bool:
        """Whether the store has `<modality>/stream` (stores made before it was added do not)."""
        return f"{modality}/stream" in self._streams

    def streams(self, modality: str) -> np.ndarray:
        """(N,) int16: the index of the file's stream each row was read from, -1 unknown."""
        name = f"{self._known(modality)}/stream"
        if name not in self._streams:
            return np.full(self.n, -1, dtype=np.int16)
        return read_rows(self, name, slice(0, self.n))

    def array_names(self) -> list[str]:
        """Every array of the store, e.g. 'videos/id', 'rgb/features'."""
        return sorted(name for name, node in self._group.members(max_depth=None)
                      if isinstance(node, zarr.Array))

    def mark_pending(self, modality: str, rows: Sequence[int]) -> None:
        """Set rows of one modality back to pending (their data is damaged): recomputed next."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows):
            self._write(f"{modality}/status", rows, np.full(len(rows), Status.PENDING, np.uint8))
            self._status[modality][rows] = Status.PENDING
            self._lost[modality][rows] = False

    def _write(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        with storage_errors(self.path, "write features to"), write_errors(self, name, rows):
            write_sorted_rows(self._group[name], rows, values, self.rows_per_shard)

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
        """Listed rows that some modality still needs: pending or failed (absent counts as
        complete). Vanished videos (not listed by the last run) are never recomputed."""
        names = [self._known(m) for m in (modalities or self.modalities)]
        needed = np.zeros(self.n, dtype=bool)
        for name in names:
            needed |= self._needs_work(name, overwrite)
        return np.flatnonzero(needed & self.listed)

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
        if self.fence is not None:
            self.fence()
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
        sorted_rows = np.asarray(rows, dtype=np.int64)[order]
        if np.any(np.diff(sorted_rows) == 0):
            raise ValueError("a row appears twice in one write")
        blocks = self._blocks(sorted_rows, [results[i] for i in order])
        for name, (block_rows, block) in blocks.items():
            for field in ("features", "mask", "time", "error", "stream"):
                if field != "stream" or self.records_streams(name):
                    self._write(f"{name}/{field}", block_rows, getattr(block, field))
        for name, (block_rows, block) in blocks.items():
            self._write(f"{name}/status", block_rows, block.status)
            self._status[name][block_rows] = block.status
            self._lost[name][block_rows] = False

    def _blocks(self, rows: np.ndarray, results: Sequence[Mapping[str, Any]]
                ) -> dict[str, tuple[np.ndarray, ModalityRows]]:
        per_modality: dict[str, tuple[list[int], list[PaddedRow]]] = {}
        for row, result in zip(rows.tolist(), results, strict=True):
            if "status" in result and "status" not in self.modalities:
                parts = {m: result for m in self.todo_modalities(row)}
            else:
                parts = result
            for name, part in parts.items():
                spec = self.modalities[self._known(name)]
                row_list, padded = per_modality.setdefault(name, ([], []))
                row_list.append(row)
                padded.append(pad_row(part, spec.positions, spec.dim))
        blocks = {}
        for name, (row_list, padded) in per_modality.items():
            blocks[name] = (np.asarray(row_list, dtype=np.int64), ModalityRows(
                np.stack([p.features for p in padded]), np.stack([p.mask for p in padded]),
                np.stack([p.time for p in padded]),
                np.asarray([p.status for p in padded], dtype=np.uint8),
                np.asarray([p.error for p in padded], dtype=str),
                np.asarray([p.stream for p in padded], dtype=np.int16)))
        return blocks

    def read(self, modality: str, rows: Sequence[int] | slice | None = None,
             fields: Sequence[str] = FIELDS) -> tuple[np.ndarray, ...]:
        """The `fields` of some rows, by default (features float16 (n,L,D), mask bool (n,L),
        time float32 (n,L), status uint8 (n,)); readers that need less read less."""
        self._known(modality)
        selection: Any = slice(None) if rows is None else rows
        if isinstance(selection, slice):  # never past videos/id, which may be shorter
            selection = slice(*selection.indices(self.n))
        else:
            selection = np.asarray(selection, dtype=np.int64)
        return tuple(read_rows(self, f"{modality}/{field}", selection) for field in fields)

    def errors(self, modality: str) -> np.ndarray:
        return read_rows(self, f"{self._known(modality)}/error", slice(0, self.n))

    def chunk_rows(self, modality: str) -> int:
        """Rows per inner feature chunk: readers align their blocks to it."""
        return int(self._group[f"{self._known(modality)}/features"].chunks[0])

    def writer(self, expected_rows: Iterable[int] | None = None, flush_seconds: float = 30.0,
               max_buffered_rows: int | None = None) -> BufferedWriter:
        return BufferedWriter(self, expected_rows, flush_seconds, max_buffered_rows)


def root_json(path: Location) -> bytes | None:
    """The bytes of the root zarr.json, None if there is none."""
    if is_url(path):
        found = objects.read(join(str(path), "zarr.json"))
        return None if found is None else found[0]
    marker = Path(path) / "zarr.json"
    if not Path(path).is_dir() or not marker.is_file():
        return None
    return marker.read_bytes()


def root_attributes(path: Location) -> dict[str, Any]:
    """The attributes in the root zarr.json, read as plain JSON so that a damaged file gets a
    message saying how it is damaged rather than whatever zarr trips over."""
    content = root_json(path)
    if content is None:
        raise StoreError(f"{path} is not an attention-clusters feature store")
    try:
        metadata = json.loads(content)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise damaged(path, f"zarr.json is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise damaged(path, f"zarr.json holds a JSON {type(metadata).__name__}, not an object")
    attrs = metadata.get("attributes", {})
    if not isinstance(attrs, dict):
        raise damaged(path, "the attributes in zarr.json are not an object")
    return attrs


def store_exists(path: Location) -> bool:
    """Whether something is at `path`: a folder, or for a URL a root zarr.json."""
    return root_json(path) is not None if is_url(path) else Path(path).exists()


def _open_group(path: Location, mode: str) -> zarr.Group:
    if not store_exists(path):
        raise StoreError(f"{path} does not exist: run `make features` (or `cli.py features`)")
    check_attributes(path, root_attributes(path))
    try:
        return zarr.open_group(path, mode=mode)
    except (zarr.errors.BaseZarrError, ValueError, TypeError) as exc:
        raise damaged(path, f"zarr cannot open its root group ({exc})") from exc


def open_store(path: Location, *, writable: bool = False) -> FeatureStore:
    """Open and validate an existing store (read-only unless `writable`), on disk or at an
    fsspec URL (`s3://bucket/name.zarr`)."""
    path = as_location(path)
    with storage_errors(path, "open"):
        return FeatureStore(path, _open_group(path, "r+" if writable else "r"))



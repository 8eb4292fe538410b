"""An open feature store: the one reader of store format v1, and the writer of its rows.

Training, evaluation, `store info` and the Flash-MNIST study all read a store through
`open_store`, so one set of checks and error messages guards every reader. Layout and
semantics: docs/store-format.md. A row is complete or still pending: `status` is written after
features/mask/time/error, so a crash between the two leaves the row pending.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.store.format import (
    COMPLETE,
    FORMAT_NAME,
    FORMAT_VERSION,
    ModalitySpec,
    StoreError,
)
from pipeline.store.rows import PaddedRow, pad_row
from pipeline.store.writer import BufferedWriter, write_sorted_rows

FIELDS = ("features", "mask", "time", "status")


@dataclass
class ModalityRows:
    """Normalised arrays for a block of rows of one modality, ready to be written."""

    features: np.ndarray
    mask: np.ndarray
    time: np.ndarray
    status: np.ndarray
    error: np.ndarray


@contextmanager
def storage_errors(path: Path, action: str) -> Iterator[None]:
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


def write_videos(group: zarr.Group, *, task: str, labels: np.ndarray, splits: np.ndarray,
                 split_names: Sequence[str]) -> None:
    """Labels and split membership of every video (refreshed from the manifest on resume)."""
    name = "videos/label" if task == "single" else "videos/labels"
    group[name][:] = labels
    group["videos/split"][:] = splits
    group["videos/split"].attrs["split_names"] = list(split_names)


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
    def num_splits(self) -> int:
        return int(self._group["videos/split"].shape[1])

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
        with storage_errors(self.path, "write features to"):
            for name, (block_rows, block) in blocks.items():
                for field in ("features", "mask", "time", "error"):
                    write_sorted_rows(self._group[f"{name}/{field}"], block_rows,
                                getattr(block, field), self.rows_per_shard)
            for name, (block_rows, block) in blocks.items():
                write_sorted_rows(self._group[f"{name}/status"], block_rows, block.status,
                            self.rows_per_shard)
                self._status[name][block_rows] = block.status

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
                np.asarray([p.error for p in padded], dtype=str)))
        return blocks

    def read(self, modality: str, rows: Sequence[int] | slice | None = None,
             fields: Sequence[str] = FIELDS) -> tuple[np.ndarray, ...]:
        """The `fields` of some rows, by default (features float16 (n,L,D), mask bool (n,L),
        time float32 (n,L), status uint8 (n,)); readers that need less read less."""
        group = self._group[self._known(modality)]
        selection: Any = slice(None) if rows is None else rows
        if not isinstance(selection, slice):
            selection = np.asarray(selection, dtype=np.int64)
        return tuple(group[field][selection] for field in fields)

    def errors(self, modality: str) -> np.ndarray:
        return self._group[f"{self._known(modality)}/error"][:]

    def chunk_rows(self, modality: str) -> int:
        """Rows per inner feature chunk: readers align their blocks to it."""
        return int(self._group[f"{self._known(modality)}/features"].chunks[0])

    def writer(self, expected_rows: Iterable[int] | None = None, flush_seconds: float = 30.0,
               max_buffered_rows: int | None = None) -> BufferedWriter:
        return BufferedWriter(self, expected_rows, flush_seconds, max_buffered_rows)

    def update_videos(self, *, classes: Sequence[str], labels: np.ndarray, splits: np.ndarray,
                      split_names: Sequence[str]) -> None:
        """Refresh class names, labels and splits from the manifest (on resume)."""
        self._group.attrs["classes"] = list(classes)
        self.classes = list(classes)
        write_videos(self._group, task=self.task, labels=labels, splits=splits,
                     split_names=split_names)
        self.split_names = list(split_names)


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
    with storage_errors(path, "open"):
        return FeatureStore(path, _open_group(path, "r+" if writable else "r"))



"""Creating a feature store, or reopening the same one to resume a run.

A new store is built beside its final path and renamed into place once complete, with the
format marker written last: a process killed while creating leaves no half-made store (at a
URL, where nothing can be renamed, a marker object does that: `pipeline/remote/creation.py`). A
store reopened to resume must have been made for the same dataset and extraction; its rows
are matched to the videos listed now by `resume.relist`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.remote import creation
from pipeline.remote.urls import Location, as_location, is_url
from pipeline.store.feature_store import (
    FeatureStore,
    open_store,
    root_attributes,
    storage_errors,
    store_exists,
    write_videos,
)
from pipeline.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ModalitySpec,
    Split,
    Status,
    StoreError,
)
from pipeline.store.repair import repair_damage
from pipeline.store.resume import FILE_ARRAYS, check_resumable, relist
from pipeline.store.verify import CHECKSUMMED, UNWRITTEN_ERROR, UNWRITTEN_STATUS, find_damage
from pipeline.versions import STORE_PACKAGES, software_versions

MAX_ROWS_PER_SHARD = 1024
MIN_ROWS_PER_SHARD = 64
TARGET_SHARD_BYTES = 128 * 2**20
TARGET_FEATURE_CHUNK_BYTES = 128 * 2**10
MAX_FEATURE_CHUNK_ROWS = 16
SMALL_CHUNK_ROWS = 64
ZARR_TEMPORARY = re.compile(r"zarr\.[0-9a-f]{32}\.partial")  # zarr's LocalStore atomic write


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



def _create_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any, *,
                  chunk_rows: int, shard_rows: int, dims: tuple[str, ...], fill: Any) -> None:
    """Every inner chunk carries a crc32c checksum, so damaged bytes fail to read."""
    inner = tuple(max(1, size) for size in shape[1:])
    group.create_array(name, shape=shape, dtype=dtype, chunks=(chunk_rows, *inner),
                       shards=(shard_rows, *inner), fill_value=fill, dimension_names=dims,
                       compressors=CHECKSUMMED)


def _create_modality(group: zarr.Group, name: str, spec: ModalitySpec, n: int,
                     shard_rows: int) -> None:
    """The arrays of one modality, filled with values no written row holds (NaN features
    and times, status 255, error '(unwritten)'): a chunk missing from disk can never pass
    for a real row (verify.py). Status is written for every row now, so every status chunk
    exists from the start."""
    length, dim = spec.positions, spec.dim
    small = min(SMALL_CHUNK_ROWS, shard_rows)
    _create_array(group, f"{name}/features", (n, length, dim), np.float16,
                  chunk_rows=feature_chunk_rows(length * dim * 2), shard_rows=shard_rows,
                  dims=("video", "position", "channel"), fill=np.nan)
    _create_array(group, f"{name}/mask", (n, length), bool, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video", "position"), fill=False)
    _create_array(group, f"{name}/time", (n, length), np.float32, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video", "position"), fill=np.nan)
    _create_array(group, f"{name}/status", (n,), np.uint8, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video",), fill=UNWRITTEN_STATUS)
    group[f"{name}/status"][:] = np.full(n, Status.PENDING, dtype=np.uint8)
    _create_array(group, f"{name}/error", (n,), str, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video",), fill=UNWRITTEN_ERROR)
    _create_array(group, f"{name}/stream", (n,), np.int16, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video",), fill=-1)


def _check_inputs(task: str, classes: Sequence[str], ids: Sequence[str], labels: Any,
                  splits: Any, split_names: Sequence[str], files: Any
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    files = np.full((n, 2), -1, dtype=np.int64) if files is None else files
    files = np.asarray(files, dtype=np.int64).reshape(n, 2)
    return labels, splits, files


def create_store(path: Location, *, dataset: str, task: str, classes: Sequence[str],
                 ids: Sequence[str], labels: Any = None, splits: Any = None,
                 split_names: Sequence[str] = (), modalities: Mapping[str, ModalitySpec],
                 files: Any = None, overwrite: bool = False, repair: bool = False,
                 progress: bool = False) -> FeatureStore:
    """Create a store, or reopen the same one to resume.

    Same dataset and modality configs: the store is reopened, its rows matched to `ids` by
    id (new videos added, vanished ones marked, changed files reset: `store.relisting` says
    how many), labels, classes and splits refreshed, and only listed rows not yet complete
    need work. Anything else is refused unless `overwrite`, which deletes the old store.
    `labels` is (N,) int (-1 unlabelled) for task "single" and (N, C) bool for "multi";
    `splits` is (N, S); `files` is (N, 2) int64 file size and mtime_ns (-1 = unknown).
    A store reopened is first checked for damage (every chunk decoded with `repair`, a
    progress bar with `progress`) and its damaged rows made pending: `store.repaired` says
    which. That comes before any resume write, which could otherwise have to merge into a
    damaged chunk.
    """
    path = as_location(path)
    labels, splits, files = _check_inputs(task, classes, ids, labels, splits, split_names,
                                          files)
    wanted = {name: ModalitySpec(spec.positions, spec.dim, _jsonable(spec.config))
              for name, spec in modalities.items()}
    with storage_errors(path, "create feature store at"):
        if is_url(path) and creation.interrupted(str(path)):
            creation.clear_interrupted(str(path))
        if store_exists(path) and overwrite:
            if is_url(path):
                creation.remove_store(str(path))
            else:
                _remove_store(Path(path))
        if store_exists(path):
            return _resume(path, dataset=dataset, task=task, classes=classes, ids=ids,
                           labels=labels, splits=splits, split_names=split_names,
                           files=files, modalities=wanted, repair=repair, progress=progress)
        return _create_new(path, dataset=dataset, task=task, classes=classes, ids=ids,
                           labels=labels, splits=splits, split_names=split_names,
                           files=files, modalities=wanted)


def _remove_store(path: Path) -> None:
    """Delete the store at `path` for --overwrite, even a damaged one, but never a folder
    that may hold anything else: the root zarr.json must exist and either name this format,
    or (unreadable, or naming no format) sit in a folder holding nothing but Zarr files."""
    refusal = f"--overwrite deletes only a feature store, so {path} was not deleted"
    if not path.is_dir() or not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not an attention-clusters feature store (no zarr.json): "
                         f"{refusal}")
    try:
        named = root_attributes(path).get("format")
    except StoreError:
        named = None
    if named is not None and named != FORMAT_NAME:
        raise StoreError(f"{path} holds a Zarr store of another format ({named!r}): {refusal}")
    if named is None:
        foreign = next((p for p in sorted(path.rglob("*")) if not _is_zarr_file(path, p)), None)
        if foreign is not None:
            raise StoreError(f"{path} has no readable feature-store metadata and holds "
                             f"{foreign.relative_to(path)}, which Zarr did not write: "
                             f"{refusal}")
    shutil.rmtree(path)


def _is_zarr_file(root: Path, path: Path) -> bool:
    """A folder, a zarr.json, a chunk/shard file (under an array's `c/` folder), or the
    temporary file of a zarr.json write that was killed (`zarr.<32 hex>.partial`)."""
    parts = path.relative_to(root).parts
    return (path.is_dir() or path.name == "zarr.json" or "c" in parts[:-1]
            or ZARR_TEMPORARY.fullmatch(path.name) is not None)


def _resume(path: Location, *, dataset: str, task: str, classes: Sequence[str],
            ids: Sequence[str], labels: np.ndarray, splits: np.ndarray,
            split_names: Sequence[str], files: np.ndarray,
            modalities: Mapping[str, ModalitySpec], repair: bool, progress: bool
            ) -> FeatureStore:
    old = open_store(path, writable=True)
    check_resumable(old, dataset=dataset, task=task, classes=classes, modalities=modalities)
    damage = find_damage(old, full=repair, progress=progress)
    if damage.damaged:
        repair_damage(old, damage)
    group = zarr.open_group(path, mode="r+")
    _add_video_arrays(group, group["videos/id"].shape[0], old.rows_per_shard)
    relisting = relist(old, group, ids=ids, files=files, labels=labels, splits=splits,
                       split_names=split_names, classes=classes)
    group.attrs["format_version"] = FORMAT_VERSION  # the v2 arrays exist now
    store = FeatureStore(path, group)
    store.relisting = relisting
    store.repaired = damage if damage.damaged else None
    return store


def _add_video_arrays(group: zarr.Group, n: int, shard_rows: int) -> None:
    """The per-video arrays format 2 adds, where missing (a v1 store, or a new one):
    recorded file size and mtime (-1 = unknown) and whether the last run listed the video."""
    small = min(SMALL_CHUNK_ROWS, shard_rows)
    present = set(group["videos"].array_keys())
    for name, dtype, fill in ((FILE_ARRAYS[0], np.int64, -1), (FILE_ARRAYS[1], np.int64, -1),
                              ("videos/listed", bool, True)):
        if name.split("/")[1] not in present:
            _create_array(group, name, (n,), dtype, chunk_rows=small, shard_rows=shard_rows,
                          dims=("video",), fill=fill)


def _create_new(path: Location, *, dataset: str, task: str, classes: Sequence[str],
                ids: Sequence[str], labels: np.ndarray, splits: np.ndarray,
                split_names: Sequence[str], files: np.ndarray,
                modalities: Mapping[str, ModalitySpec]) -> FeatureStore:
    n = len(ids)
    row_bytes = max([spec.positions * spec.dim * 2 for spec in modalities.values()] or [1])
    shard_rows = rows_per_shard(row_bytes)
    small = min(SMALL_CHUNK_ROWS, shard_rows)
    # Built beside its final path and renamed into place once complete: a process killed
    # while creating leaves only the partial folder (removed by the next attempt), never a
    # half-made store at `path` that every rerun, even with --overwrite, would refuse.
    if is_url(path):
        creation.begin(str(path))
        partial: Any = path
    else:
        partial = partial_path(Path(path))
        if partial.exists():
            shutil.rmtree(partial)
    # at a URL the prefix was found empty but for the marker, which "w-" would count as data
    group = zarr.open_group(partial, mode="a" if is_url(path) else "w-", zarr_format=3)
    _create_array(group, "videos/id", (n,), str, chunk_rows=small, shard_rows=shard_rows,
                  dims=("video",), fill="")
    if task == "single":
        _create_array(group, "videos/label", (n,), np.int32, chunk_rows=small,
                      shard_rows=shard_rows, dims=("video",), fill=-1)
    else:
        _create_array(group, "videos/labels", (n, len(classes)), bool, chunk_rows=small,
                      shard_rows=shard_rows, dims=("video", "class"), fill=False)
    _create_array(group, "videos/split", (n, len(split_names)), np.uint8, chunk_rows=small,
                  shard_rows=shard_rows, dims=("video", "split"), fill=Split.UNUSED)
    group["videos/id"][:] = np.asarray(list(ids), dtype=str)
    write_videos(group, task=task, labels=labels, splits=splits, split_names=split_names)
    _add_video_arrays(group, n, shard_rows)
    for column, name in enumerate(FILE_ARRAYS):
        group[name][:] = files[:, column]
    for name, spec in modalities.items():
        _create_modality(group, name, spec, n, shard_rows)
    # The format marker goes last: a store interrupted while being created is not a store.
    group.attrs.update({
        "dataset": dataset, "task": task, "classes": list(classes),
        "modalities": {name: spec.config for name, spec in modalities.items()},
        "software": software_versions(STORE_PACKAGES),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
    })
    if is_url(path):
        creation.finish(str(path))
    else:
        os.replace(partial, path)
    return FeatureStore(path, zarr.open_group(path, mode="r+"))


def partial_path(path: Path) -> Path:
    """Where a new store is built before it is renamed to `path`."""
    return path.with_name(f".{path.name}.partial")



"""Creating a feature store, or reopening the same one to resume a run.

A new store is built beside its final path and renamed into place once complete, with the
format marker written last: a process killed while creating leaves no half-made store. A
store reopened to resume must have been made for the same dataset, videos and extraction.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.store.feature_store import FeatureStore, open_store, storage_errors, write_videos
from pipeline.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ModalitySpec,
    Split,
    Status,
    StoreError,
)
from pipeline.versions import STORE_PACKAGES, software_versions

MAX_ROWS_PER_SHARD = 1024
MIN_ROWS_PER_SHARD = 64
TARGET_SHARD_BYTES = 128 * 2**20
TARGET_FEATURE_CHUNK_BYTES = 128 * 2**10
MAX_FEATURE_CHUNK_ROWS = 16
SMALL_CHUNK_ROWS = 64


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



def first_difference(old: Any, new: Any, where: str = "") -> str:
    """Name the first setting that differs, e.g. 'backend torch vs opencv'."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in old:
                return f"{name} not set vs {new[key]!r}"
            if key not in new:
                return f"{name} {old[key]!r} vs not set"
            if old[key] != new[key]:
                return first_difference(old[key], new[key], name)
        return ""
    label = where or "value"
    plain = (str, int, float, bool)
    if isinstance(old, plain) and isinstance(new, plain):
        return f"{label} {old} vs {new}"
    return f"{label} {old!r} vs {new!r}"



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
    with storage_errors(path, "create feature store at"):
        if path.exists() and overwrite:
            open_store(path)  # refuses anything that is not a feature store
            shutil.rmtree(path)
        if path.exists():
            store = open_store(path, writable=True)
            _check_resumable(store, dataset=dataset, task=task, ids=ids, classes=classes,
                             modalities=wanted)
            store.update_videos(classes=classes, labels=labels, splits=splits,
                                split_names=split_names)
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
                             f"'{name}' ({first_difference(old.config, spec.config)}): "
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
                  shard_rows=shard_rows, dims=("video", "split"), fill=Split.UNUSED)
    group["videos/id"][:] = np.asarray(list(ids), dtype=str)
    write_videos(group, task=task, labels=labels, splits=splits, split_names=split_names)
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
    os.replace(partial, path)
    return FeatureStore(path, zarr.open_group(path, mode="r+"))


def partial_path(path: Path) -> Path:
    """Where a new store is built before it is renamed to `path`."""
    return path.with_name(f".{path.name}.partial")



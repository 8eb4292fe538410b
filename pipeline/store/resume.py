"""Reopening a store for a rerun: refuse what cannot be resumed, and match its rows to the
videos listed now, keeping every finished row whose video is still there and unchanged.

The list of videos may change between runs (a file vanished or was added, `--limit`
changed). Rows are matched by video id, never by position: a new video gets a new row at the
end, a vanished one keeps its row and data but is marked unlisted (every split UNUSED, never
recomputed), and a row whose file changed size or mtime is reset to pending. The writes are
ordered so that a crash at any point leaves a store that opens and resumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from pipeline.store.feature_store import FeatureStore, write_videos
from pipeline.store.format import COMPLETE, ModalitySpec, Split, Status, StoreError
from pipeline.store.verify import rewrite_array

ADVICE = "use --overwrite or another --out"
FILE_ARRAYS = ("videos/size", "videos/mtime_ns")  # (N,) int64 each, -1 = unknown


@dataclass(frozen=True)
class Relisting:
    """What reopening a store did to its rows for the videos listed now."""

    kept: int  # finished rows of listed, unchanged videos: reused, not recomputed
    added: int  # videos the store did not hold: new rows at the end
    vanished: int  # rows of videos not listed now: kept in the store, never used or recomputed
    changed: int  # rows whose file changed size or mtime: reset to pending, recomputed

    def describe(self) -> str:
        """One line for `features`, e.g. 'resumed: 10 finished videos kept, 2 added, ...'."""
        return (f"resumed: {self.kept} finished videos kept, {self.added} added, "
                f"{self.vanished} vanished (kept in the store, not used), {self.changed} "
                f"changed on disk (recomputed)")


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


def check_resumable(store: FeatureStore, *, dataset: str, task: str, classes: Sequence[str],
                    modalities: Mapping[str, ModalitySpec]) -> None:
    """Refuse another dataset, task, modality set or extraction; other videos are fine."""
    if store.dataset != dataset or store.task != task:
        raise StoreError(f"{store.path} holds dataset '{store.dataset}' ({store.task}-label), "
                         f"not '{dataset}' ({task}-label): {ADVICE}")
    if task == "multi" and len(classes) != len(store.classes):
        raise StoreError(f"{store.path} has {len(store.classes)} classes, not {len(classes)}: "
                         f"{ADVICE}")
    if set(store.modalities) != set(modalities):
        raise StoreError(f"{store.path} holds modalities {sorted(store.modalities)}, not "
                         f"{sorted(modalities)}: {ADVICE}")
    for name, spec in modalities.items():
        old = store.modalities[name]
        if (old.positions, old.dim) != (spec.positions, spec.dim):
            raise StoreError(f"{store.path} stores '{name}' as {old.positions}x{old.dim}, not "
                             f"{spec.positions}x{spec.dim}: {ADVICE}")
        if old.config != spec.config:
            raise StoreError(f"{store.path} was made with a different extraction config for "
                             f"'{name}' ({first_difference(old.config, spec.config)}): "
                             f"{ADVICE}")


def recorded_files(group: zarr.Group, n: int) -> np.ndarray:
    """(n, 2) int64 size and mtime_ns recorded for the first n rows; -1 where unknown."""
    return np.stack([group[name][:n] for name in FILE_ARRAYS], axis=1).astype(np.int64)


def relist(store: FeatureStore, group: zarr.Group, *, ids: Sequence[str], files: np.ndarray,
           labels: np.ndarray, splits: np.ndarray, split_names: Sequence[str],
           classes: Sequence[str]) -> Relisting:
    """Match the store's rows to the videos listed now (`ids` and their `files`, labels and
    splits in manifest order) and write what changed; `group` is the store's, writable.

    Order of the writes, each safe to be the last one: changed rows reset to pending; every
    array grown to the new row count with the new rows pending; `videos/id` grown and
    written (the rows now exist); labels, splits, listed flags and file stats.
    """
    n_old = store.n
    index = {video_id: row for row, video_id in enumerate(store.ids)}
    rows = np.array([index.get(video_id, -1) for video_id in ids], dtype=np.int64)
    new = rows < 0
    rows[new] = n_old + np.arange(int(new.sum()))
    n = n_old + int(new.sum())
    old = rows[~new]
    recorded, now = recorded_files(group, n_old)[old], files[~new]
    changed = old[((recorded >= 0) & (now >= 0)).all(axis=1) & (recorded != now).any(axis=1)]
    statuses = np.array([store.status(m) for m in store.modalities]).reshape(-1, n_old).T
    reset = changed[(statuses[changed] != Status.PENDING).any(axis=1)]
    for name in store.modalities:
        store.mark_pending(name, reset)
    _grow(store, group, n, [str(ids[i]) for i in np.flatnonzero(new)])
    listed = np.zeros(n, dtype=bool)
    listed[rows] = True
    _write_videos(store, group, rows, n, labels=labels, splits=splits, split_names=split_names,
                  files=files, listed=listed)
    group.attrs["classes"] = list(classes)
    finished = np.isin(statuses, COMPLETE).all(axis=1)
    finished[reset] = False
    return Relisting(kept=int(finished[old].sum()), added=int(new.sum()),
                     vanished=int((~listed).sum()), changed=len(reset))


def _grow(store: FeatureStore, group: zarr.Group, n: int, new_ids: list[str]) -> None:
    """Every array to `n` rows, the new rows pending, then `videos/id` last: stopped half
    way, the store still opens with its old rows (the readers ignore rows past the ids)."""
    names = [f"videos/{name}" for name in group["videos"].array_keys() if name != "id"]
    names += [f"{modality}/{name}" for modality in store.modalities
              for name in group[modality].array_keys()]
    for name in names:
        array = group[name]
        if array.shape[0] != n:
            array.resize((n, *array.shape[1:]))
    if n > store.n:  # stale rows of an earlier, interrupted growth: pending again
        for modality in store.modalities:
            group[f"{modality}/status"][store.n:n] = Status.PENDING
    ids = group["videos/id"]
    if ids.shape[0] != n:
        ids.resize((n,))
    if new_ids:
        ids[store.n:n] = np.asarray(new_ids, dtype=str)


def _write_videos(store: FeatureStore, group: zarr.Group, rows: np.ndarray, n: int, *,
                  labels: np.ndarray, splits: np.ndarray, split_names: Sequence[str],
                  files: np.ndarray, listed: np.ndarray) -> None:
    """Per-row video arrays for every row: listed rows from the manifest; vanished ones keep
    their label and file stats, and are UNUSED in every split so no reader trains on them."""
    label_name = "videos/label" if store.task == "single" else "videos/labels"
    all_labels = group[label_name][:n]
    all_labels[rows] = labels
    all_splits = np.full((n, len(split_names)), Split.UNUSED, dtype=np.uint8)
    all_splits[rows] = splits
    if group["videos/split"].shape[1] != len(split_names):
        group["videos/split"].resize(all_splits.shape)
    write_videos(group, task=store.task, labels=all_labels, splits=all_splits,
                 split_names=split_names)
    all_files = recorded_files(group, n)
    all_files[rows] = files
    for column, name in enumerate(FILE_ARRAYS):
        rewrite_array(group[name], all_files[:, column])
    rewrite_array(group["videos/listed"], listed)

"""Read a feature store (format v1, DESIGN.md) for training and evaluation.

Splits are 1-based, as users and the official UCF101/HMDB51 lists name them (`--split 1` is
column 0 of `videos/split`). A row is used when every chosen modality is `done` or `absent`
and at least one is `done`; rows that are pending or failed in any chosen modality, rows
absent everywhere and unlabelled rows are excluded and counted.

Two ways to serve batches, same interface (`batches(batch_size, shuffle, seed)`):
- `InMemoryFeatures`: the selected rows loaded once as float16 (half the memory of float32);
  each batch is converted to float32 only on the device that computes it.
- `StreamedFeatures`: rows read from Zarr in chunk-aligned blocks by a DataLoader worker,
  blocks in shuffled order and rows shuffled within a block, so memory stays bounded by a
  few blocks whatever the store size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from extract.errors import UserError
from pipeline.remote.urls import Location, as_location
from pipeline.store.feature_store import FeatureStore, open_store
from pipeline.store.format import Split, Status
from pipeline.store.lock import refuse_while_written

BLOCK_BYTES = 64 * 2**20  # target size of one streamed block across modalities

# (features (B, L, D) float16, mask (B, L) bool, present (B,) bool) per modality, and labels.
Batch = tuple[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor]
BlockArrays = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class RowCounts:
    """Why rows were left out of one part of a split."""

    used: int = 0
    pending: int = 0
    failed: int = 0
    all_absent: int = 0
    unlabelled: int = 0


@dataclass
class SplitData:
    """Batch sources of the parts of one split, with what was excluded and why."""

    store: FeatureStore
    split: int
    modalities: list[str]
    parts: dict[Split, InMemoryFeatures | StreamedFeatures]
    counts: dict[str, RowCounts] = field(default_factory=dict)
    streamed: bool = False
    classes_present: dict[Split, int] = field(default_factory=dict)  # classes with a row

    @property
    def train(self) -> InMemoryFeatures | StreamedFeatures:
        return self.parts[Split.TRAIN]

    @property
    def test(self) -> InMemoryFeatures | StreamedFeatures:
        return self.parts[Split.TEST]


def open_for_training(store: str | Path | FeatureStore) -> FeatureStore:
    """The store, opened (and validated) unless it already is, with at least one class."""
    if not isinstance(store, FeatureStore):
        refuse_while_written(as_location(store), "train or evaluate on it")
    opened = store if isinstance(store, FeatureStore) else open_store(store)
    if not opened.classes:
        raise UserError(f"{opened.path}: the store lists no classes")
    return opened


def check_modalities(store: FeatureStore, modalities: list[str] | None) -> list[str]:
    """The chosen modalities (all of the store's by default), each known to the store."""
    if not modalities:
        if not store.modalities:
            raise UserError(f"{store.path}: the store has no modality with features")
        return list(store.modalities)
    for name in modalities:
        if name not in store.modalities:
            known = ", ".join(store.modalities) or "none"
            raise UserError(f"unknown modality '{name}' in {store.path} (available: {known})")
    return list(modalities)


def check_split(store: FeatureStore, split: int) -> None:
    """Splits are numbered 1..S."""
    if not 1 <= split <= store.num_splits:
        raise UserError(
            f"split {split} does not exist in {store.path}: it has "
            f"{store.num_splits} split(s), numbered 1 to {store.num_splits}"
        )


def read_labels(store: FeatureStore) -> np.ndarray:
    """(N,) int64 class ids (-1 unlabelled) or (N, C) float32 0/1 targets."""
    dtype = np.int64 if store.task == "single" else np.float32
    return np.asarray(store.labels, dtype=dtype)


def select_rows(
    roles: np.ndarray,
    statuses: np.ndarray,
    part: Split,
    labels: np.ndarray,
) -> tuple[np.ndarray, RowCounts]:
    """Sorted row indices of one part (TRAIN or TEST) of a split, and what was left out.

    `roles` (N,) is the split's column of `videos/split`, `statuses` (N, M) the chosen
    modalities' status columns.
    """
    in_part = roles == part
    pending = (statuses == Status.PENDING).any(axis=1)
    failed = (statuses == Status.FAILED).any(axis=1) & ~pending
    usable = ~pending & ~failed
    all_absent = usable & (statuses == Status.ABSENT).all(axis=1)
    labelled = labels >= 0 if labels.ndim == 1 else np.ones(len(labels), dtype=bool)
    keep = in_part & usable & ~all_absent & labelled
    counts = RowCounts(
        used=int(keep.sum()),
        pending=int((in_part & pending).sum()),
        failed=int((in_part & failed).sum()),
        all_absent=int((in_part & all_absent).sum()),
        unlabelled=int((in_part & usable & ~all_absent & ~labelled).sum()),
    )
    return np.flatnonzero(keep), counts


def row_bytes(store: FeatureStore, modalities: list[str]) -> int:
    """Bytes one row takes in memory: float16 features plus the mask."""
    specs = [store.modalities[m] for m in modalities]
    return sum(spec.positions * (spec.dim * 2 + 1) for spec in specs)


def block_ranges(store: FeatureStore, modalities: list[str]) -> list[tuple[int, int]]:
    """Chunk-aligned [start, stop) row ranges of about BLOCK_BYTES each."""
    unit = math.lcm(*(store.chunk_rows(m) for m in modalities))
    rows = max(unit, (BLOCK_BYTES // max(row_bytes(store, modalities), 1)) // unit * unit)
    return [(start, min(start + rows, store.n)) for start in range(0, store.n, rows)]


def read_block(
    store: FeatureStore,
    modalities: list[str],
    start: int,
    stop: int,
    local_rows: np.ndarray,
) -> BlockArrays:
    """Rows `start + local_rows` of each modality: float16 features, mask, present."""
    block = {}
    for name in modalities:
        features, mask = store.read(name, slice(start, stop), fields=("features", "mask"))
        block[name] = (
            features[local_rows].astype(np.float16, copy=False),
            mask[local_rows].astype(bool),
            store.status(name)[start + local_rows] == Status.DONE,
        )
    return block


def blocks_of(store: FeatureStore, modalities: list[str], rows: np.ndarray
              ) -> list[tuple[int, int, np.ndarray]]:
    """(start, stop, rows inside as offsets from start) of every block that holds some rows."""
    blocks = []
    for start, stop in block_ranges(store, modalities):
        local = rows[(rows >= start) & (rows < stop)] - start
        if len(local):
            blocks.append((start, stop, local))
    return blocks


class InMemoryFeatures:
    """Selected rows held as float16 tensors; batches are index views, converted on device."""

    def __init__(
        self,
        store: FeatureStore,
        modalities: list[str],
        rows: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        self.labels = torch.from_numpy(labels[rows])
        self.rows = rows
        self.data: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name in modalities:
            spec = store.modalities[name]
            self.data[name] = (
                torch.empty((len(rows), spec.positions, spec.dim), dtype=torch.float16),
                torch.empty((len(rows), spec.positions), dtype=torch.bool),
                torch.empty(len(rows), dtype=torch.bool),
            )
        # Read block by block so the transient memory is one block, not the whole store.
        filled = 0
        for start, stop, local in blocks_of(store, modalities, rows):
            block = read_block(store, modalities, start, stop, local)
            for name, arrays in block.items():
                for target, source in zip(self.data[name], arrays, strict=True):
                    target[filled : filled + len(local)] = torch.from_numpy(source)
            filled += len(local)

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        order = (
            torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            inputs = {name: tuple(t[index] for t in arrays) for name, arrays in self.data.items()}
            yield inputs, self.labels[index]


class BlockStream(IterableDataset):
    """Batches of one epoch, read block by block from Zarr inside a DataLoader worker."""

    def __init__(
        self,
        path: Location,
        modalities: list[str],
        blocks: list[tuple[int, int, np.ndarray]],
        labels: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        self.path, self.modalities, self.blocks = path, modalities, blocks
        self.labels, self.batch_size, self.shuffle, self.seed = labels, batch_size, shuffle, seed

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(self.blocks)) if self.shuffle else np.arange(len(self.blocks))
        store = open_store(self.path)
        carry: tuple[BlockArrays, np.ndarray] | None = None
        for position, block_index in enumerate(order):
            if position % workers != worker_id:
                continue
            start, stop, local = self.blocks[block_index]
            if self.shuffle:
                local = local[rng.permutation(len(local))]
            arrays, rows = read_block(store, self.modalities, start, stop, local), local + start
            if carry is not None:
                arrays = {
                    name: tuple(
                        np.concatenate([old, new])
                        for old, new in zip(carry[0][name], arrays[name], strict=True)
                    )
                    for name in arrays
                }
                rows = np.concatenate([carry[1], rows])
            full = len(rows) // self.batch_size * self.batch_size
            for first in range(0, full, self.batch_size):
                yield self.batch(arrays, rows, first, first + self.batch_size)
            carry = None
            if full < len(rows):  # a short remainder joins the next block
                carry = ({n: tuple(a[full:] for a in t) for n, t in arrays.items()}, rows[full:])
        if carry is not None:
            yield self.batch(carry[0], carry[1], 0, len(carry[1]))

    def batch(self, arrays: BlockArrays, rows: np.ndarray, first: int, last: int) -> Batch:
        """Rows first..last of a block as tensors, with their labels."""
        inputs = {
            name: tuple(torch.from_numpy(np.ascontiguousarray(a[first:last])) for a in t)
            for name, t in arrays.items()
        }
        return inputs, torch.from_numpy(self.labels[rows[first:last]])


def quiet_worker(_: int) -> None:
    """One torch thread per loader worker: the main process computes, the worker reads."""
    torch.set_num_threads(1)


class StreamedFeatures:
    """Rows of one part streamed from the store; memory holds a few blocks at a time."""

    def __init__(
        self,
        store: FeatureStore,
        modalities: list[str],
        rows: np.ndarray,
        labels: np.ndarray,
        num_workers: int = 1,
    ) -> None:
        self.path, self.modalities, self.labels = store.path, modalities, labels
        self.rows, self.num_workers = rows, num_workers
        self.blocks = blocks_of(store, modalities, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        stream = BlockStream(
            self.path, self.modalities, self.blocks, self.labels, batch_size, shuffle, seed
        )
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=2 if self.num_workers else None,
            worker_init_fn=quiet_worker,
            persistent_workers=False,
        )
        yield from loader


def memory_budget_bytes(budget_gb: float | None) -> int:
    """The user's budget, or half of the memory available right now."""
    if budget_gb is not None:
        return int(budget_gb * 2**30)
    return int(psutil.virtual_memory().available * 0.5)


def load_part(
    store: str | Path | FeatureStore,
    split: int,
    modalities: list[str] | None,
    part: Split,
    memory_budget_gb: float | None = None,
    streaming: str = "auto",
    num_workers: int = 1,
) -> tuple[FeatureStore, InMemoryFeatures | StreamedFeatures, RowCounts]:
    """One part (TRAIN or TEST) of a split alone, e.g. the test rows for evaluation."""
    data = load_split(store, split, modalities, memory_budget_gb, streaming, num_workers,
                      parts=(part,))
    return data.store, data.parts[part], data.counts[part.label]


def use_streaming(streaming: str, needed_bytes: int, memory_budget_gb: float | None) -> bool:
    """'on', 'off', or 'auto': stream when the rows do not fit the memory budget."""
    if streaming not in ("auto", "on", "off"):
        raise UserError(f"streaming must be auto, on or off (got {streaming!r})")
    if streaming == "auto":
        return needed_bytes > memory_budget_bytes(memory_budget_gb)
    return streaming == "on"


def load_split(
    store: str | Path | FeatureStore,
    split: int = 1,
    modalities: list[str] | None = None,
    memory_budget_gb: float | None = None,
    streaming: str = "auto",
    num_workers: int = 1,
    parts: tuple[Split, ...] = (Split.TRAIN, Split.TEST),
) -> SplitData:
    """Batch sources of a 1-based split's parts (train and test unless told otherwise).

    streaming: 'auto' (in memory when the rows of all parts fit the budget), 'on' or 'off'.
    """
    store = open_for_training(store)
    modalities = check_modalities(store, modalities)
    check_split(store, split)
    labels = read_labels(store)
    roles = store.splits[:, split - 1]
    statuses = np.stack([store.status(m) for m in modalities], axis=1)
    selected = {part: select_rows(roles, statuses, part, labels) for part in parts}
    for part, (rows, counts) in selected.items():
        if len(rows) == 0:
            name = "training" if part == Split.TRAIN else "test"
            raise UserError(
                f"split {split} of {store.path} has no usable {name} rows with modalities "
                f"{', '.join(modalities)} ({describe_exclusions(counts)})"
            )
    needed = sum(len(rows) for rows, _ in selected.values()) * row_bytes(store, modalities)
    streamed = use_streaming(streaming, needed, memory_budget_gb)
    sources = {
        part: StreamedFeatures(store, modalities, rows, labels, num_workers) if streamed
        else InMemoryFeatures(store, modalities, rows, labels)
        for part, (rows, _) in selected.items()
    }
    return SplitData(
        store=store,
        split=split,
        modalities=modalities,
        parts=sources,
        counts={part.label: counts for part, (_, counts) in selected.items()},
        streamed=streamed,
        classes_present={part: count_classes(labels[rows]) for part, (rows, _) in selected.items()},
    )


def count_classes(labels: np.ndarray) -> int:
    """How many classes have at least one row: (n,) class ids or (n, C) 0/1 targets."""
    if labels.ndim == 1:
        return len(np.unique(labels[labels >= 0]))
    return int((labels > 0).any(axis=0).sum())


def describe_exclusions(counts: RowCounts) -> str:
    """'3 pending, 1 failed, ...' for an error or a log line."""
    return (
        f"{counts.pending} pending, {counts.failed} failed, "
        f"{counts.all_absent} absent in every modality, {counts.unlabelled} unlabelled"
    )

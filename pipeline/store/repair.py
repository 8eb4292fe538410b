"""Repairing a damaged store: the damaged rows marked pending, their chunks rewritten.

`verify.find_damage` says which chunks are damaged and which rows they cost; here those rows
become pending (the `features` run then recomputes them, and only them) and each damaged
shard is written anew from its readable chunks, so later writes never need to decode the
damaged bytes. docs/store-format.md, "Damage detection".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.store.format import Status, StoreError
from pipeline.store.verify import (
    DECODE_ERRORS,
    MISSING,
    Damage,
    DamageReport,
    damage_message,
    delete_shard,
    shard_rows,
)

if TYPE_CHECKING:
    from pipeline.store.feature_store import FeatureStore


def _rebuild_shard(store: FeatureStore, name: str, shard: int) -> None:
    """Rewrite one shard file of `name` from its readable chunks, fill where a chunk is
    damaged (status: pending). The file is removed first: zarr would decode the damaged
    chunk to merge a write that does not cover it whole."""
    array = store.array(name)
    per_shard, chunk = shard_rows(array)
    start, stop = shard * per_shard, min(array.shape[0], (shard + 1) * per_shard)
    try:
        values = array[start:stop]
    except DECODE_ERRORS:
        values = np.full((stop - start, *array.shape[1:]), array.fill_value, dtype=array.dtype)
        for a in range(start, stop, chunk):
            try:
                values[a - start:a - start + chunk] = array[a:min(a + chunk, stop)]
            except DECODE_ERRORS:
                continue
    if name.endswith("/status"):
        values[values == array.fill_value] = Status.PENDING
    delete_shard(array, shard)
    array[start:stop] = values


def _shards_of(store: FeatureStore, damage: Damage) -> range:
    per_shard, _ = shard_rows(store.array(damage.array))
    return range(damage.start // per_shard, (damage.stop - 1) // per_shard + 1)


def repair_damage(store: FeatureStore, report: DamageReport) -> None:
    """Make the damaged rows pending, in order: damaged status shards rebuilt (their lost
    rows pending), damaged rows marked pending, then the damaged data chunks cleared. A crash
    part way leaves rows pending or still reported damaged, never damaged and done."""
    if any(d.array == "videos/id" for d in report.damages):
        raise StoreError(damage_message(store.path, report.damages))
    rebuild = sorted({(d.array, shard) for d in report.damages
                      if d.reason != MISSING or d.array.endswith("/status")
                      for shard in _shards_of(store, d)})
    for name, shard in rebuild:
        if name.endswith("/status"):
            _rebuild_shard(store, name, shard)
    for name, rows in report.affected.items():
        if name != "videos":
            store.mark_pending(name, rows)
    for name, shard in rebuild:
        if not name.endswith("/status"):
            _rebuild_shard(store, name, shard)

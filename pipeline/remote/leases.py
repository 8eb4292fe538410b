"""Blocks of rows claimed by cooperating `features` runs, and one writer per shard at a time.

Several runs (other machines, each its own Dask cluster or none) fill one store: each claims
a block of rows with a lease object `.<name>.leases/block-<n>` beside the store, made with
create-if-absent and kept alive by a heartbeat, computes the block's pending rows and releases
the lease once they are written. A run killed stops refreshing; its leases expire after
`lease_s` (at once for a dead process of this host) and another run takes them over, with
replace-if-unchanged so that only one does. Writing rows rewrites their shard, so a write
also holds the shard's short lease `write-<shard>`: two blocks of one shard never undo each
other's rows. Same objects as the store's lock (`object_lock.py`); also on a shared disk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.remote import object_lock, objects
from pipeline.remote.object_lock import Heartbeat
from pipeline.remote.urls import Location, is_url, join

WRITE_POLL_S = 0.05


def leases_url(store: Location) -> str:
    """`.<name>.leases` beside the store (on disk: beside its real location, as the lock)."""
    where = str(store) if is_url(store) else str(Path(store).resolve())
    parent, _, name = where.rstrip("/").rpartition("/")
    return join(parent, f".{name}.leases")


class Leases:
    """The leases this run holds on one store's blocks of rows."""

    def __init__(self, store: Location, holder: Any, lease_s: float,
                 alive: Callable[[dict[str, Any]], bool]) -> None:
        self.root = leases_url(store)
        self.holder, self.lease_s, self.alive = holder, lease_s, alive
        self._held: dict[int, Heartbeat] = {}

    def _url(self, kind: str, number: int) -> str:
        return join(self.root, f"{kind}-{number:06d}")

    def take(self, block: int) -> bool:
        """Claim `block` if no live run holds it (a dead run's lease is taken over)."""
        url = self._url("block", block)
        etag, _ = object_lock.take(url, self.holder, self.lease_s, self.alive)
        if etag is None:
            return False
        self._held[block] = Heartbeat(url, etag, self.holder, self.lease_s)
        return True

    def holds(self, block: int) -> bool:
        """Whether this run still holds `block`, checked on the store now (False once a stall
        let another run take it over)."""
        beat = self._held.get(block)
        return beat is not None and beat.still_held()

    def release(self, block: int) -> None:
        beat = self._held.pop(block, None)
        if beat is not None:
            object_lock.release(beat)

    def close(self) -> None:
        for block in list(self._held):
            self.release(block)

    def live_others(self) -> set[int]:
        """Blocks that live runs other than this one hold now."""
        return set(live_blocks(self.root, self.alive)) - set(self._held)

    @contextlib.contextmanager
    def writing(self, shard: int) -> Iterator[None]:
        """Hold the write lease of `shard` while rows of it are written (waits its turn)."""
        url = self._url("write", shard)
        while True:
            etag, _ = object_lock.take(url, self.holder, self.lease_s, self.alive)
            if etag is not None:
                break
            time.sleep(WRITE_POLL_S)
        with object_lock.held(url, self.holder, etag, self.lease_s):
            yield


def live_blocks(root: str, alive: Callable[[dict[str, Any]], bool]) -> dict[int, dict]:
    """{block: record} of every lease under `root` that a live run holds."""
    found = {}
    for name in objects.files_under(root):
        if not name.startswith("block-"):
            continue
        entry = objects.read(join(root, name))
        try:
            fields = object_lock.decode(entry[0]) if entry else None
        except ValueError:
            continue
        if fields and not object_lock.is_dead(fields, alive):
            found[int(name.removeprefix("block-"))] = fields
    return found

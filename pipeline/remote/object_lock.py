"""One run per store on object storage: a lock object with an expiry that its run refreshes.

Beside the store as `.<name>.lock`, like the lock file on disk, with the same record (host,
pid, start time, command) plus `expires`. Taken with create-if-absent; a live run refreshes
`expires` every third of the lease with replace-if-unchanged, so a run that lost it (it was
stalled past the expiry and another took over) finds out and stops writing (`check`). The
kernel cannot drop the lock of a killed run here, so a record counts as dead once it has
expired, or at once when it names a dead process of this host: a kill -9 and rerun on one
machine resumes without waiting, like on disk.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from pipeline.remote import objects
from pipeline.remote.objects import Conflict
from pipeline.remote.urls import join

LEASE_SECONDS = 60.0


def lock_url(store: str) -> str:
    parent, _, name = store.rstrip("/").rpartition("/")
    return join(parent, f".{name}.lock")


def encode(holder: Any, lease_s: float) -> bytes:
    return json.dumps({**asdict(holder), "expires": time.time() + lease_s}).encode()


def decode(content: bytes) -> dict[str, Any]:
    fields = json.loads(content)
    if not isinstance(fields, dict):
        raise ValueError("not a lock record")
    return fields


def is_dead(fields: dict[str, Any], alive: Callable[[dict[str, Any]], bool]) -> bool:
    """Whether a record no longer stands for a live run: expired, or a dead local process."""
    return float(fields.get("expires", 0)) < time.time() or not alive(fields)


class Heartbeat:
    """Keeps one object's `expires` in the future while its run lives; `lost` once it failed."""

    def __init__(self, url: str, etag: str, holder: Any, lease_s: float) -> None:
        self.url, self.etag, self.holder, self.lease_s = url, etag, holder, lease_s
        self.lost = False
        self._lock = threading.Lock()  # a renewal and a `still_held` check never interleave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"lease {url.rpartition('/')[2]}")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                try:
                    self.etag = objects.replace(self.url, encode(self.holder, self.lease_s),
                                                self.etag)
                except Conflict:
                    self.lost = True
                    return
                except Exception:  # a network blip: retried at the next beat, before expiry
                    continue

    def still_held(self) -> bool:
        """Whether the object is still the one this run last wrote, read now: a run frozen
        past the expiry learns that another took it over before it writes anything."""
        with self._lock:
            if not self.lost:
                found = objects.read(self.url)
                self.lost = found is None or found[1] != self.etag
            return not self.lost

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def take(url: str, holder: Any, lease_s: float,
         alive: Callable[[dict[str, Any]], bool]) -> tuple[str | None, dict[str, Any] | None]:
    """(etag, None) once this run holds the object at `url`, else (None, the live record)."""
    record = encode(holder, lease_s)
    while True:
        try:
            return objects.create(url, record), None
        except Conflict:
            pass
        found = objects.read(url)
        if found is None:
            continue  # released between our two calls
        content, etag = found
        try:
            fields = decode(content)
        except ValueError:
            fields = {}
        if fields and not is_dead(fields, alive):
            return None, fields
        try:
            return objects.replace(url, record, etag), None
        except Conflict:
            continue  # someone else took it over first: look again


@contextlib.contextmanager
def held(url: str, holder: Any, etag: str, lease_s: float) -> Iterator[Heartbeat]:
    """Refresh the object while the block runs, then remove it if it is still ours."""
    beat = Heartbeat(url, etag, holder, lease_s)
    try:
        yield beat
    finally:
        release(beat)


def release(beat: Heartbeat) -> None:
    """Stop refreshing and remove the object, unless another run has taken it over."""
    beat.stop()
    if not beat.lost:
        with contextlib.suppress(Exception):
            found = objects.read(beat.url)
            if found is not None and found[1] == beat.etag:
                objects.remove(beat.url)

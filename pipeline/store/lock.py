"""One writer per store: an exclusive `flock` on a lock file beside it, held for the whole run.

Two `features` runs on one store would each rewrite whole shard files and undo the other's
rows. So a run locks `.<name>.lock` next to the store before it creates, reopens or deletes
(`--overwrite`) it: beside rather than inside, because a new store is built as a `.partial`
folder and renamed in, and `--overwrite` deletes the folder. The kernel drops a `flock` when
its process ends, however it ends, so the lock of a killed run is simply taken by the next
one; the file records the holder (host, pid, start time, command) for the refusal message.
A store named by URL (object storage) has a lock object instead, with an expiry its run
refreshes (`pipeline/remote/object_lock.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import psutil

from pipeline.remote import object_lock
from pipeline.remote.leases import leases_url, live_blocks
from pipeline.remote.urls import Location, is_url
from pipeline.store.feature_store import storage_errors
from pipeline.store.format import StoreError

RECORD_WAIT_S = 1.0  # a holder writes its record right after taking the lock
SETUP_WAIT_S = 600.0  # how long a cooperating run waits for another's setup to end


class StoreInUse(StoreError):
    """Another live run holds the store."""


@dataclass(frozen=True)
class Holder:
    """Who holds a store's lock, as its lock file records it."""

    host: str
    pid: int
    started: float  # the holder process's start time, seconds since the epoch
    command: str

    def describe(self) -> str:
        started = datetime.fromtimestamp(self.started)
        when = started.strftime("%H:%M" if started.date() == datetime.now().date()
                                else "%Y-%m-%d %H:%M")
        return f"`{self.command}` (pid {self.pid} on host {self.host} since {when})"


def lock_path(store: Path) -> Path:
    """The lock file of `store`, beside its real location (symlinks resolved)."""
    real = Path(store).resolve()
    return real.with_name(f".{real.name}.lock")


def _this_run(command: str | None) -> Holder:
    return Holder(socket.gethostname(), os.getpid(), psutil.Process().create_time(),
                  command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))


@contextlib.contextmanager
def store_lock(store: Location, command: str | None = None,
               lease_s: float = object_lock.LEASE_SECONDS) -> Iterator[Holder]:
    """Hold `store`'s lock; a store already locked is refused with one line naming the holder.

    `command` is what the record names (default: this process's command line); `lease_s`
    is how long a lock object outlives its run's last refresh (stores named by URL).
    """
    if is_url(store):
        with _object_lock(str(store), _this_run(command), lease_s) as holder:
            yield holder
        return
    store = Path(store)
    path = lock_path(store)
    action = "lock feature store" if store.exists() else "create feature store at"
    with storage_errors(store, action):
        fd = _acquire(store, path)
    try:
        holder = _this_run(command)
        record = json.dumps(asdict(holder)).encode()
        with storage_errors(store, action):
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        yield holder
    finally:
        # Removed while still locked: a run that opened this file meanwhile finds, once it
        # gets the lock, that the name no longer leads to it, and starts over (`_acquire`).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def _object_lock(store: str, holder: Holder, lease_s: float) -> Iterator[Holder]:
    url = object_lock.lock_url(store)
    with storage_errors(store, "lock feature store"):
        etag, other = object_lock.take(url, holder, lease_s, holder_alive)
    if etag is None:
        raise StoreInUse(f"{store} is in use by {_describe_record(other)}: wait for it to "
                         f"finish or stop it")
    with object_lock.held(url, holder, etag, lease_s) as beat:
        _FENCES[store] = beat
        try:
            yield holder
        finally:
            _FENCES.pop(store, None)


_FENCES: dict[str, object_lock.Heartbeat] = {}


def check_still_held(store: Location) -> None:
    """Refuse to write a store whose lock object this run lost (stalled past its expiry while
    another run took the store over): its writes would undo the other run's."""
    beat = _FENCES.get(str(store))
    if beat is not None and not beat.still_held():
        raise StoreError(f"{store}: this run lost its lock (it was stalled longer than its "
                         f"{beat.lease_s:.0f} s lease and another run took the store over); "
                         f"nothing more is written")


def _describe_record(fields: dict | None) -> str:
    try:
        holder = _holder(json.dumps(fields).encode())
    except (ValueError, KeyError, TypeError):
        return "another run"
    left = float((fields or {}).get("expires", 0)) - time.time()
    return f"{holder.describe()}, its lock expires in {max(0, left):.0f} s unless it is renewed"


@contextlib.contextmanager
def waiting_store_lock(store: Location, lease_s: float) -> Iterator[Holder]:
    """`store_lock`, waiting while another cooperating run creates or opens the store."""
    deadline = time.monotonic() + SETUP_WAIT_S
    while True:
        with contextlib.ExitStack() as stack:
            try:
                holder = stack.enter_context(store_lock(store, lease_s=lease_s))
            except StoreInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
                continue
            yield holder
            return


def refuse_while_cooperating(store: Location) -> None:
    """A run without --cooperate never writes a store that cooperating runs are filling."""
    with storage_errors(store, "lock feature store"):
        blocks = live_blocks(leases_url(store), holder_alive)
    if blocks:
        who = _describe_record(next(iter(blocks.values())))
        raise StoreInUse(f"{store} is being filled by cooperating runs ({len(blocks)} blocks "
                         f"leased, e.g. by {who}): add --cooperate to join them, or wait")


def cooperating(store: Location) -> bool:
    """Whether live cooperating runs hold blocks of `store` now."""
    with storage_errors(store, "lock feature store"):
        return bool(live_blocks(leases_url(store), holder_alive))


def holder_alive(fields: dict) -> bool:
    """False for a record naming a dead (or reused) pid of this host; other hosts: True."""
    try:
        holder = _holder(json.dumps(fields).encode())
    except (ValueError, KeyError, TypeError):
        return False
    if holder.host != socket.gethostname():
        return True
    try:
        return abs(psutil.Process(holder.pid).create_time() - holder.started) < 1.0
    except psutil.Error:
        return False


def writer_of(store: Location) -> Holder | None:
    """The run writing `store` now, for readers, which take no lock: they may read copies on
    read-only disks, and a reader holding even a shared lock would make a starting run fail.

    Read from the record alone: a run removes its lock file when it ends, so a record is
    stale only when its run was killed; on this host a dead (or reused) pid tells, a run on
    another host is taken to be alive (on object storage: until its lock object expires).
    """
    if is_url(store):
        return _object_writer(str(store))
    try:
        holder = _holder(lock_path(store).read_bytes())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return holder if holder_alive(asdict(holder)) else None


def _object_writer(store: str) -> Holder | None:
    with storage_errors(store, "open"):  # no bucket, no credentials: one line, here first
        found = object_lock.objects.read(object_lock.lock_url(store))
    try:
        if found is None:
            return None
        fields = object_lock.decode(found[0])
        if object_lock.is_dead(fields, holder_alive):
            return None
        return _holder(json.dumps(fields).encode())
    except (ValueError, KeyError, TypeError):
        return None


def refuse_while_written(store: Location, action: str) -> None:
    """One line instead of reading a store a live run is rewriting: a read between a shard's
    replacement and its index would look like damage, and the rows are not all there yet."""
    if (holder := writer_of(store)) is not None:
        raise StoreError(f"{store} is being written by {holder.describe()}: {action} once it "
                         f"has finished")
    if cooperating(store):
        raise StoreError(f"{store} is being filled by cooperating runs: {action} once they "
                         f"have finished")


def _acquire(store: Path, path: Path) -> int:
    """An open descriptor of the lock file at `path`, exclusively locked by this process."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # the store's folder does not exist yet
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = holder.describe() if holder else f"another run (lock file {path})"
            raise StoreInUse(f"{store} is in use by {who}: wait for it to finish or stop "
                             f"it") from None
        except OSError:
            os.close(fd)
            raise
        if _names(path, fd):
            return fd
        os.close(fd)  # its holder removed it between our open and our lock: try again


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still leads to the open file `fd`."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _read_holder(fd: int) -> Holder | None:
    """The record of the process holding the lock (None if it has not written one yet)."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        try:
            return _holder(os.pread(fd, 4096, 0))
        except (ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def _holder(record: bytes) -> Holder:
    fields = json.loads(record)
    return Holder(str(fields["host"]), int(fields["pid"]), float(fields["started"]),
                  str(fields["command"]))

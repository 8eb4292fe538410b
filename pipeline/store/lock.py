"""One writer per store: an exclusive `flock` on a lock file beside it, held for the whole run.

Two `features` runs on one store would each rewrite whole shard files and undo the other's
rows. So a run locks `.<name>.lock` next to the store before it creates, reopens or deletes
(`--overwrite`) it: beside rather than inside, because a new store is built as a `.partial`
folder and renamed in, and `--overwrite` deletes the folder. The kernel drops a `flock` when
its process ends, however it ends, so the lock of a killed run is simply taken by the next
one; the file records the holder (host, pid, start time, command) for the refusal message.
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

from pipeline.store.feature_store import storage_errors
from pipeline.store.format import StoreError

RECORD_WAIT_S = 1.0  # a holder writes its record right after taking the lock


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


@contextlib.contextmanager
def store_lock(store: Path, command: str | None = None) -> Iterator[Holder]:
    """Hold `store`'s lock; a store already locked is refused with one line naming the holder.

    `command` is what the record names (default: this process's command line).
    """
    store = Path(store)
    path = lock_path(store)
    action = "lock feature store" if store.exists() else "create feature store at"
    with storage_errors(store, action):
        fd = _acquire(store, path)
    try:
        holder = Holder(socket.gethostname(), os.getpid(), psutil.Process().create_time(),
                        command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
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


def writer_of(store: Path) -> Holder | None:
    """The run writing `store` now, for readers, which take no lock: they may read copies on
    read-only disks, and a reader holding even a shared lock would make a starting run fail.

    Read from the record alone: a run removes its lock file when it ends, so a record is
    stale only when its run was killed; on this host a dead (or reused) pid tells, a run on
    another host is taken to be alive.
    """
    try:
        holder = _holder(lock_path(store).read_bytes())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if holder.host != socket.gethostname():
        return holder
    try:
        alive = abs(psutil.Process(holder.pid).create_time() - holder.started) < 1.0
    except psutil.Error:
        alive = False
    return holder if alive else None


def refuse_while_written(store: Path, action: str) -> None:
    """One line instead of reading a store a live run is rewriting: a read between a shard's
    replacement and its index would look like damage, and the rows are not all there yet."""
    if (holder := writer_of(store)) is not None:
        raise StoreError(f"{store} is being written by {holder.describe()}: {action} once it "
                         f"has finished")


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
            raise StoreError(f"{store} is in use by {who}: wait for it to finish or stop "
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

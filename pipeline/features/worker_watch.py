"""Stops a run whose remaining tasks no worker can take, instead of waiting for ever.

Dask holds a task until a worker that can run it is there: a model task needs a worker that
declares the GPU resource, any task needs some worker. On a cluster whose GPU machine (or
every machine) was lost that never happens, and the run would hang without a word. A local
worker that dies is restarted by its nanny within seconds, so only a lasting absence counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from distributed import Client, Future

from extract.errors import UserError

LOST_AFTER_S = 60.0  # a nanny restarts a killed local worker well within this
POLL_S = 2.0


class WorkersLost(UserError):
    """The workers the run's tasks need have been gone for LOST_AFTER_S seconds."""


@dataclass(frozen=True)
class Needed:
    """The workers a run's tasks need: whether the cluster has one, and, for the message,
    what they are and how to start one."""

    present: Callable[[Client], bool]
    what: str
    start: str


class WorkerWatch:
    """While the block runs, checks every POLL_S seconds that the needed workers are there.
    Once they have not been for LOST_AFTER_S, sets `lost` and cancels `in_flight()`, so that
    the driver, which waits on those futures, wakes up and stops the run (`stopped_by_loss`)."""

    def __init__(self, client: Client, needed: Needed,
                 in_flight: Callable[[], Iterable[Future]]) -> None:
        self.client = client
        self.needed = needed
        self.in_flight = in_flight
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * POLL_S)  # daemon: a scheduler call stuck in it must
                                                # not hold up the run's end

    def _watch(self) -> None:
        lost_after = LOST_AFTER_S  # read once per run, so a test can shorten it
        last_seen = time.monotonic()
        while not self._stop.wait(POLL_S):
            if not self.lost.is_set():
                try:
                    if self.needed.present(self.client):
                        last_seen = time.monotonic()
                        continue
                except Exception:  # noqa: BLE001  the scheduler unreachable: Dask's errors say so
                    continue
                if time.monotonic() - last_seen < lost_after:
                    continue
                self.lost.set()
            # Again at every poll once lost: a result the driver takes later may be waiting
            # for a lost worker too.
            self.client.cancel(list(self.in_flight()))

    def stopped_by_loss(self, future: Future) -> None:
        """In the driver, for a future whose result raised: WorkersLost if the watch cancelled
        it (the results taken before are handed back as usual, and the store keeps them)."""
        if self.lost.is_set() and future.cancelled():
            raise WorkersLost(
                f"no {self.needed.what} has been in the Dask cluster for {LOST_AFTER_S:.0f} s "
                f"(lost with its machine?); the videos finished so far are in the store: start "
                f"one ({self.needed.start}) and rerun the same command to resume")


ANY_WORKER = Needed(lambda client: bool(client.scheduler_info(n_workers=1)["workers"]),
                    "worker", "`dask worker SCHEDULER`")

"""glibc malloc in Dask worker processes: local workers start without Dask's trim setting, and
the workers of an existing cluster are checked for it.

Why: Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 (its default
`distributed.nanny.pre-spawn-environ`, to hand freed memory back to the OS soon). Setting a
malloc threshold switches off glibc's dynamic mmap threshold, so every buffer over 128 KiB
becomes a fresh mmap whose pages fault in zeroed on first touch, and torch allocates such
buffers all the time: TV-L1 ran 2.0x (compiled) to 2.3x (eager) slower in such a worker than
in a plain process, and MALLOC_MMAP_THRESHOLD_ alone undid it (docs/benchmarks.md).
"""

from __future__ import annotations

import os

from distributed import Client

TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
MMAP_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
# dask.config settings for a local cluster's nannies: a None value is not exported.
LOCAL_WORKER_CONFIG = {f"distributed.nanny.pre-spawn-environ.{TRIM_VARIABLE}": None}
# What a worker started elsewhere needs: a fixed but large mmap threshold (32 MiB, glibc's
# ceiling for the dynamic one) keeps buffers in the heap whatever the trim threshold is.
WORKER_FIX = f"{MMAP_VARIABLE}=33554432"


def fixed_small_mmap_threshold() -> bool:
    """Runs on a worker: True when its malloc maps every buffer over 128 KiB afresh."""
    return TRIM_VARIABLE in os.environ and MMAP_VARIABLE not in os.environ


def slow_malloc_workers(client: Client) -> list[str]:
    """Addresses of the connected workers started with Dask's trim setting alone."""
    flags = client.run(fixed_small_mmap_threshold)
    return sorted(address for address, slow in flags.items() if slow)


def malloc_note(addresses: list[str]) -> str | None:
    """The one line that tells the user, or None when every worker is fine."""
    if not addresses:
        return None
    shown = ", ".join(addresses[:3]) + (f" and {len(addresses) - 3} more"
                                        if len(addresses) > 3 else "")
    return (f"note: {len(addresses)} Dask worker(s) ({shown}) run with {TRIM_VARIABLE} "
            f"alone, which makes torch about 2x slower there; start them with "
            f"`{WORKER_FIX} dask worker ...`")

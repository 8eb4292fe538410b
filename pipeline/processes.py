"""Child processes that do not outlive their parent.

A grid worker is a spawned child; when its parent is killed (SIGTERM, SIGKILL, a closed
terminal) nothing joins it, and an orphan would go on training on the cores the next run
measures its step time on. Linux sends a chosen signal to a process when its parent dies
(prctl PR_SET_PDEATHSIG); elsewhere the child stays as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Have SIGTERM sent to this process when its parent exits; exit at once if the parent
    `parent_pid` is already gone (it died before the request was made)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return  # not allowed here (a sandbox): the child merely stays as before
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)

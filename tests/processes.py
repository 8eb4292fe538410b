"""For tests that run the project's commands as processes: where cli.py is, and kill -9 of a
command's whole process group (client and Dask workers) at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project folder, holding cli.py


def kill_group_when(command: list[str], cwd: Path, ready: Callable[[], bool], *,
                    timeout_s: float, poll_s: float, delay_s: float = 0.0) -> None:
    """Run `command` in a new session and SIGKILL its group `delay_s` after `ready()` holds.

    Fails the test when the command ends on its own first: then nothing was interrupted.
    """
    process = subprocess.Popen(command, cwd=cwd, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                time.sleep(delay_s)
                break
            time.sleep(poll_s)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

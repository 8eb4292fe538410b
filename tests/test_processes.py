"""A grid worker dies with the run that started it (pipeline/processes.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHILD = ("import os, sys, time; sys.path.insert(0, {root!r}); "
         "from pipeline.processes import die_with_parent; "
         "{call}; print('ready', flush=True); time.sleep(120)")
PARENT = ("import subprocess, sys, time; "
          "child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=sys.stdout); "
          "print(child.pid, flush=True); time.sleep(120)")


def orphan_after_killing_its_parent(call: str) -> bool:
    """Start parent -> child, kill -9 the parent, and tell whether the child still lives."""
    child_code = CHILD.format(root=str(ROOT), call=call)
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(child=child_code)],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "ready"
    child = psutil.Process(child_pid)
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        try:
            child.wait(timeout=15)
            return False
        except psutil.TimeoutExpired:
            return True
    finally:
        if child.is_running():
            child.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_killed_parent_and_would_not_without() -> None:
    assert orphan_after_killing_its_parent("None")  # the default: an orphan lives on
    assert not orphan_after_killing_its_parent("die_with_parent(os.getppid())")

"""For tests that run the project's code as processes: where cli.py is, kill -9 of a command's
whole process group (client and Dask workers) at a chosen moment, and the CPU TV-L1 flow in
fresh processes (what a new worker of a machine does with the flow cache)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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


# {loader}: the compiled inner loop a worker loads (built on first use); {compiler}: a module
# that only compiling imports.
_FRESH_FLOW = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from extract.flow.stacks import compute_flow
from extract.flow.truth import make_pairs
from {module} import {function}
pairs = make_pairs({size!r})
flow = compute_flow(np.stack([p.i0 for p in pairs]), np.stack([p.i1 for p in pairs]), "torch")
np.save(sys.argv[1], flow)
kernel = {function}({arguments})
print(json.dumps({{"built_here": kernel.built_here, "load_s": kernel.load_s,
                  "compiler_imported": {compiler!r} in sys.modules}}))
"""


def flow_in_fresh_processes(loader: str, compiler: str, size: tuple[int, int],
                            env: dict[str, str], folder: Path, timeout_s: float
                            ) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Two fresh processes, one after the other, each computing the TV-L1 flow of the truth
    pairs at `size` (one torch thread, as a worker) and reporting whether the inner loop
    `loader` ("module:function(arguments)") was built there, its load time, and whether
    `compiler` was imported: their reports and flows (saved under `folder`)."""
    module, call = loader.split(":")
    function, arguments = call.rstrip(")").split("(")
    script = _FRESH_FLOW.format(module=module, function=function, arguments=arguments,
                                size=size, compiler=compiler)
    reports, flows = [], []
    for i in range(2):
        out = folder / f"flow{i}.npy"
        done = subprocess.run([sys.executable, "-c", script, str(out)],
                              env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "unavailable" not in done.stderr and "falls back" not in done.stderr, (
            done.stderr[-3000:])
        reports.append(json.loads(done.stdout.splitlines()[-1]))
        flows.append(np.load(out))
    return reports, flows

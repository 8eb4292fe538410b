"""Two `features --cooperate` runs fill one store on S3 (moto's server on 127.0.0.1).

Run A starts alone and is frozen (SIGSTOP of its whole group: its leases stop being renewed,
as when a machine hangs) once it has written some rows; run B joins, computes every row A had
not finished, takes A's half-done block over once its lease expires, and ends; then A is
killed with kill -9. Every finished row was computed once (B computes exactly the rows A had
not written), and the store equals a single clean run, array for array.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.remote import objects
from pipeline.remote.leases import live_blocks
from pipeline.store.lock import holder_alive
from tests.clip_runs import FIELDS as CLIP_FIELDS
from tests.clip_runs import clips_and_clean_store, complete_rows, store_arrays
from tests.processes import ROOT

FIELDS = (*CLIP_FIELDS, "stream")
VIDEOS = 24


@pytest.mark.slow  # three extractions of 24 clips and a lease expiry: ~60 s here
def test_two_cooperating_runs_one_frozen_then_killed(s3_bucket: str, tmp_path: Path) -> None:
    root, profile, clean = clips_and_clean_store(tmp_path, VIDEOS)
    url = f"{s3_bucket}/features/clips.zarr"
    command = [sys.executable, str(ROOT / "cli.py"), "features", "clips", "--root", str(root),
               "--config", str(profile), "--out", url, "--workers", "1", "--device", "cpu",
               "--flush-seconds", "0", "--cooperate", "--lease-rows", "4",
               "--lease-seconds", "5"]
    first = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(complete_rows(url)) < 4 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before it could be stopped"
        by_first = complete_rows(url)
        assert 4 <= len(by_first) < VIDEOS, by_first
        leases = objects.files_under(f"{s3_bucket}/features/.clips.zarr.leases")
        assert any(name.startswith("block-") for name in leases), leases
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 0, second.stderr[-3000:]
    finished = re.search(r"finished: (\d+)/(\d+) items", second.stdout)
    assert finished is not None, second.stdout[-2000:]
    assert int(finished.group(1)) == VIDEOS - len(by_first), (finished.group(0), by_first)
    assert len(complete_rows(url)) == VIDEOS
    result, reference = store_arrays(url, FIELDS), store_arrays(clean, FIELDS)
    for key, expected in reference.items():
        np.testing.assert_array_equal(result[key], expected, err_msg=key)
    # B released every block it held; what is left is the killed run's, and counts as dead
    left = f"{s3_bucket}/features/.clips.zarr.leases"
    for name in objects.files_under(left):
        assert json.loads(objects.read(f"{left}/{name}")[0])["pid"] == first.pid, name
    assert live_blocks(left, holder_alive) == {}

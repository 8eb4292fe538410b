"""kill -9 of `features` writing a store on S3 (moto's server on 127.0.0.1), then resume.

As on disk: the real command in its own process group is killed (client and workers) once some
rows are in the store, or while the store is being created; the same command rerun computes
only the rows left and ends with a store equal, array for array, to a run never interrupted.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.remote import creation, objects
from tests.clip_runs import clips_and_clean_store, complete_rows, store_arrays
from tests.processes import ROOT, kill_group_when

VIDEOS = 12


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset root, profile, store of an uninterrupted run on disk)."""
    return clips_and_clean_store(tmp_path_factory.mktemp("s3-crash"), VIDEOS)


def command(root: Path, profile: Path, out: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "features", "clips", "--root", str(root),
            "--config", str(profile), "--out", out, "--workers", "1", "--device", "cpu",
            "--flush-seconds", "0"]


def resume(args: list[str]) -> int:
    """Rerun `args`; the number of rows it computed."""
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    finished = re.search(r"finished: (\d+)/(\d+) items", done.stdout)
    assert finished is not None, done.stdout[-2000:]
    assert finished.group(1) == finished.group(2)
    return int(finished.group(1))


@pytest.mark.slow  # two real runs of `features` on S3 per test: ~40 s here
def test_kill_9_mid_run_on_s3_then_resume(clips: tuple[Path, Path, Path],
                                          s3_bucket: str) -> None:
    root, profile, clean = clips
    url = f"{s3_bucket}/features/clips.zarr"
    args = command(root, profile, url)
    kill_group_when(args, ROOT, lambda: len(complete_rows(url)) >= 3, timeout_s=300, poll_s=0.1)
    left = VIDEOS - len(complete_rows(url))
    assert 0 < left < VIDEOS - 2, left
    lock = f"{s3_bucket}/features/.clips.zarr.lock"
    assert objects.exists(lock), "the killed run's lock object stays behind"
    assert resume(args) == left  # taken over at once: a dead pid of this host
    assert not objects.exists(lock)
    result, reference = store_arrays(url), store_arrays(clean)
    for key, expected in reference.items():
        np.testing.assert_array_equal(result[key], expected, err_msg=key)


@pytest.mark.slow
def test_kill_9_while_the_store_is_created_on_s3(clips: tuple[Path, Path, Path],
                                                 s3_bucket: str) -> None:
    root, profile, clean = clips
    url = f"{s3_bucket}/made.zarr"
    args = command(root, profile, url)
    process = subprocess.Popen(args, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while (time.monotonic() < deadline and process.poll() is None
               and not objects.exists(f"{url}/videos/id/zarr.json")):
            time.sleep(0.01)  # then killed with ~20 arrays and the format still to write
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert creation.interrupted(url), "the kill did not land during the creation"
    assert resume(args) == VIDEOS
    assert not objects.exists(f"{url}/{creation.MARKER}")
    result, reference = store_arrays(url), store_arrays(clean)
    for key, expected in reference.items():
        np.testing.assert_array_equal(result[key], expected, err_msg=key)

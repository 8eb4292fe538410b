"""kill -9 of `features` (client and workers) at random moments, then resume: nothing lost.

Each trial starts the real command in its own process group, waits for a randomly drawn
number of finished rows plus a random delay (seeded), kills the whole group with SIGKILL, and
reruns the same command. The rerun must only compute the rows that were not done, finish
them all, and leave a store equal to a run that was never interrupted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.store.create import partial_path
from tests.clip_runs import clips_and_clean_store, complete_rows, store_arrays
from tests.processes import ROOT, kill_group_when

VIDEOS = 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset root, profile, store of an uninterrupted run)."""
    return clips_and_clean_store(tmp_path_factory.mktemp("crash"), VIDEOS)


def features_command(root: Path, profile: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "features", "clips", "--root", str(root),
            "--config", str(profile), "--out", str(out), "--workers", "1", "--device", "cpu",
            "--flush-seconds", "0"]


def kill_at_random(command: list[str], out: Path, rng: np.random.Generator) -> int:
    """Run `command`, SIGKILL its process group after a random number of rows; rows left."""
    target = int(rng.integers(0, VIDEOS - 3))
    delay = float(rng.uniform(0.0, 0.5))
    kill_group_when(command, ROOT, lambda: len(complete_rows(out)) >= target,
                    timeout_s=300, poll_s=0.05, delay_s=delay)
    return VIDEOS - len(complete_rows(out))


def resume_trials(toy: tuple[Path, Path, Path], base: Path, trials: int, seed: int) -> None:
    root, profile, clean = toy
    reference = store_arrays(clean)
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        out = base / f"trial{trial}.zarr"
        command = features_command(root, profile, out)
        for _attempt in range(5):  # on a fast machine the last rows can land before the kill
            left = kill_at_random(command, out, rng)
            if left > 0:
                break
            shutil.rmtree(out)
        assert left > 0, "every attempt finished all rows before the kill landed"
        resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        # only the unfinished rows are computed again: every row is done exactly once
        finished = re.search(r"finished: (\d+)/(\d+) items", resumed.stdout)
        assert finished is not None, resumed.stdout[-2000:]
        assert int(finished.group(1)) == int(finished.group(2)) == left, (trial, left)
        assert len(complete_rows(out)) == VIDEOS
        result = store_arrays(out)
        for key, expected in reference.items():
            np.testing.assert_array_equal(result[key], expected, err_msg=f"trial {trial} {key}")


def test_kill_9_while_the_store_is_created_then_resume(toy: tuple[Path, Path, Path],
                                                      tmp_path: Path) -> None:
    """A store being created is built beside its path: a kill then never blocks a rerun."""
    root, profile, clean = toy
    out = tmp_path / "created.zarr"
    command = features_command(root, profile, out)
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while (time.monotonic() < deadline and process.poll() is None
               and not partial_path(out).exists() and not out.exists()):
            time.sleep(0.001)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not out.exists() or (out / "zarr.json").exists()
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not partial_path(out).exists()
    result, reference = store_arrays(out), store_arrays(clean)
    for key, expected in reference.items():
        np.testing.assert_array_equal(result[key], expected, err_msg=key)


@pytest.mark.slow  # make test-all (CI), with the 7 of test_kill_9_many_trials
def test_kill_9_at_random_moments_then_resume(toy: tuple[Path, Path, Path],
                                              tmp_path: Path) -> None:
    resume_trials(toy, tmp_path, trials=1, seed=7)


@pytest.mark.slow
def test_kill_9_many_trials(toy: tuple[Path, Path, Path], tmp_path: Path) -> None:
    resume_trials(toy, tmp_path, trials=7, seed=11)

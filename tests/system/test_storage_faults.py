"""Storage faults through the real `features` command: one clear line, finished rows kept.

* An unwritable store path (under a regular file: root ignores permission bits, so chmod
  would not stop these tests when run as root).
* A disk that fills up mid-run: the command runs in a child process whose zarr LocalStore
  raises ENOSPC from the third flush on, after part of that flush is on disk. The rows
  flushed before must stay done with their data; the rerun (disk freed) computes only the rest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from tests.hostile import clip_dataset
from tests.processes import ROOT
from tests.profiles import CHEAP_PROFILE

MODALITIES = ("rgb", "flow", "audio")
FIELDS = ("features", "mask", "time", "status", "error")
VIDEOS = 6
FAILING_FLUSH = 3

# Runs `cli.py` with a LocalStore whose writes fail with ENOSPC once `FAILING_FLUSH - 1`
# flushes are complete and 2 writes of the next one went through (a flush that half happened).
DISK_FILLS_UP = f"""
import errno, os, sys
sys.path.insert(0, {str(ROOT)!r})
import cli
import pipeline.store.feature_store as store_module
from zarr.storage import LocalStore

state = {{"flushes": 0, "writes": 0}}
write_rows, local_set = store_module.FeatureStore.write_rows, LocalStore.set

def counting_write_rows(self, rows, results):
    state["flushes"] += 1
    state["writes"] = 0
    return write_rows(self, rows, results)

async def filling_set(self, key, value):
    if state["flushes"] >= {FAILING_FLUSH}:
        state["writes"] += 1
        if state["writes"] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
    return await local_set(self, key, value)

store_module.FeatureStore.write_rows = counting_write_rows
LocalStore.set = filling_set
sys.argv = ["cli.py", *sys.argv[1:]]
cli.run()
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("storage")
    profile = base / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    return clip_dataset(base / "clips", VIDEOS), profile


def features_args(root: Path, profile: Path, out: Path) -> list[str]:
    return ["features", "clips", "--root", str(root), "--config", str(profile), "--out",
            str(out), "--workers", "1", "--device", "cpu", "--flush-seconds", "0"]


def assert_one_error_line(stderr: str, pattern: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert re.search(pattern, errors[0]), errors[0]


def test_unwritable_store_path_is_one_clear_line(clips: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    root, profile = clips
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's parent folder should be\n")
    out = blocker / "clips.zarr"
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"),
                             *features_args(root, profile, out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, r"^error: cannot create feature store at "
                                         + re.escape(str(out)) + r": Not a directory: "
                                         r"choose a writable --out$")
    assert blocker.read_text().startswith("a file where")


@pytest.mark.slow  # a full features run into a tiny filesystem; make test-all runs it
def test_disk_full_mid_run_keeps_finished_rows(clips: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    root, profile = clips
    out = tmp_path / "full.zarr"
    args = features_args(root, profile, out)
    full = subprocess.run([sys.executable, "-c", DISK_FILLS_UP, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 1, full.stderr[-3000:]
    assert_one_error_line(full.stderr, r"^error: cannot write features to .*full\.zarr: No "
                                       r"space left on device: free some space and rerun")

    store = open_store(out)
    done = np.ones(store.n, dtype=bool)
    for name in MODALITIES:
        status = store.status(name)
        assert set(np.unique(status)) <= {Status.PENDING, Status.DONE, Status.ABSENT}
        done &= np.isin(status, (Status.DONE, Status.ABSENT))
    assert done.sum() == FAILING_FLUSH - 1  # the rows of the flushes that completed
    group = zarr.open_group(out, mode="r")
    before = {f"{m}/{f}": group[f"{m}/{f}"][:][done] for m in MODALITIES for f in FIELDS}
    for name in ("rgb", "flow"):
        kept = before[f"{name}/features"].astype(np.float32)
        assert before[f"{name}/mask"].all() and np.abs(kept).sum() > 0

    resumed = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"finished: {VIDEOS - done.sum()}/{VIDEOS - done.sum()} items" in resumed.stdout
    group = zarr.open_group(out, mode="r")
    for key, values in before.items():
        np.testing.assert_array_equal(group[key][:][done], values, err_msg=key)
    for name in MODALITIES:
        assert np.isin(group[f"{name}/status"][:], (Status.DONE, Status.ABSENT)).all()

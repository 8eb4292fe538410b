"""One run per store: a second `features` on a store in use is refused, a dead holder's lock
is taken over, with real processes holding the lock.

* a small script holding the lock through `store_lock` (then killed with SIGKILL), and
* a real `cli.py features` run frozen with SIGSTOP while it holds the lock,
each against a real `cli.py features` on toy clips.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from pipeline.store.format import Status, StoreError
from pipeline.store.lock import lock_path, store_lock, writer_of
from tests.hostile import clip_dataset
from tests.processes import ROOT
from tests.profiles import CHEAP_PROFILE

VIDEOS = 4
HOLD = """
import sys, time
from pathlib import Path
from pipeline.store.lock import store_lock
with store_lock(Path(sys.argv[1]), command="holder.py --test"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("lock")
    root = clip_dataset(base / "clips", VIDEOS)
    profile = base / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    return root, profile


def features(root: Path, profile: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "features", "clips", "--root", str(root),
            "--config", str(profile), "--out", str(out), "--workers", "1", "--device", "cpu",
            *extra]


def messages(stderr: str) -> list[str]:
    """stderr without the progress bar's frames."""
    return [line for line in re.split(r"[\r\n]+", stderr)
            if line.strip() and not line.startswith("videos:")]


def all_done(out: Path) -> bool:
    group = zarr.open_group(out, mode="r")
    return all(np.isin(group[f"{m}/status"][:], (Status.DONE, Status.ABSENT)).all()
               for m in ("rgb", "flow", "audio"))


def test_a_held_store_is_refused_and_a_killed_holder_is_taken_over(clips, tmp_path):
    root, profile = clips
    out = tmp_path / "clips.zarr"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        since = time.strftime("%H:%M", time.localtime(psutil.Process(holder.pid).create_time()))
        assert writer_of(out).pid == holder.pid  # what readers see
        for extra in ((), ("--overwrite",)):  # --overwrite deletes the store: refused too
            second = subprocess.run(features(root, profile, out, *extra), cwd=ROOT,
                                    capture_output=True, text=True, timeout=300)
            assert second.returncode == 1
            assert messages(second.stderr) == [
                f"error: {out} is in use by `holder.py --test` (pid {holder.pid} on host "
                f"{socket.gethostname()} since {since}): wait for it to finish or stop it"]
            assert not out.exists()  # nothing made, nothing touched
    finally:
        holder.kill()  # SIGKILL: the lock file stays, with the dead holder's record
        holder.wait()
    assert f"pid\": {holder.pid}" in lock_path(out).read_text()
    assert writer_of(out) is None  # the record of a dead process is no writer
    with store_lock(out, command="next run") as taken:  # taken over (a whole run: below)
        assert taken.pid == os.getpid() and "next run" in lock_path(out).read_text()
    assert not lock_path(out).exists()  # released and removed at the end


def test_a_running_features_holds_its_store(clips, tmp_path):
    """A real run, frozen (SIGSTOP) once it holds the lock: a second run on the store is
    refused; thawed, the first one finishes every row."""
    root, profile = clips
    out = tmp_path / "clips.zarr"
    first = subprocess.Popen(features(root, profile, out), cwd=ROOT, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (lock_path(out).exists() and lock_path(out).read_text()):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGSTOP)
        second = subprocess.run(features(root, profile, out), cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        os.killpg(first.pid, signal.SIGCONT)
        assert second.returncode == 1
        [line] = messages(second.stderr)
        assert re.fullmatch(rf"error: {re.escape(str(out))} is in use by `cli\.py features "
                            rf"clips .*` \(pid {first.pid} on host \S+ since \d\d:\d\d\): "
                            r"wait for it to finish or stop it", line), line
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 0, stderr[-2000:]
    assert f"finished: {VIDEOS}/{VIDEOS} items" in stdout
    assert all_done(out)


def test_lock_api(tmp_path):
    """In one process too (a second descriptor), under another name of the same folder, and
    released by the end of the block."""
    store = tmp_path / "data" / "a.zarr"  # the folder does not exist yet: it is made
    alias = tmp_path / "alias"
    with store_lock(store, command="first") as holder:
        assert lock_path(store).parent == store.parent and holder.pid == os.getpid()
        alias.symlink_to(tmp_path / "data")
        with pytest.raises(StoreError, match=r"a\.zarr is in use by `first` \(pid "), \
                store_lock(alias / "a.zarr"):
            pass
    assert not lock_path(store).exists() and writer_of(store) is None
    with store_lock(alias / "a.zarr", command="second"):
        assert "second" in lock_path(store).read_text()
        assert writer_of(store).command == "second"


def test_readers_of_a_store_being_written(toy_store: Path, tmp_path: Path) -> None:
    """While a run holds the store, `train` refuses with one line (a read racing a shard's
    replacement would look like damage) and `store info` works and says it is a snapshot."""
    out = tmp_path / "toy.zarr"
    shutil.copytree(toy_store, out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        train = subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), "train", "--dataset", "toy", "--features",
             str(out), "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert train.returncode == 1, train.stderr
        assert messages(train.stderr) == [
            f"error: {out} is being written by `holder.py --test` (pid {holder.pid} on host "
            f"{socket.gethostname()} since {since(holder.pid)}): train or evaluate on it once "
            f"it has finished"]
        info = subprocess.run([sys.executable, str(ROOT / "cli.py"), "store", "info", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert info.returncode == 0, info.stderr
        assert f"being written now by `holder.py --test` (pid {holder.pid}" in info.stdout
    finally:
        holder.kill()
        holder.wait()
    info = subprocess.run([sys.executable, str(ROOT / "cli.py"), "store", "info", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert info.returncode == 0 and "being written" not in info.stdout  # the holder is dead


def since(pid: int) -> str:
    return time.strftime("%H:%M", time.localtime(psutil.Process(pid).create_time()))

"""How a real `cli.py features` run ends when it does not simply succeed.

* Ctrl-C: SIGINT to the whole process group (what a terminal sends: client and Dask workers)
  while rows are still buffered in the client. One line says what was kept, exit 130, no
  traceback from anyone, the buffered rows are in the store, and a rerun does the rest.
* Every video failed: the summary must not read like success; exit 1 with one line. (A run
  where only some videos failed exits 0: tests/system/test_hostile_cli.py.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from tests.hostile import clip_dataset, random_bytes, text_file, zero_bytes
from tests.processes import ROOT
from tests.profiles import CHEAP_PROFILE

VIDEOS = 8


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "cheap.yaml"
    path.write_text(CHEAP_PROFILE)
    return path


def features(root: Path, profile: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "features", "clips", "--root", str(root),
            "--config", str(profile), "--out", str(out), "--device", "cpu", *extra]


def messages(stderr: str) -> list[str]:
    """stderr without the progress bar's frames."""
    return [line for line in re.split(r"[\r\n]+", stderr)
            if line.strip() and not line.startswith("videos:")]


def written_rows(out: Path) -> int:
    store = open_store(out)
    pending = np.zeros(store.n, dtype=bool)
    for name in store.modalities:
        pending |= store.status(name) == Status.PENDING
    return int((~pending).sum())


def test_ctrl_c_prints_one_line_keeps_buffered_rows_and_resumes(profile, tmp_path,
                                                                inprocess_scheduler):
    root = clip_dataset(tmp_path / "clips", VIDEOS)
    out = tmp_path / "clips.zarr"
    # Two worker processes; finished rows stay buffered in the client (flushed every 60 s).
    command = features(root, profile, out, "--workers", "2", "--flush-seconds", "60")
    run = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: run.stderr.read(1), "")))
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not re.search(rf"\b[3-7]/{VIDEOS}\b", "".join(stderr)):  # progress bar
            assert time.monotonic() < deadline and run.poll() is None, "".join(stderr)[-2000:]
            time.sleep(0.02)
        seen = max(int(n) for n in re.findall(rf"\b(\d+)/{VIDEOS}\b", "".join(stderr)))
        os.killpg(run.pid, signal.SIGINT)
        stdout = run.stdout.read()
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        reader.join()
    text = "".join(stderr)
    assert run.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    [line] = messages(text)
    match = re.fullmatch(rf"interrupted: (\d+) of {VIDEOS} videos written to "
                         rf"{re.escape(str(out))}; rerun the same command to resume", line)
    assert match, line
    assert stdout == ""
    kept = int(match.group(1))
    assert seen <= kept < VIDEOS and written_rows(out) == kept  # the buffered rows were flushed

    rerun = run_features(root=root, out=out, dataset="clips", profile=load_profile(profile),
                         scheduler=inprocess_scheduler, device="cpu", progress=False)
    assert rerun.run.completed == VIDEOS - kept  # the kept rows are not computed again
    assert written_rows(out) == VIDEOS


def test_every_video_failed_is_an_error_with_the_counts(profile, tmp_path):
    root = tmp_path / "broken"
    for index, make in enumerate((zero_bytes, random_bytes, text_file)):
        folder = root / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        make(folder / f"v{index}.mp4")
    out = tmp_path / "broken.zarr"
    result = subprocess.run(features(root, profile, out, "--workers", "1"), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(r"^finished: 3/3 items in .*: 3 failed$", result.stdout, re.MULTILINE)
    assert messages(result.stderr) == [
        "error: all 3 videos failed (rgb: 3 failed; flow: 3 failed; audio: 3 failed): see "
        f"`cli.py store info {out}` for the errors"]


"""Hostile inputs through the real `features` command, run as a process.

One folder dataset holds every case of tests/hostile.py plus links and a folder named like a
video; `cli.py features` must finish, record each case as the case says (a failed modality
with a clear error naming the file, or real features), never read what lies outside the root.
The in-process checks (decode timeouts, unsafe list entries) are in tests/test_hostile.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from tests.hostile import (
    ALL,
    HOSTILE,
    clip,
    symlink,
    video_named_directory,
)
from tests.processes import ROOT
from tests.profiles import HOSTILE_MAX_SECONDS, HOSTILE_PROFILE

CLASS = "hostile"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(dataset root, store, `features --json` summary) of one run over every hostile case."""
    base = tmp_path_factory.mktemp("hostile")
    sources = base / "sources"
    sources.mkdir()
    web = clip(sources / "web.mp4", faststart=True)
    plain = clip(sources / "plain.mp4")
    folder = base / "data" / CLASS
    folder.mkdir(parents=True)
    for case in HOSTILE:
        case.make(folder / case.name, web, plain)
    symlink(Path("vidéo ünïcode 1.mp4"), folder / "link inside.mp4")
    outside = clip(base / "outside.mp4")
    symlink(outside, folder / "link outside.mp4")
    video_named_directory(folder / "dir.mp4")
    profile = base / "tiny.yaml"
    profile.write_text(HOSTILE_PROFILE)
    out = base / "hostile.zarr"
    command = [sys.executable, str(ROOT / "cli.py"), "features", "hostile", "--kind", "folder",
               "--root", str(base / "data"), "--config", str(profile), "--out", str(out),
               "--workers", "1", "--device", "cpu", "--json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "data", out, json.loads(result.stdout)


def test_every_case_ends_as_its_expected_row(hostile_run: tuple[Path, Path, dict]) -> None:
    _root, out, summary = hostile_run
    store = open_store(out)
    expected = {f"{CLASS}/{case.name}": case for case in HOSTILE}
    assert set(expected) <= set(store.ids)
    for name in ALL:
        status = store.status(name)
        errors = store.errors(name)
        for video_id, case in expected.items():
            row = store.ids.index(video_id)
            where = f"{video_id} {name}: {errors[row]}"
            if name in case.failed:
                assert status[row] == Status.FAILED, where
                assert case.name in str(errors[row]) and case.error in str(errors[row]), where
                assert "\n" not in str(errors[row]), where
            elif name == "audio" and status[row] == Status.ABSENT:
                assert errors[row] == "", where
            else:
                assert status[row] == Status.DONE, where
    counts = {name: info["counts"] for name, info in summary["modalities"].items()}
    assert all(c["pending"] == 0 for c in counts.values()), counts


def test_valid_odd_inputs_give_real_features(hostile_run: tuple[Path, Path, dict]) -> None:
    _root, out, _summary = hostile_run
    store = open_store(out)
    for name in ("rgb", "flow"):
        features, mask, times, status = store.read(name)
        for case in HOSTILE:
            row = store.ids.index(f"{CLASS}/{case.name}")
            if name in case.failed:
                assert not mask[row].any()
                continue
            used = features[row][mask[row]].astype(np.float32)
            assert np.isfinite(used).all() and np.abs(used).sum() > 0, case.name
            # in order (a one-frame video repeats its frame); the 3-hour file is sampled
            # within limits.max_seconds, never over its hours
            assert (np.diff(times[row][mask[row]]) >= 0).all()
            assert times[row][mask[row]].max() < HOSTILE_MAX_SECONDS, case.name


def test_links_and_folders_named_like_videos(hostile_run: tuple[Path, Path, dict]) -> None:
    root, out, _summary = hostile_run
    store = open_store(out)
    assert f"{CLASS}/link outside.mp4" not in store.ids  # escapes the root: never read
    assert f"{CLASS}/dir.mp4" not in store.ids  # a folder is not a video file
    inside = store.ids.index(f"{CLASS}/link inside.mp4")
    target = store.ids.index(f"{CLASS}/vidéo ünïcode 1.mp4")
    for name in ALL:
        features, mask, times, status = store.read(name, [inside, target])
        assert (status == Status.DONE).all()
        np.testing.assert_array_equal(features[0], features[1])
        np.testing.assert_array_equal(times[0], times[1])
    validate = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "data", "validate", "folder", "--root",
         str(root)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert validate.returncode == 1
    assert "link outside.mp4: symlink resolves outside the dataset root" in validate.stdout

"""Hostile inputs through the real `features` command, and the per-video decode timeout.

One folder dataset holds every case of tests/hostile.py plus links and a folder named like a
video; `cli.py features` must finish, record each case as the case says (a failed modality
with a clear error naming the file, or real features), never read what lies outside the root.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extract.errors import DecodeError
from extract.video.audio import read_audio
from extract.video.frames import DecodeLimits, read_gray_stacks, read_rgb
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from tests.hostile import (
    ALL,
    HOSTILE,
    clip,
    symlink,
    video_named_directory,
)
from tests.profiles import CHEAP_PROFILE

ROOT = Path(__file__).resolve().parent.parent
CLASS = "hostile"
MAX_SECONDS = 20

# The tiny profile of tests/test_features.py with DIS flow (flow sees fixed-size frames
# whatever the file, and DIS skips the torch TV-L1 compile, ~30 s per worker here);
# max_seconds 20 keeps the 3-hour file cheap.
PROFILE = f"""
dataset: {{kind: folder}}
limits: {{max_seconds: {MAX_SECONDS}, timeout_s: 120}}
modalities:
  rgb: {{positions: 3, resize_short: 64, crop: 56, backbone: {{name: efficientnet_lite0}}}}
  flow:
    positions: 2
    frames_per_stack: 3
    size: [64, 48]
    backend: dis
    backbone: {{name: efficientnet_lite0}}
  audio: {{positions: 3, backbone: {{name: logmel}}}}
"""


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
    profile.write_text(PROFILE)
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
            assert times[row][mask[row]].max() < MAX_SECONDS, case.name


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


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s of video and sound: enough packets that a deadline is checked many times."""
    return clip(tmp_path_factory.mktemp("long") / "long.mp4", seconds=40, fps=10)


@pytest.mark.parametrize("decode", ["rgb", "stacks", "audio"])
def test_decoding_past_the_timeout_is_a_decode_error(long_clip: Path, decode: str) -> None:
    readers = {
        "rgb": lambda limits: read_rgb(long_clip, 8, 64, 56, limits),
        "stacks": lambda limits: read_gray_stacks(long_clip, 4, 3, (64, 48), limits),
        "audio": lambda limits: read_audio(long_clip, 16000, limits),
    }
    result = readers[decode](DecodeLimits(timeout_s=60))
    assert result is not None
    with pytest.raises(DecodeError, match=r"long\.mp4: decoding exceeded the 1e-06 s per-video "
                                          r"limit \(limits\.timeout_s\)"):
        readers[decode](DecodeLimits(timeout_s=1e-6))


def test_profile_timeout_reaches_the_decoders(long_clip: Path, tmp_path: Path) -> None:
    profile_path = tmp_path / "instant.yaml"
    profile_path.write_text(PROFILE.replace("timeout_s: 120", "timeout_s: 0.000001"))
    profile = load_profile(profile_path)
    extractor = VideoFeatureExtractor(profile["modalities"], profile["limits"], "cpu")
    results = extractor.extract(long_clip)
    for name in ALL:
        assert results[name]["status"] == Status.FAILED
        assert "per-video limit (limits.timeout_s)" in results[name]["error"]


def test_features_never_reads_list_entries_outside_the_root(tmp_path: Path) -> None:
    """UCF101 lists naming `..` and absolute paths (to a real clip) are left out, counted."""
    root = tmp_path / "ucf"
    outside = clip(tmp_path / "outside.mp4")
    for name in ("Archery", "Bowling"):
        (root / name).mkdir(parents=True)
        clip(root / name / f"v_{name}_g01_c01.mp4")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Archery\n2 Bowling\n")
    hostile_lines = f"../outside.mp4 1\nArchery/../../outside.mp4 1\n{outside} 1\n"
    for split in (1, 2, 3):
        (lists / f"trainlist0{split}.txt").write_text(
            f"Archery/v_Archery_g01_c01.mp4 1\n{hostile_lines}")
        (lists / f"testlist0{split}.txt").write_text("Bowling/v_Bowling_g01_c01.mp4\n")
    profile = tmp_path / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    result = run_features(kind="ucf101", root=root, profile=load_profile(profile),
                          out=tmp_path / "ucf.zarr", dataset="ucf", workers=1, device="cpu",
                          progress=False)
    assert result.skipped_unsafe == 9  # 3 lines in each of the 3 trainlists
    assert result.store.ids == ["Archery/v_Archery_g01_c01.mp4", "Bowling/v_Bowling_g01_c01.mp4"]
    assert result.run.total == 2 and result.run.counts["failed"] == 0

"""Hostile inputs in this process: the per-video decode timeout, and dataset lists naming
files outside the root (a run on an in-process Dask cluster).

The run of the real `features` command over every case of tests/hostile.py is in
tests/system/test_hostile_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extract.errors import DecodeError
from extract.video.audio import read_audio
from extract.video.frames import DecodeLimits, read_gray_stacks, read_rgb
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.format import Status
from tests.hostile import ALL, clip
from tests.profiles import CHEAP_PROFILE, HOSTILE_PROFILE


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
    profile_path.write_text(HOSTILE_PROFILE.replace("timeout_s: 120", "timeout_s: 0.000001"))
    profile = load_profile(profile_path)
    extractor = VideoFeatureExtractor(profile["modalities"], profile["limits"], "cpu")
    results = extractor.extract(long_clip)
    for name in ALL:
        assert results[name]["status"] == Status.FAILED
        assert "per-video limit (limits.timeout_s)" in results[name]["error"]


def test_features_never_reads_list_entries_outside_the_root(tmp_path: Path,
                                                            inprocess_scheduler: str) -> None:
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
                          out=tmp_path / "ucf.zarr", dataset="ucf",
                          scheduler=inprocess_scheduler, device="cpu", progress=False)
    assert result.skipped_unsafe == 9  # 3 lines in each of the 3 trainlists
    assert result.store.ids == ["Archery/v_Archery_g01_c01.mp4", "Bowling/v_Bowling_g01_c01.mp4"]
    assert result.run.total == 2 and result.run.counts["failed"] == 0

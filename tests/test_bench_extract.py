"""bench/extract.py's peer-style pipeline and UCF101-like clips, on one tiny clip: the clip is
what UCF101's files are, the peer samples the frames ours samples, and its features have our
shapes and agree with ours where the two pipelines do the same job (so the bench cannot
silently compare different work)."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.extract as bench_extract
from bench.extract_ours import STAGES
from bench.peer_extract import init_worker, peer_video, read_frames
from bench.ucf_clips import FPS, HEIGHT, WIDTH, write_ucf_like_clip
from extract.video.frames import probe, read_gray_stacks, read_rgb
from extract.video.media import open_media
from pipeline.datasets.generated.toy import generate_toy
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.profiles import MODALITY_DEFAULTS

# A small profile: 5 RGB frames (UCF101's 256/224), 3 stacks of 3 frames at 160x120 with the
# toy profile's light TV-L1, 2 audio patches.
MODALITIES = {
    "rgb": {**MODALITY_DEFAULTS["rgb"], "positions": 5},
    "flow": {**MODALITY_DEFAULTS["flow"], "positions": 3, "frames_per_stack": 3,
             "size": [160, 120], "params": {"nscales": 3, "warps": 2, "outer_iterations": 3,
                                            "inner_iterations": 10}},
    "audio": {**MODALITY_DEFAULTS["audio"], "positions": 2},
}
LIMITS = {"max_seconds": 60.0, "max_pixels": 4096 * 2160}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ucf_like_clip(tmp_path_factory.mktemp("ucf") / "v_Bench_g01_c01.avi", 3,
                               seconds=2.2)


def test_the_clip_is_shaped_like_ucf101(clip: Path) -> None:
    info = probe(clip)
    assert (info.width, info.height, info.fps) == (WIDTH, HEIGHT, FPS)
    assert 2.1 <= info.duration_s <= 2.4 and info.has_audio
    with open_media(clip) as container:
        assert container.format.name == "avi"
        codecs = {s.type: s.codec_context.name for s in container.streams}
        assert codecs["video"] == "mpeg4" and codecs["audio"].startswith("mp3")
        assert container.streams.audio[0].channels == 2


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b).mean())


def test_the_peer_reads_the_frames_ours_reads(clip: Path) -> None:
    rgb, flow = MODALITIES["rgb"], MODALITIES["flow"]
    frames, stacks, indices = read_frames(clip, rgb, flow)
    ours = read_rgb(clip, rgb["positions"], rgb["resize_short"], rgb["crop"])
    np.testing.assert_array_equal(indices, np.floor(ours.times * FPS + 1e-3))
    assert frames.shape == ours.frames.shape
    # the same pictures through two scalers and colour conversions: far closer to each other
    # than to the next sampled frame
    assert _distance(frames, ours.frames) < 0.4 * _distance(frames[1:], ours.frames[:-1])
    grey = read_gray_stacks(clip, flow["positions"], flow["frames_per_stack"],
                            tuple(flow["size"]))
    assert stacks.shape == grey.stacks.shape == (3, 3, 120, 160)
    # the last stack ends on the clip's last frame in both
    assert _distance(stacks, grey.stacks) < 0.4 * _distance(stacks[1:], grey.stacks[:-1])


def test_peer_features_have_our_shapes_and_agree(clip: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        init_worker(MODALITIES, LIMITS, str(tmp_path))
        peer = peer_video(str(clip))
    finally:
        torch.set_num_threads(threads)
    ours = VideoFeatureExtractor(MODALITIES, LIMITS, "cpu").extract(clip)
    assert set(peer["seconds"]) == set(STAGES)
    for name in ("rgb", "flow", "audio"):
        theirs, mine = peer["features"][name], ours[name]["features"].astype(np.float32)
        assert theirs.shape == mine.shape
        assert (tmp_path / f"{clip.stem}_{name}.npy").is_file()
        cosine = (theirs * mine).sum(1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(
            mine, axis=1)
        # audio is the same computation; RGB differs by the scaler, flow by the solver (and a
        # little TV-L1 difference on the first, nearly still, pair moves a stack a lot)
        low, mean = {"rgb": (0.9, 0.95), "flow": (0.6, 0.85), "audio": (0.999, 0.999)}[name]
        assert cosine.min() > low and cosine.mean() > mean, (name, cosine)



@pytest.mark.slow
def test_the_toy_report_counts_the_set_it_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench/extract.py --toy` on a set it generates (12 clips instead of 288): both cluster
    sizes extract the asked clips, and the whole-set estimate counts the set; it once
    counted 0, looking after the temporary set was gone."""
    monkeypatch.setattr(bench_extract, "generate_toy", lambda out, videos, progress:
                        generate_toy(out, seed=3, videos=12, progress=False))
    report = bench_extract.toy_report(Namespace(root=None, videos=3, json=True))
    assert report["videos_in_toy_set"] == 12
    for run in report["runs"].values():
        assert run["videos"] == 3 and run["counts"]["rgb"]["done"] == 3
    assert report["estimated_toy_set_minutes_2_workers"] == round(
        12 / report["videos_per_s_2_workers"] / 60, 1)
    assert set(report["stage_seconds"]) == {"decode", "flow", "cnn", "audio", "write"}

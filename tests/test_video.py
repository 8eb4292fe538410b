"""Decoding: the right frames at the right times, in the right shape and orientation; audio
pitch; every kind of broken file is a one-line DecodeError naming the file; limits hold."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from extract.errors import DecodeError
from extract.video.audio import read_audio
from extract.video.encode import write_video
from extract.video.frames import DecodeLimits, probe, read_gray_stacks, read_rgb, segment_centres
from extract.video.sampler import sample_runs
from tests.synth_video import (
    NON_REFERENCE_B_FRAMES,
    frame_index_of,
    indexed_frame,
    make_clip,
    tone,
)

FPS = 25.0


def expected_indices(duration_s: float, k: int) -> list[int]:
    """The frame whose interval [i/fps, (i+1)/fps) holds each segment centre (a centre on a
    boundary, up to rounding, belongs to the frame starting there)."""
    return [math.floor(c * FPS + 1e-6) for c in segment_centres(duration_s, k)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        # default GOP (250): one keyframe, the sampler must decode on
        "plain": make_clip(root / "plain.mp4", 100, fps=FPS, tone_hz=440.0),
        # a keyframe every 5 frames over 12 s: sparse positions are reached by seeking
        "seekable": make_clip(root / "seekable.mp4", 300, fps=FPS, keyframe_interval=5),
        "short": make_clip(root / "short.mp4", 5, fps=FPS),
        # 3 of every 4 frames are non-reference B-frames, which the sampler may skip
        "bframes": make_clip(
            root / "bframes.mp4", 200, fps=FPS, encoder_options=NON_REFERENCE_B_FRAMES
        ),
        # both at once: seeks that land among non-reference frames
        "bframes_seekable": make_clip(
            root / "bframes_seekable.mp4",
            300,
            fps=FPS,
            keyframe_interval=8,
            encoder_options=NON_REFERENCE_B_FRAMES,
        ),
    }


def test_segment_centres_are_tsn_uniform() -> None:
    np.testing.assert_allclose(segment_centres(10.0, 4), [1.25, 3.75, 6.25, 8.75])
    with pytest.raises(ValueError):
        segment_centres(0.0, 4)


def test_probe_reports_stream_facts(clips: dict[str, Path]) -> None:
    info = probe(clips["plain"])
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == pytest.approx(FPS)
    assert info.duration_s == pytest.approx(100 / FPS, abs=1 / FPS)
    assert info.frame_count == 100
    assert info.has_audio and info.audio_sample_rate == 16000
    assert not probe(clips["seekable"]).has_audio


@pytest.mark.parametrize("k", [1, 7, 32])
def test_read_rgb_returns_frame_containing_each_centre(clips: dict[str, Path], k: int) -> None:
    sampled = read_rgb(clips["plain"], k)
    assert sampled.frames.shape == (k, 224, 224, 3) and sampled.frames.dtype == np.uint8
    indices = expected_indices(100 / FPS, k)
    assert [frame_index_of(f) for f in sampled.frames] == indices
    np.testing.assert_allclose(sampled.times, np.array(indices) / FPS, atol=1e-3)
    assert sampled.times.dtype == np.float32


def _runs(path: Path, starts: list[float], run_length: int):
    """Call the sampler directly to see which path (seek or decode on) it took."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        window = float(stream.duration * stream.time_base)

        def convert(frame: av.VideoFrame) -> np.ndarray:
            return frame.to_ndarray(format="rgb24")

        return sample_runs(container, stream, starts, run_length, convert, window, path.name)


def test_sparse_positions_seek_and_dense_positions_decode_on(clips: dict[str, Path]) -> None:
    duration = 300 / FPS
    sparse = _runs(clips["seekable"], segment_centres(duration, 4).tolist(), 1)
    dense = _runs(clips["seekable"], segment_centres(duration, 150).tolist(), 1)
    one_keyframe = _runs(clips["plain"], segment_centres(100 / FPS, 4).tolist(), 1)
    assert sparse.seeks >= 3 and sparse.frames_decoded < 100
    assert dense.seeks == 0 and one_keyframe.seeks == 0
    for result, k, n in ((sparse, 4, 300), (dense, 150, 300), (one_keyframe, 4, 100)):
        got = [frame_index_of(run.pixels[0]) for run in result.runs]
        assert got == [i % 512 for i in expected_indices(n / FPS, k)]


def test_every_k_is_exact_and_seeks_at_most_once_per_position(clips: dict[str, Path]) -> None:
    """Seek targets near keyframes (decode vs presentation times differ) must not loop."""
    for k in range(2, 41, 3):
        result = _runs(clips["seekable"], segment_centres(300 / FPS, k).tolist(), 1)
        assert result.seeks <= k
        got = [frame_index_of(run.pixels[0]) for run in result.runs]
        assert got == expected_indices(300 / FPS, k)


def test_skipped_non_reference_frames_never_change_the_answer(clips: dict[str, Path]) -> None:
    duration = 200 / FPS
    for k in (1, 5, 13, 40, 200):
        result = _runs(clips["bframes"], segment_centres(duration, k).tolist(), 1)
        got = [frame_index_of(run.pixels[0]) for run in result.runs]
        assert got == expected_indices(duration, k)
    sparse = _runs(clips["bframes"], segment_centres(duration, 5).tolist(), 1)
    assert sparse.seeks == 0 and sparse.frames_decoded < 100  # refs + a few near each position
    stacks = read_gray_stacks(clips["bframes"], 7, frames_per_stack=6, size=(64, 48)).stacks
    for stack in stacks:
        indices = [frame_index_of(g) for g in stack]
        assert indices == list(range(indices[0], indices[0] + 6))
    tail = read_gray_stacks(clips["bframes"], 200, frames_per_stack=6, size=(64, 48)).stacks[-1]
    assert [frame_index_of(g) for g in tail] == list(range(194, 200))


def test_seeking_among_skipped_non_reference_frames_is_exact(clips: dict[str, Path]) -> None:
    duration = 300 / FPS
    seeks = 0
    for k in range(2, 30):
        result = _runs(clips["bframes_seekable"], segment_centres(duration, k).tolist(), 1)
        seeks += result.seeks
        got = [frame_index_of(run.pixels[0]) for run in result.runs]
        assert got == expected_indices(duration, k), k
        stacks = read_gray_stacks(clips["bframes_seekable"], k, 6, size=(64, 48)).stacks
        for stack in stacks:
            indices = [frame_index_of(g) for g in stack]
            assert indices == list(range(indices[0], indices[0] + 6)), k
    assert seeks > 0


def test_seek_path_through_public_reader(clips: dict[str, Path]) -> None:
    sampled = read_rgb(clips["seekable"], 5, resize_short=128, crop=96)
    assert sampled.frames.shape == (5, 96, 96, 3)
    assert [frame_index_of(f) for f in sampled.frames] == expected_indices(300 / FPS, 5)


def test_fewer_frames_than_k_repeat_frames(clips: dict[str, Path]) -> None:
    sampled = read_rgb(clips["short"], 12)
    got = [frame_index_of(f) for f in sampled.frames]
    assert got == expected_indices(5 / FPS, 12)
    assert sorted(set(got)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("resize_short", "crop", "shape"),
    [
        (256, 224, (224, 224, 3)),
        (256, (200, 100), (100, 200, 3)),
        (256, None, (256, 341, 3)),
        (None, None, (48, 64, 3)),
        (96, 96, (96, 96, 3)),
    ],
)
def test_resize_and_crop_shapes(
    clips: dict[str, Path], resize_short: int | None, crop, shape: tuple[int, int, int]
) -> None:
    sampled = read_rgb(clips["short"], 2, resize_short=resize_short, crop=crop)
    assert sampled.frames.shape == (2, *shape)
    assert [frame_index_of(f) for f in sampled.frames] == expected_indices(5 / FPS, 2)


def test_centre_crop_keeps_the_middle(tmp_path: Path) -> None:
    """A frame with a white left half: the centre crop of a wide frame has its edge centred."""
    image = np.zeros((40, 160, 3), np.uint8)
    image[:, :80] = 255
    path = tmp_path / "half.mp4"
    write_video(path, [image] * 3, FPS)
    frame = read_rgb(path, 1, resize_short=40, crop=40).frames[0].astype(int)
    assert frame[:, :18].min() > 200 and frame[:, 22:].max() < 50


def test_odd_sizes_are_padded_to_even(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "odd.mp4", 4, size=(33, 17), fps=FPS)
    info = probe(path)
    assert (info.width, info.height) == (34, 18)
    frames = read_rgb(path, 4, resize_short=None, crop=None).frames
    assert [frame_index_of(f) for f in frames] == [0, 1, 2, 3]


def test_gray_stacks_are_consecutive_and_centred(clips: dict[str, Path]) -> None:
    k, m = 5, 6
    sampled = read_gray_stacks(clips["plain"], k, frames_per_stack=m, size=(340, 256))
    assert sampled.stacks.shape == (k, m, 256, 340) and sampled.stacks.dtype == np.uint8
    for stack, centre, time in zip(
        sampled.stacks, segment_centres(100 / FPS, k), sampled.times, strict=True
    ):
        indices = [frame_index_of(g) for g in stack]
        assert indices == list(range(indices[0], indices[0] + m))
        assert abs(time - centre) <= 1 / FPS
        assert abs((indices[0] + indices[-1]) / 2 / FPS - time) < 1e-3


def test_gray_stacks_shift_back_at_the_end_and_pad_short_videos(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    dense = read_gray_stacks(clips["short"], 2, frames_per_stack=4, size=(64, 48))
    assert [[frame_index_of(g) for g in s] for s in dense.stacks] == [[0, 1, 2, 3], [1, 2, 3, 4]]
    padded = read_gray_stacks(clips["short"], 1, frames_per_stack=8, size=(64, 48))
    assert [frame_index_of(g) for g in padded.stacks[0]] == [0, 1, 2, 3, 4, 4, 4, 4]
    one_frame = make_clip(tmp_path / "one.mp4", 1, fps=FPS)
    with pytest.raises(DecodeError, match=r"one\.mp4.*too short for optical flow"):
        read_gray_stacks(one_frame, 3)


def test_gray_stacks_through_seek_path(clips: dict[str, Path]) -> None:
    sampled = read_gray_stacks(clips["seekable"], 3, frames_per_stack=6, size=(128, 96))
    for stack, centre in zip(sampled.stacks, segment_centres(300 / FPS, 3), strict=True):
        indices = [frame_index_of(g) for g in stack]
        assert indices == list(range(indices[0], indices[0] + 6))
        assert abs((indices[0] + indices[-1]) / 2 - centre * FPS) <= 1


def test_audio_tone_pitch_survives(clips: dict[str, Path]) -> None:
    audio = read_audio(clips["plain"])
    assert audio is not None and audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size == pytest.approx(4.0 * 16000, abs=2048)
    assert np.abs(audio).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    peak_hz = np.argmax(spectrum) * 16000 / audio.size
    assert peak_hz == pytest.approx(440.0, abs=3.0)


def test_audio_resampled_to_requested_rate(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "tone48k.mp4", 50, fps=FPS, tone_hz=1000.0, sample_rate=48000)
    audio = read_audio(path, sample_rate=16000)
    assert audio.size == pytest.approx(2.0 * 16000, abs=2048)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    assert np.argmax(spectrum) * 16000 / audio.size == pytest.approx(1000.0, abs=3.0)


def test_video_without_audio_gives_none(clips: dict[str, Path]) -> None:
    assert read_audio(clips["seekable"]) is None


def _corner_means(image: np.ndarray) -> dict[str, float]:
    """Mean level of the 8x8 corners: top-left, top-right, bottom-left, bottom-right."""
    corners = {"tl": (0, 0), "tr": (0, -8), "bl": (-8, 0), "br": (-8, -8)}
    return {
        name: float(image[row : row + 8 or None, col : col + 8 or None].mean())
        for name, (row, col) in corners.items()
    }


@pytest.mark.parametrize(("rotation", "corner"), [(0, "tl"), (90, "tr"), (180, "br"), (270, "bl")])
def test_rotation_is_honoured(tmp_path: Path, rotation: int, corner: str) -> None:
    """A red block in the stored top-left corner lands where a clockwise display rotation
    puts it, in RGB frames and grey stacks alike."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:16, :16] = (255, 0, 0)
    path = tmp_path / f"rot{rotation}.mp4"
    write_video(path, [image] * 3, FPS, rotation=rotation or None)
    info = probe(path)
    shown_hw = (64, 48) if rotation in (90, 270) else (48, 64)
    assert info.rotation == rotation and (info.height, info.width) == shown_hw
    frame = read_rgb(path, 1, resize_short=None, crop=None).frames[0]
    assert frame.shape == (*shown_hw, 3)
    red = _corner_means(frame[..., 0])
    grey = _corner_means(read_gray_stacks(path, 1, 2, size=shown_hw[::-1]).stacks[0, 0])
    for levels, bright in ((red, 200), (grey, 60)):
        assert levels[corner] > bright
        assert all(level < 20 for name, level in levels.items() if name != corner)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_files_raise_decode_error_naming_file(
    tmp_path: Path, fraction: float, faststart: bool
) -> None:
    whole = make_clip(tmp_path / "whole.mp4", 50, fps=FPS, tone_hz=300.0, faststart=faststart)
    data = whole.read_bytes()
    broken = tmp_path / "cut.mp4"
    broken.write_bytes(data[: int(len(data) * fraction)])
    if faststart and fraction == 0.9:
        # index intact, 90% of the data: positions early enough still decode, late ones fail
        assert [frame_index_of(f) for f in read_rgb(broken, 2).frames] == [12, 37]
        with pytest.raises(DecodeError, match=r"cut\.mp4: truncated or corrupt"):
            read_rgb(broken, 50)
        return
    with pytest.raises(DecodeError, match=r"cut\.mp4"):
        read_rgb(broken, 8)
    with pytest.raises(DecodeError, match=r"cut\.mp4"):
        read_gray_stacks(broken, 8)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        samples = tone(0.5, 440.0)
        for start in range(0, samples.size, 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 1024], format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("zero.mp4", lambda p: p.write_bytes(b""), "empty file"),
        ("noise.mp4", lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)), "not a"),
        ("notes.mp4", lambda p: p.write_text("this is not a video\n" * 20), "not a"),
        ("absent.mp4", lambda p: None, "no such file"),
        ("sound.m4a", _audio_only, "no video stream"),
    ],
)
def test_bad_inputs_raise_one_line_decode_error(tmp_path: Path, name: str, make, message) -> None:
    path = tmp_path / name
    make(path)
    for read in (probe, lambda p: read_rgb(p, 4), lambda p: read_gray_stacks(p, 4)):
        with pytest.raises(DecodeError) as caught:
            read(path)
        text = str(caught.value)
        assert name in text and message in text and "\n" not in text
    if name == "sound.m4a":
        assert read_audio(path).size == pytest.approx(8000, abs=1024)
    else:
        with pytest.raises(DecodeError, match=name):
            read_audio(path)


def test_max_seconds_limits_what_is_sampled(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "long.mp4", 100, fps=FPS, tone_hz=500.0)
    limits = DecodeLimits(max_seconds=1.0)
    sampled = read_rgb(path, 8, limits=limits)
    assert sampled.times.max() < 1.0
    assert [frame_index_of(f) for f in sampled.frames] == expected_indices(1.0, 8)
    stacks = read_gray_stacks(path, 4, limits=limits)
    assert max(frame_index_of(g) for s in stacks.stacks for g in s) < 25
    assert read_audio(path, limits=limits).size == 16000


def test_max_pixels_refuses_large_frames(clips: dict[str, Path]) -> None:
    with pytest.raises(DecodeError, match=r"plain\.mp4: 64x48 frames exceed"):
        read_rgb(clips["plain"], 2, limits=DecodeLimits(max_pixels=1000))


def _other_container(path: Path, container_format: str, codec: str, n: int) -> Path:
    """Indexed frames in a container write_video does not make (mkv, avi, raw h264)."""
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "18"} if codec == "h264" else {"qscale": "2"}
        for index in range(n):
            image = indexed_frame(index)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    ("container_format", "codec", "suffix", "tolerance"),
    [
        ("matroska", "h264", "mkv", 0),
        ("avi", "mpeg4", "avi", 0),
        # no timestamps and no duration at all: length from counting packets, frames approximate
        ("h264", "h264", "h264", 1),
    ],
)
def test_other_containers(
    tmp_path: Path, container_format: str, codec: str, suffix: str, tolerance: int
) -> None:
    path = _other_container(tmp_path / f"clip.{suffix}", container_format, codec, 50)
    assert probe(path).duration_s == pytest.approx(2.0, abs=0.05)
    got = [frame_index_of(f) for f in read_rgb(path, 6).frames]
    for index, expected in zip(got, expected_indices(2.0, 6), strict=True):
        assert abs(index - expected) <= tolerance
    for stack in read_gray_stacks(path, 3, 4, size=(64, 48)).stacks:
        indices = [frame_index_of(g) for g in stack]
        assert indices == list(range(indices[0], indices[0] + 4))


def test_non_square_pixels_come_out_at_displayed_shape(tmp_path: Path) -> None:
    """A 64x48 picture with 2:1 pixels is shown 128x48 (anamorphic DVD-style video)."""
    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(indexed_frame(index), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert (info.width, info.height) == (128, 48)
    frames = read_rgb(path, 5, resize_short=48, crop=None).frames
    assert frames.shape == (5, 48, 128, 3)
    assert [frame_index_of(f) for f in frames] == [0, 1, 2, 3, 4]

"""Which stream is decoded: the one a player would play, never cover art or a still that a
file lists first; and a stream FFmpeg cannot seek in is read from the start, not failed.

Every file here is real and made by the test: the real footage is one clip's packets remuxed
unchanged, so frames and features decoded from the hostile file must equal the clip's own.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.stream import Disposition

from extract.errors import DecodeError
from extract.video.audio import read_audio
from extract.video.frames import probe, read_gray_stacks, read_rgb, segment_centres
from extract.video.sampler import SeekError, sample_runs
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.profiles import load_profile
from pipeline.store.create import create_store
from pipeline.store.feature_store import open_store
from pipeline.store.format import ModalitySpec, Status
from pipeline.store.rows import pad_row
from pipeline.store.summary import format_summary, summarize
from tests.hostile import audio_only
from tests.profiles import CHEAP_PROFILE
from tests.synth_video import frame_index_of, indexed_frame, make_clip, tone

FPS = 25
FRAMES = 50
STILL_LEVEL = 200  # the cover / still picture: one flat grey, unlike every indexed frame


def remux(path: Path, container_format: str, source: Path, still: str | None = None,
          disposition: Disposition | None = None) -> Path:
    """Every stream of `source`, packets unchanged, after a stream 0 holding one flat grey
    picture coded with `still` (flagged `disposition`) when one is asked for."""
    with av.open(str(path), "w", format=container_format) as container, \
            av.open(str(source)) as reader:
        if still is not None:
            picture = container.add_stream(still, rate=FPS)
            picture.width, picture.height = 64, 48
            picture.pix_fmt = {"png": "rgb24", "mjpeg": "yuvj420p"}.get(still, "yuv420p")
            if disposition is not None:
                picture.disposition = disposition
        copies = {s.index: container.add_stream_from_template(s) for s in reader.streams}
        if still is not None:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), STILL_LEVEL, np.uint8),
                                               "rgb24")
            frame.pts = 0
            container.mux([*picture.encode(frame), *picture.encode(None)])
        for packet in reader.demux():
            if packet.dts is not None:
                packet.stream = copies[packet.stream.index]
                container.mux(packet)
    return path


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the mp4 boxes laid end to end in data[start:end]."""
    found, offset = [], start
    while offset < end:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        found.append((kind, offset, size))
        offset += size
    return found


def cover_first(source: Path, path: Path) -> Path:
    """`source` with a PNG cover picture (an mp4 `covr`) that demuxes as stream 0.

    FFmpeg's muxer writes the cover into moov/udta after the tracks; the demuxer makes its
    stream when it meets udta, so putting udta first inside moov (box order is free there and
    the sample offsets point into mdat, which does not move) makes the cover stream 0.
    """
    remux(path, "mp4", source, "png", Disposition.attached_pic)
    data = bytearray(path.read_bytes())
    _, moov, size = next(box for box in _boxes(data, 0, len(data)) if box[0] == b"moov")
    children = _boxes(data, moov + 8, moov + size)
    ordered = sorted(children, key=lambda box: (box[0] != b"mvhd", box[0] != b"udta"))
    data[moov + 8 : moov + size] = b"".join(data[o : o + s] for _, o, s in ordered)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("footage") / "footage.mp4", FRAMES, fps=FPS,
                     tone_hz=440.0)


@pytest.fixture(scope="module")
def hostile(footage: Path) -> dict[str, Path]:
    """Each hostile file, and the footage alone remuxed the same way (named `plain ...`)."""
    root = footage.parent
    return {
        "cover first.mp4": cover_first(footage, root / "cover first.mp4"),
        "still first.mp4": remux(root / "still first.mp4", "mp4", footage, "h264"),
        "still first.mkv": remux(root / "still first.mkv", "matroska", footage, "mjpeg"),
        "plain.mp4": remux(root / "plain.mp4", "mp4", footage),
        "plain.mkv": remux(root / "plain.mkv", "matroska", footage),
    }


def test_the_files_are_as_hostile_as_described(hostile: dict[str, Path]) -> None:
    """Stream 0 of each is the still; FFmpeg's own choice takes the mp4's still (its
    'default' flag outranks frame count), so `streams.best` alone would not do."""
    for name, path in hostile.items():
        if name.startswith("plain"):
            continue
        with av.open(str(path)) as container:
            first = container.streams.video[0]
            assert first.index == 0 and len(container.streams.video) == 2, name
            if name.startswith("cover"):
                assert first.disposition & Disposition.attached_pic
            picture = next(container.decode(first)).to_ndarray(format="rgb24")
            assert np.abs(picture.astype(int) - STILL_LEVEL).max() <= 8, name
            if name == "still first.mp4":
                assert container.streams.best("video").index == 0


@pytest.mark.parametrize("name", ["cover first.mp4", "still first.mp4", "still first.mkv"])
def test_frames_come_from_the_real_stream(hostile: dict[str, Path], name: str) -> None:
    path, footage = hostile[name], hostile["plain" + Path(name).suffix]
    rgb, plain = read_rgb(path, 3, None, None), read_rgb(footage, 3, None, None)
    assert rgb.stream == 1 and plain.stream == 0
    assert len({frame_index_of(frame) for frame in rgb.frames}) == 3  # moving, not the still
    np.testing.assert_array_equal(rgb.frames, plain.frames)
    np.testing.assert_array_equal(rgb.times, plain.times)
    stacks = read_gray_stacks(path, 2, 3, (64, 48))
    assert stacks.stream == 1
    np.testing.assert_array_equal(stacks.stacks, read_gray_stacks(footage, 2, 3, (64, 48)).stacks)
    info, reference = probe(path), probe(footage)
    assert (info.frame_count, info.duration_s, info.fps) == (
        reference.frame_count, reference.duration_s, reference.fps)
    assert info.has_audio and info.audio_sample_rate == 16000


def test_extractor_records_the_stream_and_its_features_are_the_real_ones(
        footage: Path, hostile: dict[str, Path], tmp_path: Path) -> None:
    profile_path = tmp_path / "cheap.yaml"
    profile_path.write_text(CHEAP_PROFILE)
    profile = load_profile(profile_path)
    extractor = VideoFeatureExtractor(profile["modalities"], profile["limits"], "cpu")
    got = extractor.extract(hostile["cover first.mp4"])
    reference = extractor.extract(footage)
    for name in ("rgb", "flow"):
        assert got[name]["status"] == Status.DONE, got[name]["error"]
        assert (got[name]["stream"], reference[name]["stream"]) == (1, 0)
        np.testing.assert_array_equal(got[name]["features"], reference[name]["features"])
        row = pad_row(got[name], 4, extractor.dim(name))  # the store ignores the extra key
        assert row.status == Status.DONE and row.mask.sum() == len(got[name]["features"])
    np.testing.assert_array_equal(got["audio"]["features"], reference["audio"]["features"])


def test_a_cover_picture_alone_is_no_video(tmp_path: Path) -> None:
    """An m4a song: AAC and its cover picture, no video."""
    sound = audio_only(tmp_path / "sound.m4a")
    path = remux(tmp_path / "song.m4a", "mp4", sound, "png", Disposition.attached_pic)
    for read in (probe, lambda p: read_rgb(p, 3), lambda p: read_gray_stacks(p, 2)):
        with pytest.raises(DecodeError) as caught:
            read(path)
        assert str(caught.value) == (f"{path}: no video stream; only a cover picture "
                                     "(attached_pic)")
    assert read_audio(path) is not None


def _two_audio_streams(path: Path) -> Path:
    """mkv: stream 0 a 440 Hz AAC track, stream 1 a 1000 Hz FLAC stereo track."""
    rate = 16000
    low, high = tone(2.0, 440.0), tone(2.0, 1000.0)
    with av.open(str(path), "w", format="matroska") as container:
        aac = container.add_stream("aac", rate=rate, layout="mono")
        flac = container.add_stream("flac", rate=rate, layout="stereo")
        for start in range(0, low.size, 1024):
            mono = av.AudioFrame.from_ndarray(low[None, start : start + 1024], "flt", "mono")
            pcm = (np.repeat(high[start : start + 1024], 2) * 32767).astype(np.int16)
            stereo = av.AudioFrame.from_ndarray(pcm[None], "s16", "stereo")
            for stream, frame in ((aac, mono), (flac, stereo)):
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                container.mux(stream.encode(frame))
        container.mux(aac.encode(None))
        container.mux(flac.encode(None))
    return path


def _unknown_codec(source: Path, path: Path, codec_id: bytes) -> Path:
    """`source` with one Matroska CodecID renamed to a codec no FFmpeg knows."""
    data = source.read_bytes()
    assert data.count(codec_id) == 1
    path.write_bytes(data.replace(codec_id, b"A_" + b"Z" * (len(codec_id) - 2)))
    return path


def _peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * 16000 / samples.size)


def test_audio_skips_a_stream_that_cannot_be_decoded(tmp_path: Path) -> None:
    both = _two_audio_streams(tmp_path / "two.mkv")
    assert _peak_hz(read_audio(both)) == pytest.approx(440.0, abs=3.0)  # FFmpeg's best
    first_unknown = _unknown_codec(both, tmp_path / "first unknown.mkv", b"A_AAC")
    with av.open(str(first_unknown)) as container:
        assert container.streams.audio[0].codec_context is None
        assert container.streams.best("audio").index == 0  # FFmpeg would pick it anyway
    audio = read_audio(first_unknown)
    assert audio.size == pytest.approx(2.0 * 16000, abs=1024)
    assert _peak_hz(audio) == pytest.approx(1000.0, abs=3.0)
    none_known = _unknown_codec(first_unknown, tmp_path / "none known.mkv", b"A_FLAC")
    with pytest.raises(DecodeError) as caught:
        read_audio(none_known)
    assert str(caught.value) == (f"{none_known}: no decodable audio stream; only stream 0 "
                                 "with a codec FFmpeg cannot decode, stream 1 with a codec "
                                 "FFmpeg cannot decode")


def raw_h264(path: Path, frames: int) -> Path:
    """An h264 elementary stream: no container, no timestamps, no index. FFmpeg cannot seek
    in it ("operation not permitted")."""
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("h264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = FPS
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(indexed_frame(index), "rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def unseekable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 s, so positions lie more than the 10 s apart that makes an index-less stream seek."""
    return raw_h264(tmp_path_factory.mktemp("raw") / "raw.h264", 24 * FPS)


def test_a_stream_that_cannot_seek_is_read_from_the_start(unseekable: Path) -> None:
    with av.open(str(unseekable)) as container, pytest.raises(av.error.PermissionError):
        container.seek(12 * FPS, stream=container.streams.video[0])
    rgb = read_rgb(unseekable, 2, None, None)
    expected = [math.floor(c * FPS) % 512 for c in segment_centres(24.0, 2)]  # colour code
    assert all(abs(frame_index_of(f) - e) <= 1 for f, e in zip(rgb.frames, expected, strict=True))
    for stack in read_gray_stacks(unseekable, 2, 3, (64, 48)).stacks:
        indices = [frame_index_of(grey) for grey in stack]
        assert indices == list(range(indices[0], indices[0] + 3))


class _NoSeek:
    """An open container whose seek fails as FFmpeg's does for a stream it cannot seek in."""

    def __init__(self, container: av.container.InputContainer) -> None:
        self._container = container

    def __getattr__(self, name: str) -> object:
        return getattr(self._container, name)

    def seek(self, *_args: object, **_kwargs: object) -> None:
        raise av.error.PermissionError(1, "Operation not permitted")


def test_a_failed_seek_names_the_file_and_what_failed(tmp_path: Path) -> None:
    """Sparse positions in a clip with a keyframe every 5 frames make the sampler seek (to 1 s
    less its 3-frame margin); without seeking it reads the same frames."""
    path = make_clip(tmp_path / "clip.mp4", 300, fps=FPS, keyframe_interval=5)

    def runs(seek: bool) -> list[int]:
        with av.open(str(path)) as container:
            result = sample_runs(_NoSeek(container), container.streams.video[0],  # type: ignore[arg-type]
                                 [1.0, 9.0], 1, lambda frame: frame.to_ndarray(format="rgb24"),
                                 12.0, str(path), seek=seek)
        return [frame_index_of(run.pixels[0]) for run in result.runs]

    with pytest.raises(SeekError) as caught:
        runs(seek=True)
    assert str(caught.value) == (f"{path}: cannot seek in this stream (operation not permitted):"
                                 " seeking to 0.88s failed")
    assert isinstance(caught.value, DecodeError)
    assert runs(seek=False) == [25, 225]


def test_the_store_records_the_stream_each_row_was_read_from(
        footage: Path, hostile: dict[str, Path], tmp_path: Path) -> None:
    """Rows written the way `features` writes them keep the stream index; `store info`
    shows which streams were decoded when any file was not read from its first one."""
    profile_path = tmp_path / "cheap.yaml"
    profile_path.write_text(CHEAP_PROFILE)
    profile = load_profile(profile_path)
    extractor = VideoFeatureExtractor(profile["modalities"], profile["limits"], "cpu")
    specs = {name: ModalitySpec(int(s["positions"]), extractor.dim(name), extractor.config(name))
             for name, s in extractor.settings.items()}
    store = create_store(tmp_path / "streams.zarr", dataset="streams", task="single",
                         classes=["a"], ids=["plain.mp4", "cover first.mp4"],
                         labels=[0, 0], modalities=specs)
    store.write_rows([0, 1], [extractor.extract(footage),
                              extractor.extract(hostile["cover first.mp4"])])
    reopened = open_store(store.path)
    for name in ("rgb", "flow"):
        assert reopened.streams(name).tolist() == [0, 1]
    assert reopened.streams("audio").tolist() == [-1, -1]  # not recorded for audio
    summary = summarize(reopened)
    assert summary["modalities"]["rgb"]["streams"] == {"0": 1, "1": 1}
    assert "  videos per stream decoded: stream 0: 1, stream 1: 1" in format_summary(summary)

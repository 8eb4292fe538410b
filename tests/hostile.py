"""Generators of hostile inputs: files users did not make and that break naive decoders.

Each function writes one file (or link, or folder) at the path it is given and returns that
path, so a test can put any mix of them into a dataset layout. Everything is generated offline
in a few seconds: tiny clips from tests/synth_video.py, then cut, patched or mislabelled.

`HOSTILE` lists every case with what `features` must make of it; tests/system/test_hostile_cli.py
runs a dataset of all of them and docs/reliability.md reports the counts.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from extract.video.encode import write_video
from tests.synth_video import indexed_frame, make_clip, tone

HOUR_S = 3600


def clip(path: Path, seconds: float = 2.0, fps: float = 25.0, tone_hz: float | None = 440.0,
         size: tuple[int, int] = (64, 48), **options: object) -> Path:
    """A valid small h264/AAC mp4 (the material the broken cases are made from)."""
    return make_clip(path, round(seconds * fps), size=size, fps=fps, tone_hz=tone_hz,
                     **options)  # type: ignore[arg-type]


def truncated(source: Path, path: Path, fraction: float) -> Path:
    """The first `fraction` of `source`'s bytes, as an interrupted download leaves it."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def random_bytes(path: Path, size: int = 50_000, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes())
    return path


def text_file(path: Path) -> Path:
    """A text file with a video extension (a saved web page, a README renamed by mistake)."""
    path.write_text("<html><body>404 Not Found: this is not the video</body></html>\n" * 20)
    return path


def audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An mp4 holding an AAC track and no video stream."""
    rate = 16000
    samples = tone(seconds, 440.0, rate)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024],
                                               format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def one_frame(path: Path) -> Path:
    return make_clip(path, 1, tone_hz=440.0)


def write_timed(path: Path, times_s: Iterable[float], size: tuple[int, int] = (64, 48),
                pix_fmt: str = "yuv420p") -> Path:
    """An h264 mp4 whose i-th frame is shown at times_s[i] (millisecond time base).

    This is how variable-frame-rate phone recordings and streams with long stills look.
    """
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("h264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"preset": "veryfast", "crf": "18"}
        for index, time_s in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(indexed_frame(index, size), format="rgb24")
            frame.pts, frame.time_base = round(time_s * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def variable_frame_rate(path: Path, seconds: float = 3.0, seed: int = 0) -> Path:
    """Frame intervals drawn between 10 and 120 ms (mean ~15 fps), as phones record."""
    gaps = np.random.default_rng(seed).uniform(0.010, 0.120, int(seconds * 30))
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    return write_timed(path, times[times < seconds])


def long_still(path: Path, hours: float = 3.0) -> Path:
    """A real file hours long with 26 frames: one second of video, then one frame `hours` on.

    Its length is true, so decoding must stay within limits.max_seconds, not the hours.
    """
    return write_timed(path, [*np.arange(25) / 25, hours * HOUR_S])


def rotated(path: Path, degrees: int = 90) -> Path:
    return make_clip(path, 50, tone_hz=440.0, rotation=degrees)


def odd_size(path: Path, size: tuple[int, int] = (63, 47)) -> Path:
    """Odd width and height, truly coded so (4:4:4 h264 allows it; 4:2:0 needs even sizes)."""
    return write_timed(path, np.arange(50) / 25, size=size, pix_fmt="yuv444p")


def huge_declared_resolution(path: Path, size: tuple[int, int] = (16000, 16000)) -> Path:
    """A raw-video AVI whose headers claim `size` frames but whose data holds 16x16 frames.

    Raw video has no bitstream header to contradict the container, so FFmpeg believes the AVI
    headers (avih and the stream's BITMAPINFOHEADER): a decoder that trusted them would
    allocate width*height*3 bytes per frame (768 MB here) before finding the data too short.
    """
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        for index in range(2):
            pixels = np.full((16, 16, 3), 40 * index, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    main_header = data.index(b"avih") + 8  # dwWidth, dwHeight are its 9th and 10th fields
    struct.pack_into("<II", data, main_header + 32, *size)
    bitmap = data.index(b"strf") + 8  # biSize, then biWidth, biHeight
    struct.pack_into("<ii", data, bitmap + 4, *size)
    path.write_bytes(bytes(data))
    return path


def oversized(path: Path, size: tuple[int, int] = (4096, 2304)) -> Path:
    """A real 2-frame h264 clip larger than 3840x2160 (the profiles' default max_pixels)."""
    frames = (np.zeros((size[1], size[0], 3), np.uint8) for _ in range(2))
    write_video(path, frames, 25, encoder_options={"preset": "ultrafast"})
    return path


def long_declared_duration(source: Path, path: Path, hours: float = 10.0) -> Path:
    """`source` remuxed to Matroska with its header claiming `hours` (the data holds seconds).

    A header that lies about its length. (mp4 would not do: FFmpeg derives an mp4's length
    from its sample tables, not from the mvhd/mdhd fields.) The Segment Info Duration element
    (ID 0x4489) is a float in milliseconds at the default TimecodeScale.
    """
    with av.open(str(source)) as reader, av.open(str(path), "w", format="matroska") as writer:
        streams = {s.index: writer.add_stream_from_template(s) for s in reader.streams}
        for packet in reader.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                writer.mux(packet)
    data = bytearray(path.read_bytes())
    element = data.index(b"\x44\x89")
    layout = {0x88: ">d", 0x84: ">f"}[data[element + 2]]  # size byte: 8- or 4-byte float
    struct.pack_into(layout, data, element + 3, hours * HOUR_S * 1000.0)
    path.write_bytes(bytes(data))
    return path


def symlink(target: Path, path: Path) -> Path:
    os.symlink(target, path)
    return path


def video_named_directory(path: Path) -> Path:
    """A folder whose name ends in .mp4 (a tool's output folder, an unpacked archive)."""
    path.mkdir()
    (path / "inside.txt").write_text("not a video\n")
    return path


ALL = ("rgb", "flow", "audio")
VIDEO = ("rgb", "flow")


@dataclass(frozen=True)
class Case:
    """One hostile file in the test dataset and what `features` must record for it.

    `failed` modalities must fail with `error` in their message; the others must be done,
    except audio, which may be absent (no audio track).
    """

    name: str  # file name inside the class folder
    make: Callable[[Path, Path, Path], Path]  # (path, web clip, plain clip) -> path
    failed: tuple[str, ...] = ()
    error: str = ""


HOSTILE: tuple[Case, ...] = (
    # A web download (index first) cut at 10/50/90% of its bytes. At 90% every sampled
    # position still decodes, which the decoder's rule accepts (extract/video.py).
    Case("cut10.mp4", lambda p, web, _plain: truncated(web, p, 0.1), ALL),
    Case("cut50.mp4", lambda p, web, _plain: truncated(web, p, 0.5), ALL, "truncated"),
    Case("cut90.mp4", lambda p, web, _plain: truncated(web, p, 0.9)),
    Case("cut index.mp4", lambda p, _web, plain: truncated(plain, p, 0.5), ALL,
         "not a readable media file"),
    Case("zero.mp4", lambda p, *_: zero_bytes(p), ALL, "empty file (0 bytes)"),
    Case("random.mp4", lambda p, *_: random_bytes(p), ALL, "not a readable media file"),
    Case("notes.mp4", lambda p, *_: text_file(p), ALL, "not a readable media file"),
    Case("audio only.mp4", lambda p, *_: audio_only(p), VIDEO, "no video stream"),
    Case("one frame.mp4", lambda p, *_: one_frame(p), ("flow",), "too short for optical flow"),
    Case("huge declared.avi", lambda p, *_: huge_declared_resolution(p), VIDEO,
         "16000x16000 frames exceed the limit"),
    Case("oversized.mp4", lambda p, *_: oversized(p), VIDEO,
         "4096x2304 frames exceed the limit"),
    Case("lying length.mkv", lambda p, _web, plain: long_declared_duration(plain, p), VIDEO,
         "truncated or corrupt"),
    Case("vfr.mp4", lambda p, *_: variable_frame_rate(p)),
    Case("long still.mp4", lambda p, *_: long_still(p)),
    Case("rotated.mp4", lambda p, *_: rotated(p)),
    Case("odd 63x47.mp4", lambda p, *_: odd_size(p)),
    Case("vidéo ünïcode 1.mp4", lambda p, *_: clip(p)),
)




def clip_dataset(root: Path, videos: int, classes: int = 2, seconds: float = 1.0) -> Path:
    """A folder-per-class dataset of small valid clips (64x48), every other one silent.

    Clips differ in length and pitch so that rows differ in the store.
    """
    for index in range(videos):
        folder = root / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        clip(folder / f"v{index:05d}.mp4", seconds=seconds + 0.04 * (index % 7),
             tone_hz=None if index % 2 else 220.0 + 20 * (index % 11))
    return root

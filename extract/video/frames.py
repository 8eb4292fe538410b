"""Decode the frames a model needs from one video file, with PyAV only.

- `probe` says what a file holds (size as displayed, rotation, length, audio).
- `read_rgb` returns K RGB frames at the centres of K equal segments (TSN sampling), resized so
  the short side is `resize_short`, then centre-cropped.
- `read_gray_stacks` returns K stacks of M consecutive grey frames for optical flow.

Which stream: the one a player would play (`media.choose_stream`: no cover art, no 1-frame
still beside real footage), the same for all three; the sampled results carry its index.

Sampling rules (see extract/video/sampler.py for how frames are fetched):
- the frame for a time t is the frame whose presentation interval contains t; a video with
  fewer frames than K repeats frames; `times` are the chosen frames' presentation times in
  seconds from the stream's start.
- a stack starts at the frame containing (centre - (M-1)/2 frame durations), so its middle
  sits on the segment centre. Near the end it is shifted back to end at the last frame. A video
  with fewer than M frames is padded by repeating its last frame, which yields zero flow for the
  padded pairs; fewer than 2 decodable frames is a DecodeError ("too short for optical flow").
  Stacks always come out at `size` (TSN's fixed 340x256, portrait videos included).

Rotation: phones store portrait video as landscape pictures plus a display matrix. Frames come
out as displayed (rotated in numpy after scaling, which is cheap at the output size) and
`probe` reports displayed width/height. Non-square pixels (sample aspect ratio) are also
corrected to the displayed shape.

Limits (`DecodeLimits`): only the first `max_seconds` of a video are sampled (segments divide
that window); inputs with more than `max_pixels` per frame (default 4096x2160, DCI 4K) are
refused with a DecodeError rather than downscaled, because downscaling happens after decoding
and would not save the decoder's memory or time. Memory stays at a few decoded frames: nothing
holds the whole video.

Broken files: every failure is a DecodeError naming the file (missing, empty, not a media file,
no video stream, no decodable frames, too short). A truncated or partly corrupt file is used if
the frames needed for every sampled position decoded; if decoding ends (error or early end of
data) more than two frames before a needed position, it is a DecodeError saying where the
frames stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import Interpolation, VideoReformatter
from av.video.stream import VideoStream

from extract.errors import DecodeError, UserError
from extract.video.media import (
    DECODE_FAILURES,
    Deadline,
    choose_stream,
    open_media,
    reason_of,
    unusable,
)
from extract.video.sampler import SampleResult, SeekError, sample_runs, stream_fps, stream_origin


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds that keep one odd input from exhausting a worker."""

    max_seconds: float = 600.0  # sample only the first max_seconds of a video
    max_pixels: int = 4096 * 2160  # refuse frames larger than this (width * height)
    threads: int = 0  # decoder threads; 0 lets FFmpeg choose (one per core)
    timeout_s: float | None = None  # wall-clock limit of one decode call (None: unbounded)


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration_s: float
    fps: float
    width: int  # as displayed: after rotation and sample aspect ratio
    height: int
    rotation: int  # degrees clockwise the stored picture is turned for display: 0/90/180/270
    frame_count: int  # from the container when it says, else duration * fps
    has_audio: bool
    audio_sample_rate: int | None


@dataclass(frozen=True)
class SampledFrames:
    frames: np.ndarray  # uint8 (K, H, W, 3) RGB
    times: np.ndarray  # float32 (K,) seconds
    stream: int  # index of the decoded stream in the file (see choose_stream)


@dataclass(frozen=True)
class SampledStacks:
    stacks: np.ndarray  # uint8 (K, M, H, W) grey
    times: np.ndarray  # float32 (K,) seconds, centre of each stack
    stream: int  # index of the decoded stream in the file (see choose_stream)


def segment_centres(duration_s: float, k: int) -> np.ndarray:
    """Centres of k equal segments of [0, duration_s): TSN's uniform test-time sampling."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not duration_s > 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    return (np.arange(k, dtype=np.float64) + 0.5) * (duration_s / k)


@contextmanager
def _open_video(path: str | Path, limits: DecodeLimits) -> Iterator[
    tuple[InputContainer, VideoStream]
]:
    """An open container and the video stream a player would play (`choose_stream`), threaded,
    within the pixel limit."""
    name = str(path)
    with open_media(path) as container:
        stream = choose_stream(container, "video")
        if stream is None:
            passed = unusable(container.streams.video)
            raise DecodeError(f"{name}: no video stream" + (f"; only {passed}" if passed else ""))
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise DecodeError(
                f"{name}: {width}x{height} frames exceed the limit of {limits.max_pixels} pixels"
            )
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = limits.threads
        yield container, stream


def _duration(container: InputContainer, stream: VideoStream, limits: DecodeLimits,
              deadline: Deadline | None = None) -> float:
    """The video's length in seconds from its headers, else by reading packet times.

    The packet scan (raw streams, some live recordings) uses a second handle on the file, so
    the caller's container stays at the start even for inputs that cannot seek.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    origin = stream_origin(stream)
    frame_s = 1.0 / stream_fps(stream)
    end = 0.0
    with av.open(container.name, metadata_errors="ignore") as scan:
        for count, packet in enumerate(scan.demux(scan.streams[stream.index]), start=1):
            if deadline is not None:
                deadline.check()
            if packet.pts is None or packet.time_base is None:
                # untimed packets (raw elementary streams): one frame each at the nominal rate
                end = max(end, count * frame_s)
            else:
                tail = (packet.pts + (packet.duration or 0)) * packet.time_base
                end = max(end, float(tail) - origin)
            if end > limits.max_seconds:
                break
    return end


def _window(container: InputContainer, stream: VideoStream, limits: DecodeLimits,
            deadline: Deadline | None = None) -> float:
    name = container.name
    try:
        duration = min(_duration(container, stream, limits, deadline), limits.max_seconds)
    except DECODE_FAILURES as error:
        raise DecodeError(f"{name}: cannot read the video's length ({reason_of(error)})") from error
    if not duration > 0:
        raise DecodeError(f"{name}: video has no duration (no frames?)")
    return duration


def _clockwise_rotation(frame: VideoFrame) -> int:
    """Display rotation in clockwise degrees (FFmpeg's display matrix angle is anticlockwise)."""
    return int(-round(frame.rotation / 90) * 90) % 360


def _pixel_aspect(stream: VideoStream) -> Fraction | None:
    """The sample (pixel) aspect ratio when it is known and not square."""
    aspect = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return aspect if aspect and aspect > 0 and aspect != 1 else None


def _displayed_size(
    frame: VideoFrame, rotation: int, aspect: Fraction | None
) -> tuple[int, int]:
    width, height = frame.width, frame.height
    if aspect is not None:
        width = max(1, round(width * aspect))
    return (height, width) if rotation in (90, 270) else (width, height)


def _scale_rotate(
    frame: VideoFrame, width: int, height: int, pixel_format: str, scaler: VideoReformatter
) -> np.ndarray:
    """Scale in libswscale to the displayed (width, height), then turn the picture upright.

    One VideoReformatter per read keeps its SwsContext: building a new one for every frame
    (what VideoFrame.reformat does) costs several times the scaling itself. AREA averages
    when shrinking (no aliasing from 4K to 256) and is bilinear when enlarging; it measured
    3x faster than swscale's BILINEAR here.
    """
    rotation = _clockwise_rotation(frame)
    coded_w, coded_h = (height, width) if rotation in (90, 270) else (width, height)
    pixels = scaler.reformat(
        frame, coded_w, coded_h, pixel_format, interpolation=Interpolation.AREA
    ).to_ndarray()
    if rotation:
        pixels = np.ascontiguousarray(np.rot90(pixels, k=-rotation // 90))
    return pixels


def _short_side_size(width: int, height: int, short: int | None) -> tuple[int, int]:
    if short is None:
        return width, height
    scale = short / min(width, height)
    if width <= height:
        return short, max(short, round(height * scale))
    return max(short, round(width * scale)), short


def _crop_size(crop: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if crop is None:
        return None
    width, height = (crop, crop) if isinstance(crop, int) else crop
    if width < 1 or height < 1:
        raise UserError(f"crop must be positive, got {crop}")
    return width, height


def _rgb_converter(
    name: str, aspect: Fraction | None, resize_short: int | None, crop: tuple[int, int] | None
) -> Callable[[VideoFrame], np.ndarray]:
    scaler = VideoReformatter()

    def convert(frame: VideoFrame) -> np.ndarray:
        rotation = _clockwise_rotation(frame)
        width, height = _short_side_size(*_displayed_size(frame, rotation, aspect), resize_short)
        pixels = _scale_rotate(frame, width, height, "rgb24", scaler)
        if crop is None:
            return pixels
        crop_w, crop_h = crop
        if crop_w > width or crop_h > height:
            raise DecodeError(
                f"{name}: frame {width}x{height} is smaller than crop {crop_w}x{crop_h}"
            )
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return pixels[top : top + crop_h, left : left + crop_w]

    return convert


def probe(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> VideoInfo:
    """What the file holds. Decodes its first frame, which is where rotation is found."""
    name = str(path)
    with _open_video(path, limits) as (container, stream):
        duration = _window(container, stream, DecodeLimits(max_seconds=float("inf")))
        try:
            frame = next(container.decode(stream), None)
        except DECODE_FAILURES as error:
            raise DecodeError(f"{name}: no decodable video frames ({reason_of(error)})") from error
        if frame is None:
            raise DecodeError(f"{name}: no decodable video frames")
        rotation = _clockwise_rotation(frame)
        width, height = _displayed_size(frame, rotation, _pixel_aspect(stream))
        fps = stream_fps(stream)
        audio = choose_stream(container, "audio")
        return VideoInfo(
            path=name,
            duration_s=duration,
            fps=fps,
            width=width,
            height=height,
            rotation=rotation,
            frame_count=int(stream.frames or round(duration * fps)),
            has_audio=audio is not None,
            audio_sample_rate=None if audio is None else int(audio.sample_rate),
        )


def _sample(
    path: str | Path,
    starts_of: Callable[[float, float], list[float]],
    run_length: int,
    convert_of: Callable[[str, Fraction | None], Callable[[VideoFrame], np.ndarray]],
    limits: DecodeLimits,
) -> SampleResult:
    """Open, compute the sampling window, and fetch the runs (shared by RGB and stacks).

    `limits.timeout_s` bounds this whole call (length scan and sampling): one deadline per
    modality decode, so a video's RGB and flow each get the full limit. A stream FFmpeg cannot
    seek in (raw h264) is read once more from the start without seeking: the same frames.
    """
    name = str(path)
    deadline = Deadline(name, limits.timeout_s)

    def sample(seek: bool) -> SampleResult:
        with _open_video(path, limits) as (container, stream):
            window = _window(container, stream, limits, deadline)
            starts = starts_of(window, 1.0 / stream_fps(stream))
            convert = convert_of(name, _pixel_aspect(stream))
            return sample_runs(container, stream, starts, run_length, convert, window, name,
                               deadline, seek)

    try:
        return sample(seek=True)
    except SeekError:
        return sample(seek=False)


def read_rgb(
    path: str | Path,
    k: int,
    resize_short: int | None = 256,
    crop: int | tuple[int, int] | None = 224,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> SampledFrames:
    """K RGB frames at segment centres, short side resized to `resize_short`, centre-cropped.

    `crop` is a size (int for square or (width, height)) or None to keep the resized frame.
    """
    crop_wh = _crop_size(crop)
    if resize_short is not None and resize_short < 1:
        raise UserError(f"resize_short must be positive, got {resize_short}")
    result = _sample(
        path,
        lambda window, _frame_s: segment_centres(window, k).tolist(),
        1,
        lambda name, aspect: _rgb_converter(name, aspect, resize_short, crop_wh),
        limits,
    )
    frames = np.stack([run.pixels[0] for run in result.runs])
    times = np.array([run.times[0] for run in result.runs], dtype=np.float32)
    return SampledFrames(frames=frames, times=times, stream=result.stream)


def read_gray_stacks(
    path: str | Path,
    k: int,
    frames_per_stack: int = 6,
    size: tuple[int, int] = (340, 256),
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> SampledStacks:
    """K stacks of M consecutive grey frames centred on segment centres, resized to (W, H)."""
    if frames_per_stack < 2:
        raise UserError(f"frames_per_stack must be at least 2, got {frames_per_stack}")
    width, height = size
    half_span = (frames_per_stack - 1) / 2

    def starts_of(window: float, frame_s: float) -> list[float]:
        return np.maximum(segment_centres(window, k) - half_span * frame_s, 0.0).tolist()

    result = _sample(
        path,
        starts_of,
        frames_per_stack,
        lambda _name, _aspect: partial(
            _scale_rotate,
            width=width,
            height=height,
            pixel_format="gray",
            scaler=VideoReformatter(),
        ),
        limits,
    )
    if result.frames_decoded < 2 and result.seeks == 0:
        raise DecodeError(f"{path}: only {result.frames_decoded} frame, too short for optical flow")
    stacks = np.stack([np.stack(run.pixels) for run in result.runs])
    times = np.array([(run.times[0] + run.times[-1]) / 2 for run in result.runs], np.float32)
    return SampledStacks(stacks=stacks, times=times, stream=result.stream)

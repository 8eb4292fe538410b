"""Write small mp4 files (h264 yuv420p video + optional AAC mono audio) with PyAV.

Why it exists: the toy dataset generator and the tests must make real video files offline, and
they must look like what users feed us (h264 in mp4, optionally rotated, optionally with sound).

Frames are streamed one at a time, so a long generated clip never sits in memory.
Odd sizes: yuv420p subsamples chroma 2x2, so h264 needs even width and height. An odd dimension
is padded by one pixel that repeats the last row/column (edge padding), so the picture content is
unchanged and the file's size is the next even number (e.g. 33x17 -> 34x18).
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_CHUNK = 1024  # AAC frame size: samples handed to the encoder per frame


def _even(image: np.ndarray) -> np.ndarray:
    """Edge-pad an odd height/width by one pixel, because yuv420p needs even dimensions."""
    pad_h = image.shape[0] % 2
    pad_w = image.shape[1] % 2
    if not (pad_h or pad_w):
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _check_frame(image: np.ndarray, shape: tuple[int, ...] | None) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frames must be uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
    if shape is not None and image.shape != shape:
        raise ValueError(f"all frames must have the same size: {image.shape} != {shape}")


def _fps_fraction(fps: float) -> Fraction:
    """A rational frame rate; 29.97 and friends become their exact NTSC fractions."""
    return Fraction(fps).limit_denominator(1001)


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    codec: str = "h264",
    rotation: int | None = None,
    crf: int = 18,
    keyframe_interval: int | None = None,
    faststart: bool = False,
    encoder_options: dict[str, str] | None = None,
) -> None:
    """Encode RGB frames (uint8 HxWx3) and optional mono float32 audio in [-1, 1] to an mp4.

    `rotation` (degrees, multiple of 90) is stored as the stream's display matrix, the way
    phones record portrait video: the coded picture stays as given and players (and our
    decoder) rotate it clockwise by `rotation` degrees on display.
    `crf` is x264's constant rate factor (0 lossless .. 51 worst; 18 is visually lossless);
    it is ignored by codecs without that option. `keyframe_interval` (frames) sets the GOP
    length; None keeps the encoder's default (x264: 250). `faststart` puts the index (moov)
    before the data, as web downloads do, so a truncated copy still opens. `encoder_options`
    are passed to the video encoder last (e.g. {"x264-params": "bframes=3:b-adapt=0"}).
    """
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if rotation is not None and rotation % 90 != 0:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    first = np.asarray(first)
    _check_frame(first, None)
    shape = first.shape

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        video = container.add_stream(codec, rate=_fps_fraction(fps))
        height, width = _even(first).shape[:2]
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        if codec in ("h264", "libx264"):
            video.options = {"crf": str(crf), "preset": "veryfast", **(encoder_options or {})}
        elif encoder_options:
            video.options = dict(encoder_options)
        if keyframe_interval is not None:
            video.codec_context.gop_size = keyframe_interval
        if rotation:
            # FFmpeg's display matrix angle is counter-clockwise; "rotate clockwise by r" = -r.
            video.set_display_rotation(-float(rotation))

        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")

        def encode_image(image: np.ndarray) -> None:
            frame = av.VideoFrame.from_ndarray(_even(image), format="rgb24")
            container.mux(video.encode(frame))

        encode_image(first)
        for image in iterator:
            image = np.asarray(image)
            _check_frame(image, shape)
            encode_image(image)
        container.mux(video.encode(None))

        if sound is not None:
            _encode_audio(container, sound, np.asarray(audio), sample_rate)


def _encode_audio(
    container: av.container.OutputContainer,
    sound: av.audio.stream.AudioStream,
    audio: np.ndarray,
    sample_rate: int,
) -> None:
    """Encode mono float samples in fixed-size chunks (the AAC encoder wants whole frames)."""
    samples = np.clip(audio.astype(np.float32).reshape(-1), -1.0, 1.0)
    for start in range(0, len(samples), AUDIO_CHUNK):
        chunk = samples[start : start + AUDIO_CHUNK]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        container.mux(sound.encode(frame))
    container.mux(sound.encode(None))

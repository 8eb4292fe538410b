"""Clips shaped like UCF101's, written with PyAV: what the end-to-end bench extracts.

UCF101's files are 320x240, 25 fps, about 7 s, MPEG-4 Part 2 video in AVI with MP3 audio.
extract/video/encode.py writes the project's h264 mp4s; these need the other container and
codecs, so they are written here. The picture gives TV-L1 real work: a smooth random texture
panning slowly, with textured discs moving over it at their own speeds (so every flow stack
has several motions and occlusion edges), plus a little sensor noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

WIDTH, HEIGHT, FPS = 320, 240, 25
AUDIO_RATE = 44100  # UCF101's MP3 tracks: 44.1 kHz stereo
MP3_FRAME = 1152  # samples per MP3 frame
VIDEO_BITRATE = 400_000  # about UCF101's (DivX/XviD at a few hundred kbit/s)


def _texture(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Smooth colour noise: random cells enlarged with cubic interpolation."""
    coarse = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def ucf_like_frames(seed: int, n_frames: int) -> Iterator[np.ndarray]:
    """RGB uint8 (240, 320, 3) frames: panning background, 3 moving textured discs, noise."""
    rng = np.random.default_rng(seed)
    background = _texture(rng, 2 * WIDTH, 2 * HEIGHT, 12)
    pan = rng.uniform(-1.5, 1.5, 2)
    discs = []
    for _ in range(3):
        radius = int(rng.integers(22, 42))
        patch = _texture(rng, 2 * radius, 2 * radius, 6)
        mask = np.zeros((2 * radius, 2 * radius), np.uint8)
        cv2.circle(mask, (radius, radius), radius - 1, 1, -1)
        start = rng.uniform([radius, radius], [WIDTH - radius, HEIGHT - radius])
        velocity = rng.uniform(-4.0, 4.0, 2)
        discs.append((radius, patch, mask.astype(bool), start, velocity))
    for i in range(n_frames):
        ox = int(WIDTH / 2 + pan[0] * i) % WIDTH
        oy = int(HEIGHT / 2 + pan[1] * i) % HEIGHT
        frame = background[oy : oy + HEIGHT, ox : ox + WIDTH].copy()
        for radius, patch, mask, start, velocity in discs:
            # bounce inside the frame: a triangle wave of the straight path
            span = np.array([WIDTH - 2 * radius, HEIGHT - 2 * radius], float)
            pos = np.abs((start - radius + velocity * i) % (2 * span) - span)
            x, y = (pos - pos % 1).astype(int)
            region = frame[y : y + 2 * radius, x : x + 2 * radius]
            region[mask] = patch[mask]
        noisy = frame.astype(np.int16) + rng.integers(-6, 7, frame.shape, dtype=np.int16)
        yield np.clip(noisy, 0, 255).astype(np.uint8)


def _audio(seed: int, seconds: float) -> np.ndarray:
    """(2, n) float32 stereo: two tones and a little noise, different per clip."""
    rng = np.random.default_rng(seed + 1)
    t = np.arange(round(seconds * AUDIO_RATE)) / AUDIO_RATE
    tones = [0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) for _ in range(2)]
    noise = 0.02 * rng.standard_normal((2, t.size))
    return (np.stack(tones) + noise).astype(np.float32)


def write_ucf_like_clip(path: Path, seed: int, seconds: float = 7.0) -> Path:
    """One .avi: MPEG-4 Part 2 (`mpeg4`) video at 25 fps and MP3 (libmp3lame) stereo audio."""
    n_frames = round(seconds * FPS)
    with av.open(str(path), mode="w", format="avi") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.bit_rate = VIDEO_BITRATE
        video.codec_context.gop_size = 12 * FPS  # XviD's default maximum keyframe interval
        sound = container.add_stream("mp3", rate=AUDIO_RATE, layout="stereo")
        for image in ucf_like_frames(seed, n_frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
        samples = _audio(seed, n_frames / FPS)
        for start in range(0, samples.shape[1], MP3_FRAME):
            chunk = np.ascontiguousarray(samples[:, start : start + MP3_FRAME])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = AUDIO_RATE, start
            frame.time_base = Fraction(1, AUDIO_RATE)
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return path


def write_ucf_like_clips(folder: Path, count: int, seconds: float = 7.0) -> list[Path]:
    """`count` clips v_Bench_g01_cNN.avi in `folder` (UCF101's file naming)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_ucf_like_clip(folder / f"v_Bench_g01_c{i + 1:02d}.avi", seed=i, seconds=seconds)
            for i in range(count)]

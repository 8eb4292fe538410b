"""Write small test videos whose frames say which frame they are.

Every frame carries its own index twice, so a test can decode any sampled frame and check it is
the one expected, after h264, resizing, centre-cropping, rotation or grey conversion:

- colour code (read from RGB images): the frame below the top strip is one solid colour whose
  R, G, B levels are the three base-8 digits of ``index % 512`` (levels 16 + 32*digit, so h264's
  few levels of error are far from the 16-level decision margin). It is read from the central
  box of the image, which every centred crop, resize and rotation keeps.
- band code (read from grey images): the top quarter of the frame is 10 vertical black/white
  bands, the binary digits of ``index % 1024`` (most significant bit on the left). Grey stacks
  for optical flow are resized but never cropped, so the strip keeps its relative geometry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from extract.video.encode import write_video

COLOUR_PERIOD = 512
BAND_BITS = 10
BAND_PERIOD = 2**BAND_BITS
STRIP_FRACTION = 0.25  # share of the height taken by the band strip
NON_REFERENCE_B_FRAMES = {"x264-params": "bframes=3:b-adapt=0:b-pyramid=none:scenecut=0"}


def _levels(index: int) -> tuple[int, int, int]:
    digits = [(index % COLOUR_PERIOD) // 8**p % 8 for p in (2, 1, 0)]
    return tuple(16 + 32 * d for d in digits)  # type: ignore[return-value]


def indexed_frame(index: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """The RGB uint8 (H, W, 3) picture that encodes `index` (see the module docstring)."""
    width, height = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = _levels(index)
    strip = max(1, round(height * STRIP_FRACTION))
    band_of_column = np.arange(width) * BAND_BITS // width
    bits = (index % BAND_PERIOD) >> (BAND_BITS - 1 - band_of_column) & 1
    image[:strip] = (bits * 255).astype(np.uint8)[None, :, None]
    return image


def frame_index_of(image: np.ndarray) -> int:
    """Read back the index: colour code for RGB (H, W, 3), band code for grey (H, W) images.

    The colour code is only known modulo 512 and the band code modulo 1024.
    """
    height, width = image.shape[:2]
    if image.ndim == 3:
        box = image[height * 2 // 5 : height * 3 // 5 + 1, width * 2 // 5 : width * 3 // 5 + 1]
        levels = np.median(box.reshape(-1, 3), axis=0)
        digits = np.clip(np.rint((levels - 16) / 32), 0, 7).astype(int)
        return int(digits[0] * 64 + digits[1] * 8 + digits[2])
    rows = image[round(height * 0.05) : max(round(height * 0.2), round(height * 0.05) + 1)]
    index = 0
    for band in range(BAND_BITS):
        left = int(width * (band + 0.3) / BAND_BITS)
        right = max(int(width * (band + 0.7) / BAND_BITS), left + 1)
        bit = int(np.median(rows[:, left:right]) > 127)
        index = index << 1 | bit
    return index


def tone(seconds: float, hz: float, sample_rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """A mono float32 sine wave, the audio whose pitch tests check after decoding."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def make_clip(
    path: str | Path,
    n_frames: int,
    size: tuple[int, int] = (64, 48),
    fps: float = 25.0,
    tone_hz: float | None = None,
    rotation: int | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
    keyframe_interval: int | None = None,
    faststart: bool = False,
    encoder_options: dict[str, str] | None = None,
) -> Path:
    """Write an h264 mp4 of `n_frames` indexed frames (size is (w, h) as coded, before rotation).

    With `tone_hz`, an AAC mono sine of that pitch runs for the clip's length. `rotation` stores
    a display rotation (clockwise degrees) in the stream's display matrix. `keyframe_interval`
    (frames) makes seeking cheap, so decoders take their seek path. `faststart` writes the
    index first, so truncated copies still open (as web downloads do). `encoder_options` go to
    the encoder, e.g. NON_REFERENCE_B_FRAMES for a clip where 3 of 4 frames are non-reference
    B-frames (x264 otherwise codes these clips' colour changes as P-frames).
    """

    def frames() -> Iterator[np.ndarray]:
        for index in range(n_frames):
            yield indexed_frame(index, size)

    audio = None if tone_hz is None else tone(n_frames / fps, tone_hz, sample_rate)
    write_video(
        path,
        frames(),
        fps,
        audio=audio,
        sample_rate=sample_rate,
        rotation=rotation,
        crf=crf,
        keyframe_interval=keyframe_interval,
        faststart=faststart,
        encoder_options=encoder_options,
    )
    return Path(path)

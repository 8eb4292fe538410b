"""Decode a file's audio track to mono float32 at a fixed sample rate (VGGish wants 16 kHz).

A file without an audio stream is normal (about half of UCF101): `read_audio` returns None and
the audio modality is absent, not failed. The stream is the one a player would play
(`media.choose_stream`: FFmpeg's best among those that can be decoded).

Channels are averaged with equal weights, as VGGish's reference preprocessing does
(torchvggish `waveform_to_examples`: np.mean over channels, then resampling to 16 kHz), not
downmixed by libswresample, whose matrix weights 5.1 as FL/FR 0.707, FC 1.0, surrounds 0.5 and
so moved the log-mel patches by 1.0-1.4 on average for 5.1 (0.2 for stereo). Each channel is
resampled by PyAV's AudioResampler (libswresample) at the source layout and then averaged,
which equals averaging first because both steps are linear; what remains against the reference
is libswresample against resampy (tests/test_audio_mix.py), and mono samples are bit-identical
to the former straight-to-mono resampling.

Decoding is packet by packet and stops once `limits.max_seconds` of samples are in hand, so an
hour-long file costs no more than that.
A stream that breaks or ends early (a truncated file) is a DecodeError when the samples stop
more than TRUNCATION_TOLERANCE_S before the length the stream declares (or before max_seconds),
the same rule as for video: use what decodes only if everything needed came out.
`limits.timeout_s` bounds one call (checked per packet), as for video.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from extract.errors import DecodeError
from extract.video.frames import DEFAULT_LIMITS, DecodeLimits
from extract.video.media import (
    DECODE_FAILURES,
    Deadline,
    choose_stream,
    open_media,
    reason_of,
    unusable,
)

TRUNCATION_TOLERANCE_S = 0.5  # encoder padding and priming differ by a few AAC frames


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """The channels' plain average (VGGish's mix); a mono frame's samples unchanged."""
    planes = frame.to_ndarray()  # (channels, samples), planar float
    return planes[0] if len(planes) == 1 else planes.mean(axis=0, dtype=np.float32)


def read_audio(
    path: str | Path, sample_rate: int = 16000, limits: DecodeLimits = DEFAULT_LIMITS
) -> np.ndarray | None:
    """Mono float32 samples in [-1, 1] at `sample_rate`, or None when there is no audio stream."""
    name = str(path)
    max_samples = int(limits.max_seconds * sample_rate)
    deadline = Deadline(name, limits.timeout_s)
    with open_media(path) as container:
        if not container.streams.audio:
            return None
        stream = choose_stream(container, "audio")
        if stream is None:
            raise DecodeError(f"{name}: no decodable audio stream; "
                              f"only {unusable(container.streams.audio)}")
        declared = float(stream.duration * stream.time_base) if stream.duration else None
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # the source's layout
        chunks: list[np.ndarray] = []
        total = 0
        failure: str | None = None
        try:
            for packet in container.demux(stream):
                deadline.check()
                for frame in packet.decode():
                    for out in resampler.resample(frame):
                        chunks.append(_mono(out))
                        total += chunks[-1].size
                if total >= max_samples:
                    break
            else:
                chunks.extend(_mono(out) for out in resampler.resample(None))
        except DECODE_FAILURES as error:
            failure = reason_of(error)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    needed = min(declared if declared is not None else 0.0, limits.max_seconds)
    decoded = samples.size / sample_rate
    if decoded < needed - TRUNCATION_TOLERANCE_S or (failure is not None and not chunks):
        why = f" ({failure})" if failure else ""
        raise DecodeError(
            f"{name}: audio truncated or corrupt, {decoded:.2f}s of {needed:.2f}s decoded{why}"
        )
    return np.clip(samples[:max_samples], -1.0, 1.0).astype(np.float32, copy=False)

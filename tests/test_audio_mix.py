"""Multichannel audio is mixed as VGGish's reference preprocessing mixes it.

torchvggish's `waveform_to_examples` averages the channels (np.mean) and then resamples to
16 kHz with resampy. The reference here is that function itself, run on the file's samples as
decoded at the source rate and layout; ours is `read_audio` -> `log_mel_patches`. At 16 kHz no
resampling happens and the two agree to the log-mel's own tolerance; from 44.1 and 48 kHz what
remains is libswresample against resampy (mean 0.002-0.003 here, against 0.2 for stereo and
1.3 for 5.1 when libswresample's weighted matrix did the downmix).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from torchvggish import vggish_input

from extract.logmel import log_mel_patches
from extract.video.audio import read_audio

SECONDS = 3.0
SAME_RATE_TOLERANCE = 1e-4  # tests/test_audio.py: our log-mel vs torchvggish's
RESAMPLED_TOLERANCE = 0.01  # mean |difference| left by two different resamplers


def channels(count: int, rate: int, seed: int = 0) -> np.ndarray:
    """(count, samples) float32: each channel its own pitch, tremolo and bursts of noise, so
    any unequal weighting of the channels changes the mix."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * rate)) / rate
    out = []
    for c in range(count):
        wave = 0.3 * np.sin(2 * np.pi * (220 * (c + 1) + 37 * c) * t)
        wave *= 1 + 0.5 * np.sin(2 * np.pi * (0.5 + c) * t)
        wave += 0.05 * (c + 1) * rng.standard_normal(t.size) * (t % 1 < 0.3 + 0.1 * c)
        out.append(wave)
    return np.clip(np.array(out), -1, 1).astype(np.float32)


def write_audio(path: Path, layout: str, rate: int, codec: str, container_format: str) -> Path:
    """An audio-only file of `layout` (mono, stereo, 5.1) coded with `codec`."""
    data = channels(av.AudioLayout(layout).nb_channels, rate)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        sample_format = stream.codec_context.codec.audio_formats[0].name
        for start in range(0, data.shape[1], 1024):
            chunk = data[:, start : start + 1024]
            if sample_format.startswith("s16"):
                chunk = (chunk * 32767).astype(np.int16)
            if not sample_format.endswith("p"):  # packed: channels interleaved in one plane
                chunk = chunk.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), sample_format,
                                               layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def source_samples(path: Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float64 at the source rate, as soundfile would hand them over."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        planar = av.AudioResampler(format="fltp")
        frames = [out for frame in container.decode(stream) for out in planar.resample(frame)]
        frames += planar.resample(None)
        samples = np.concatenate([frame.to_ndarray() for frame in frames], axis=1)
        return samples.T.astype(np.float64), int(stream.sample_rate)


CASES = [
    ("mono", 16000, "pcm_f32le", "wav"), ("stereo", 16000, "pcm_f32le", "wav"),
    ("5.1", 16000, "pcm_f32le", "wav"), ("stereo", 48000, "aac", "mp4"),
    ("5.1", 48000, "aac", "mp4"), ("5.1", 44100, "flac", "matroska"),
]


@pytest.mark.parametrize(("layout", "rate", "codec", "container_format"), CASES)
def test_patches_match_torchvggish_on_multichannel_files(
        tmp_path: Path, layout: str, rate: int, codec: str, container_format: str) -> None:
    path = write_audio(tmp_path / f"sound.{container_format}", layout, rate, codec,
                       container_format)
    samples, source_rate = source_samples(path)
    assert samples.shape[1] == av.AudioLayout(layout).nb_channels and source_rate == rate
    reference = vggish_input.waveform_to_examples(samples, source_rate, return_tensor=False)
    ours = log_mel_patches(read_audio(path)).patches
    assert len(ours) == len(reference) == int(SECONDS / 0.96)
    difference = float(np.abs(ours - reference).mean())
    assert difference <= (SAME_RATE_TOLERANCE if rate == 16000 else RESAMPLED_TOLERANCE)


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_mono_is_bit_identical_to_the_libswresample_mono_path(tmp_path: Path,
                                                              rate: int) -> None:
    """Mono tracks (most of UCF101's) give exactly the samples the store already holds: the
    decode the project used before, one resampler straight to mono 16 kHz."""
    path = write_audio(tmp_path / "mono.mp4", "mono", rate, "aac", "mp4")
    with av.open(str(path)) as container:
        to_mono = av.AudioResampler(format="flt", layout="mono", rate=16000)
        frames = [out for frame in container.decode(audio=0) for out in to_mono.resample(frame)]
        frames += to_mono.resample(None)
    before = np.clip(np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]), -1, 1)
    np.testing.assert_array_equal(read_audio(path), before)

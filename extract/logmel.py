"""VGGish-exact log-mel patches (librosa): the input of every audio backbone.

The patches match VGGish's own `mel_features` (checked against torchvggish in
tests/test_audio.py): 25 ms periodic Hann window, 10 ms hop, 512-point FFT magnitude, 64 HTK-mel
bands over 125-7500 Hz with triangles linear *in mel* and no area normalisation, log(mel + 0.01),
non-overlapping 96-frame (0.96 s) patches. librosa's own `filters.mel` draws its triangles linear
in Hz, so the filterbank is built here from librosa's HTK mel conversion instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import librosa
import numpy as np
import torch

from extract.errors import UserError

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 64
FMIN, FMAX = 125.0, 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s
PATCH_SECONDS = PATCH_FRAMES * HOP / SAMPLE_RATE
# Shortest waveform that yields one full patch: 95 hops plus one window.
MIN_SAMPLES = (PATCH_FRAMES - 1) * HOP + WINDOW

LOG_MEL_CONFIG: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "window": f"periodic hann {WINDOW}",
    "hop": HOP,
    "n_fft": N_FFT,
    "mel_bands": N_MELS,
    "fmin_hz": FMIN,
    "fmax_hz": FMAX,
    "mel_scale": "htk, triangles linear in mel, unnormalised (VGGish)",
    "log_offset": LOG_OFFSET,
    "patch_frames": PATCH_FRAMES,
    "short_audio": f"zero-padded to one patch ({MIN_SAMPLES} samples)",
}


class LogMelPatches(NamedTuple):
    patches: np.ndarray  # (P, 96, 64) float32
    times: np.ndarray  # (P,) float32, start of each patch in seconds


def vggish_mel_matrix() -> np.ndarray:
    """(257, 64) filterbank exactly as VGGish's `spectrogram_to_mel_matrix` defines it."""
    bins_mel = librosa.hz_to_mel(librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=N_FFT), htk=True)
    edges = np.linspace(
        librosa.hz_to_mel(FMIN, htk=True), librosa.hz_to_mel(FMAX, htk=True), N_MELS + 2
    )
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # HTK leaves out the DC bin
    return weights


_MEL = vggish_mel_matrix()


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """(T, 64) float64 log-mel frames of a 16 kHz mono waveform, T = 1 + (N - 400) // 160."""
    signal = np.asarray(waveform, dtype=np.float64)
    # librosa centres the 400-sample window inside each 512-sample FFT frame; padding 56 samples
    # on both sides makes frame t cover exactly samples [160 t, 160 t + 400) as in VGGish (the
    # FFT magnitude does not depend on where the windowed samples sit in the frame).
    margin = (N_FFT - WINDOW) // 2
    padded = np.pad(signal, margin)
    spectrum = np.abs(
        librosa.stft(
            padded, n_fft=N_FFT, hop_length=HOP, win_length=WINDOW, window="hann", center=False
        )
    )
    return np.log(spectrum.T @ _MEL + LOG_OFFSET)


def log_mel_patches(waveform: np.ndarray) -> LogMelPatches:
    """Non-overlapping 0.96 s log-mel patches (P, 96, 64) and their start times (s).

    A trailing part shorter than a patch is dropped, as in VGGish. A waveform shorter than one
    patch (even an empty one) is zero-padded to exactly one patch, so every audio stream gives at
    least one feature and `classify` behaves predictably on very short clips.
    """
    signal = np.asarray(waveform, dtype=np.float32)
    if signal.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-d), got shape {signal.shape}")
    if not np.all(np.isfinite(signal)):
        raise UserError("audio waveform contains NaN or infinite samples")
    if signal.size < MIN_SAMPLES:
        signal = np.pad(signal, (0, MIN_SAMPLES - signal.size))
    frames = log_mel_spectrogram(signal)
    count = len(frames) // PATCH_FRAMES
    patches = frames[: count * PATCH_FRAMES].reshape(count, PATCH_FRAMES, N_MELS)
    times = np.arange(count, dtype=np.float32) * np.float32(PATCH_SECONDS)
    return LogMelPatches(patches.astype(np.float32), times)


def as_patch_tensor(patches: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(P, 96, 64) patches (or torchvggish's (P, 1, 96, 64)) -> float32 (P, 96, 64) on device."""
    x = torch.as_tensor(patches, dtype=torch.float32)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or tuple(x.shape[1:]) != (PATCH_FRAMES, N_MELS):
        raise ValueError(f"expected (P, {PATCH_FRAMES}, {N_MELS}) patches, got {tuple(x.shape)}")
    return x.to(device)



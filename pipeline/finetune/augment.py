"""TSN's training augmentation on uint8 snippets: scale-jittered corner crops and flips.

Why uint8: a flipped flow field must also reverse its horizontal motion, and in TSN's
quantisation (128 = no motion) that is exactly `255 - x` on the x planes; done before the
backbone's normalisation it is the same inversion `features` would see in a mirrored video.
Crops follow TSN's multi-scale cropping: width and height each drawn from the scales times the
short side (at most one scale step apart), placed at a corner or the centre, then resized to
the network's input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SCALES = (1.0, 0.875, 0.75, 0.66)  # TSN's scale ratios of the short side
MAX_DISTORT = 1  # width and height scale indices differ by at most this


def flip(snippet: np.ndarray, modality: str) -> np.ndarray:
    """Mirror a (C, H, W) snippet left-right; flow's x planes (even channels) change sign."""
    mirrored = snippet[..., ::-1].copy()
    if modality == "flow":
        mirrored[0::2] = 255 - mirrored[0::2]
    return mirrored


def jitter_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of one TSN multi-scale crop."""
    short = min(height, width)
    sizes = [int(short * s) for s in SCALES]
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes)
             if abs(i - j) <= MAX_DISTORT]
    crop_h, crop_w = pairs[rng.integers(len(pairs))]
    dy, dx = height - crop_h, width - crop_w
    offsets = [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]  # corners and centre
    top, left = offsets[rng.integers(len(offsets))]
    return top, left, crop_h, crop_w


def train_view(rng: np.random.Generator, snippet: np.ndarray, modality: str,
               flips: bool = True) -> np.ndarray:
    """One augmented uint8 (C, h, w) view of a (C, H, W) snippet (resized later, as float);
    mirrored half the time when `flips`."""
    top, left, crop_h, crop_w = jitter_box(rng, *snippet.shape[1:])
    view = snippet[:, top : top + crop_h, left : left + crop_w]
    mirrored = rng.random() < 0.5  # drawn either way: the crops do not depend on `flips`
    return flip(view, modality) if flips and mirrored else np.ascontiguousarray(view)


def centre_view(snippet: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """The (C, h, w) centre crop `features` sees (size None: the whole snippet)."""
    if size is None:
        return snippet
    height, width = size
    top, left = (snippet.shape[1] - height) // 2, (snippet.shape[2] - width) // 2
    return snippet[:, top : top + height, left : left + width]


def resized(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A normalised float (B, C, h, w) batch resized bilinearly to (H, W), as TSN's crops."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)

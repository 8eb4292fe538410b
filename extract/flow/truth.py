"""Frame pairs with exactly known optical flow, made from real photographs (no download).

Why: accuracy of a flow backend can only be judged against ground truth, and the tests and the
benchmark must work offline. scikit-learn ships two photographs; we render both frames of a pair
from the same high-resolution photograph with the same interpolator, so the pair differs only by
the chosen motion.

Convention (the same as TV-L1's): the flow ``u`` lives on the grid of the first frame ``I0`` and
``I0(x) = I1(x + u(x))``. We therefore render ``I1`` as the plain photograph and ``I0`` by sampling
the photograph at ``x + u(x)``: the flow is exact for any field, with no inversion needed.

EPE is evaluated on ``valid`` pixels only: outside a border band (where every method extrapolates)
and where ``x + u(x)`` stays inside the frame of ``I1`` (elsewhere the content is out of frame,
i.e. occluded, and no method can know the answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FAMILIES = ("translation", "rotation", "zoom", "smooth")


@dataclass(frozen=True)
class TruthPair:
    """Two uint8 grayscale frames (H, W) and their exact flow (2, H, W), x then y."""

    family: str
    name: str
    i0: np.ndarray
    i1: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


def _photographs() -> list[np.ndarray]:
    """scikit-learn's bundled photographs as float64 grayscale (ITU-R 601 luma), 427x640."""
    from sklearn.datasets import load_sample_images

    weights = np.array([0.299, 0.587, 0.114])
    return [img.astype(np.float64) @ weights for img in load_sample_images().images]


def _render(photo: np.ndarray, xs: np.ndarray, ys: np.ndarray, scale: float) -> np.ndarray:
    """Sample the (pre-smoothed) photograph at frame coordinates (xs, ys) -> uint8 frame.

    Frame pixel (x, y) sits at photo position (scale * x + ox, scale * y + oy), centred; cubic
    spline sampling of a Gaussian-smoothed photograph keeps both frames band-limited alike.
    """
    ph, pw = photo.shape
    h, w = xs.shape
    ox = (pw - scale * (w - 1)) / 2.0
    oy = (ph - scale * (h - 1)) / 2.0
    coords = np.stack([scale * ys + oy, scale * xs + ox])
    out = ndimage.map_coordinates(photo, coords, order=3, mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fields(size: tuple[int, int], rng: np.random.Generator) -> list[tuple[str, str, np.ndarray]]:
    """(family, name, flow (2, H, W)) for every motion we test, scaled to the frame size."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    unit = w / 340.0  # motions grow with the frame so every size sees the same difficulty
    fields = []
    for name, (dx, dy) in {"subpixel": (0.37, -0.61), "pixels": (3.5 * unit, -2.25 * unit)}.items():
        fields.append(("translation", name, np.stack([np.full_like(xs, dx), np.full_like(ys, dy)])))
    for deg in (2.0, -3.5):
        a = np.deg2rad(deg)
        rx = np.cos(a) * (xs - cx) - np.sin(a) * (ys - cy) + cx
        ry = np.sin(a) * (xs - cx) + np.cos(a) * (ys - cy) + cy
        fields.append(("rotation", f"{deg:+.1f}deg", np.stack([rx - xs, ry - ys])))
    for factor in (1.04, 0.95):
        zoom = np.stack([(factor - 1) * (xs - cx), (factor - 1) * (ys - cy)])
        fields.append(("zoom", f"x{factor:.2f}", zoom))
    for k in range(2):
        noise = rng.standard_normal((2, h, w))
        smooth = np.stack([ndimage.gaussian_filter(c, sigma=w / 12.0) for c in noise])
        smooth *= 3.0 * unit / np.abs(smooth).max()
        fields.append(("smooth", f"field{k}", smooth))
    return fields


def _frame_scale(photo: np.ndarray, size: tuple[int, int]) -> float:
    """Photo pixels per frame pixel: the frame covers 95% of the photo's limiting side."""
    return min(photo.shape[0] / size[1], photo.shape[1] / size[0]) * 0.95


def translated_stack(
    size: tuple[int, int], shift: tuple[float, float], frames: int, photo: int = 0
) -> np.ndarray:
    """(frames, H, W) uint8 whose flow from each frame to the next is exactly ``shift`` (x, y)."""
    w, h = size
    image = _photographs()[photo]
    scale = _frame_scale(image, size)
    smoothed = ndimage.gaussian_filter(image, sigma=0.5 * scale)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    steps = range(frames - 1, -1, -1)  # frame t = photo moved so that frame_t(x) = frame_t+1(x+s)
    return np.stack([_render(smoothed, xs + k * shift[0], ys + k * shift[1], scale) for k in steps])


def make_pairs(size: tuple[int, int] = (340, 256), seed: int = 0) -> list[TruthPair]:
    """Every family on both photographs: 16 pairs of frames (W, H) = size with exact flow."""
    w, h = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    border = max(4, w // 24)
    pairs = []
    for pi, photo in enumerate(_photographs()):
        scale = _frame_scale(photo, size)
        smoothed = ndimage.gaussian_filter(photo, sigma=0.5 * scale)
        i1 = _render(smoothed, xs, ys, scale)
        for family, name, flow in _fields(size, rng):
            tx, ty = xs + flow[0], ys + flow[1]
            i0 = _render(smoothed, tx, ty, scale)
            inside = (tx >= border) & (tx <= w - 1 - border)
            inside &= (ty >= border) & (ty <= h - 1 - border)
            interior = np.zeros((h, w), bool)
            interior[border:-border, border:-border] = True
            pairs.append(
                TruthPair(family, f"photo{pi}-{name}", i0, i1, flow.astype(np.float32),
                          inside & interior)
            )
    return pairs


def endpoint_error(estimate: np.ndarray, pair: TruthPair) -> float:
    """Mean end-point error (pixels) of a (2, H, W) estimate over the pair's valid pixels."""
    err = np.sqrt(((estimate - pair.flow) ** 2).sum(axis=0))
    return float(err[pair.valid].mean())

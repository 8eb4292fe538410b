"""`classify --explain`: one picture that shows which moments of a video decided its class.

Layout, top to bottom, every panel on one time axis in seconds:
- title: the video and its top-k classes with probabilities;
- a strip of thumbnails of the sampled RGB frames, each placed at its timestamp;
- per modality, the attention weights of its cluster: mean over units as bars at each sampled
  position (dashed line: uniform attention, 1/L), then a heatmap of units x positions, units
  sorted by the position they weigh most; a modality that was absent or failed is one line
  saying so (the network used its learned "absent" embedding instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from extract.errors import UserError  # noqa: E402
from extract.logmel import PATCH_SECONDS  # noqa: E402
from extract.video.frames import probe, read_rgb  # noqa: E402
from pipeline.features.extractor import VideoFeatureExtractor, decode_limits, pick_evenly  # noqa: E402
from pipeline.store.format import Status  # noqa: E402

THUMB_SHORT_SIDE = 96  # pixels; small, decoded separately from the features
MAX_THUMBNAILS = 16
FIGURE_WIDTH = 13.0  # inches
PLOT_LEFT, PLOT_RIGHT = 0.11, 0.98  # figure fractions of the shared time axis
MEAN_HEIGHT, HEATMAP_HEIGHT, ABSENT_HEIGHT = 1.1, 1.2, 0.45  # inches per panel
COLOURS = {"rgb": "tab:blue", "flow": "tab:orange", "audio": "tab:green"}


def thumbnails(path: Path, extractor: VideoFeatureExtractor, results: Mapping[str, Any]
               ) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames (T, H, W, 3) and times at the RGB sample times (at most MAX_THUMBNAILS)."""
    positions = int(extractor.settings.get("rgb", {}).get("positions", 8))
    sampled = read_rgb(path, positions, THUMB_SHORT_SIDE, None, decode_limits(extractor.limits))
    chosen = pick_evenly(len(sampled.frames), MAX_THUMBNAILS)
    times = sampled.times[chosen]
    rgb = results.get("rgb", {})
    if rgb.get("status") == Status.DONE and len(rgb["time"]) == len(sampled.times):
        times = np.asarray(rgb["time"])[chosen]
    return sampled.frames[chosen], np.asarray(times, np.float64)


def spacing(times: np.ndarray, span: float) -> float:
    """Width given to each position on the time axis: the gap between neighbours."""
    if len(times) > 1:
        return float(np.median(np.diff(np.sort(times))))
    return span


def cell_edges(times: np.ndarray, width: float) -> np.ndarray:
    """Heatmap cell boundaries: midpoints between positions, half a gap beyond the ends."""
    middle = (times[1:] + times[:-1]) / 2
    return np.concatenate([[times[0] - width / 2], middle, [times[-1] + width / 2]])


def title_of(path: Path, top: list[dict[str, Any]]) -> str:
    best = top[0]
    others = "   ".join(f"{e['label']} {e['prob']:.1%}" for e in top[1:])
    line = f"{path.name}: {best['label']} ({best['prob']:.1%})"
    return f"{line}\nthen: {others}" if others else line


def display_times(name: str, times: np.ndarray) -> np.ndarray:
    """Where a position is drawn: audio times are patch starts, drawn at the patch centre."""
    return times + PATCH_SECONDS / 2 if name == "audio" else times


def draw_thumbnails(axes: Axes, frames: np.ndarray, times: np.ndarray, width: float,
                    focus: float | None) -> None:
    """Frames at their times; the one nearest the RGB attention peak (`focus`) outlined."""
    nearest = None if focus is None else int(np.argmin(np.abs(times - focus)))
    for index, (frame, t) in enumerate(zip(frames, times, strict=True)):
        left, right = t - 0.47 * width, t + 0.47 * width
        axes.imshow(frame, extent=(left, right, 0, 1), aspect="auto", interpolation="bilinear")
        axes.text(t, -0.04, f"{t:.2f} s", ha="center", va="top", fontsize=8,
                  fontweight="bold" if index == nearest else "normal")
        if index == nearest:
            axes.add_patch(Rectangle((left, 0), right - left, 1, fill=False, linewidth=3,
                                     edgecolor=COLOURS["rgb"]))
    axes.set_ylim(0, 1)
    axes.set_yticks([])
    axes.set_ylabel("frames", rotation=0, ha="right", va="center")
    for side in ("top", "right", "left", "bottom"):
        axes.spines[side].set_visible(False)


def draw_mean(axes: Axes, name: str, weights: np.ndarray, times: np.ndarray, width: float
              ) -> None:
    """Mean attention over units per position; the top position in full colour."""
    mean = weights.mean(axis=0)
    colours = [COLOURS.get(name, "tab:purple")] * len(mean)
    alphas = np.where(mean == mean.max(), 1.0, 0.45)
    for t, value, colour, alpha in zip(times, mean, colours, alphas, strict=True):
        axes.bar(t, value, width=0.8 * width, color=colour, alpha=alpha)
    axes.axhline(1.0 / len(mean), color="black", linestyle="--", linewidth=0.8)
    peak = int(np.argmax(mean))
    axes.annotate(f"{times[peak]:.2f} s", (times[peak], mean[peak]), ha="center",
                  va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    axes.set_ylim(0, max(mean.max() * 1.3, 1.5 / len(mean)))
    axes.set_ylabel(f"{name}\nattention\n(mean of units)", rotation=0, ha="right",
                    va="center", fontsize=9)


def draw_heatmap(axes: Axes, name: str, weights: np.ndarray, times: np.ndarray, width: float
                 ) -> None:
    """Units x positions, units sorted by the time of their peak so structure is visible."""
    order = np.lexsort((-weights.max(axis=1), weights.argmax(axis=1)))
    axes.pcolormesh(cell_edges(times, width), np.arange(len(order) + 1), weights[order],
                    cmap="magma", vmin=0.0, vmax=float(weights.max()), shading="flat")
    axes.set_yticks([0.5, len(order) - 0.5], ["1", str(len(order))], fontsize=7)
    axes.set_ylabel(f"{len(order)} units\n(by peak time)", rotation=0, ha="right",
                    va="center", fontsize=8)


def draw_missing(axes: Axes, name: str, status: Status, error: str) -> None:
    absent_audio = status == Status.ABSENT and name == "audio"
    reason = "no audio track" if absent_audio else (error or Status(status).label)
    axes.text(0.5, 0.5, f"{name}: {Status(status).label} ({reason[:120]}) - not used; the model "
              "took its learned 'absent' input", transform=axes.transAxes, ha="center", va="center",
              fontsize=9, color="dimgray")
    axes.set_yticks([])
    axes.set_facecolor("#f2f2f2")


def attended(features: Mapping[str, Mapping[str, Any]], attention: Mapping[str, np.ndarray]
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per modality that was used: display times (l,) and weights (N, l) of real positions."""
    views = {}
    for name, result in features.items():
        if result["status"] != Status.DONE:
            continue
        mask = np.asarray(result["mask"], bool)
        times = display_times(name, np.asarray(result["time"], np.float64)[mask])
        views[name] = (times, np.asarray(attention[name])[:, : len(mask)][:, mask])
    return views


def explain_video(out: Path, path: Path, result: Mapping[str, Any],
                  features: Mapping[str, Mapping[str, Any]], attention: Mapping[str, np.ndarray],
                  extractor: VideoFeatureExtractor) -> Path:
    """Draw the explanation of one classified video into `out` (PNG)."""
    frames, frame_times = thumbnails(path, extractor, features)
    views = attended(features, attention)
    limits = decode_limits(extractor.limits)
    ends = [float(times[-1]) for times, _ in views.values()] + [float(frame_times[-1])]
    span = min(max(probe(path, limits).duration_s, max(ends), 1e-3), limits.max_seconds)
    thumb_width = spacing(frame_times, span)
    plot_inches = FIGURE_WIDTH * (PLOT_RIGHT - PLOT_LEFT)
    height, width_px = frames.shape[1:3]
    thumb_inches = min(plot_inches * thumb_width / span * 0.94 * height / width_px, 1.8)
    focus = None
    if "rgb" in views:
        rgb_times, rgb_weights = views["rgb"]
        focus = float(rgb_times[int(np.argmax(rgb_weights.mean(axis=0)))])

    panels: list[tuple[str, str, float]] = [("frames", "", thumb_inches + 0.25)]
    for name in features:
        if name in views:
            panels += [("mean", name, MEAN_HEIGHT), ("heatmap", name, HEATMAP_HEIGHT)]
        else:
            panels.append(("missing", name, ABSENT_HEIGHT))
    top_inches, bottom_inches = 0.85, 0.8
    total = sum(h for *_, h in panels) + top_inches + bottom_inches + 0.12 * len(panels)
    figure = Figure(figsize=(FIGURE_WIDTH, total))
    grid = figure.add_gridspec(len(panels), 1, height_ratios=[h for *_, h in panels],
                               left=PLOT_LEFT, right=PLOT_RIGHT, top=1 - top_inches / total,
                               bottom=bottom_inches / total, hspace=0.3)
    first: Axes | None = None
    for row, (kind, name, _) in enumerate(panels):
        axes = figure.add_subplot(grid[row], sharex=first)
        first = first or axes
        if kind == "frames":
            draw_thumbnails(axes, frames, frame_times, thumb_width, focus)
        elif kind == "missing":
            draw_missing(axes, name, features[name]["status"], features[name].get("error", ""))
        else:
            times, weights = views[name]
            draw = draw_mean if kind == "mean" else draw_heatmap
            draw(axes, name, weights, times, spacing(times, span))
    assert first is not None
    first.set_xlim(0, span)
    for axes in figure.axes[:-1]:
        axes.tick_params(labelbottom=False)
    figure.axes[-1].set_xlabel("time in the video (s)")
    figure.text(0.01, 0.08 / total, "bars: mean attention of the units (dashed: uniform, 1/L); "
                "heatmaps: each unit's weights, black = 0, light = the modality's largest",
                fontsize=8, color="dimgray", va="bottom")
    figure.suptitle(title_of(path, result["top"]), fontsize=12, x=0.5,
                    y=1 - 0.12 / total, va="top")
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write the explanation picture {out}: {exc.strerror or exc}"
                        ) from None
    return out

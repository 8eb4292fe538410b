"""The Flash-MNIST figures: a few test videos above each unit's attention, and the test
accuracy after every epoch of every configuration (one figure per unit kind)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from matplotlib.figure import Figure

from pipeline.datasets.generated.flash_mnist import NOISE

FIGURE_NAME = "flash_mnist_attention.png"
CURVES_NAME = "flash_mnist_curves_{unit}.png"
FIGURE_VIDEOS = 4


def draw_attention_figure(path: Path, dataset: Path, analysis: dict[str, np.ndarray],
                          run_name: str, videos: int = FIGURE_VIDEOS) -> list[int]:
    """Thumbnails of a few test videos above each unit's attention over the 25 frames."""
    frame_digit = analysis["frame_digit"]
    digit_frames = (frame_digit != NOISE).sum(axis=1)
    # Videos with few digits show the point best: a handful of digit frames among noise.
    order = np.argsort(np.abs(digit_frames - 4), kind="stable")
    chosen = [int(i) for i in order[:videos] if digit_frames[i] > 0]
    flash = zarr.open_group(str(dataset), mode="r")
    attention = analysis["attention"]
    units = attention.shape[1]
    heat_height = max(0.8, 0.1 * units)
    figure = Figure(figsize=(13, len(chosen) * (1.3 + heat_height)), layout="constrained")
    figure.suptitle(f"Flash-MNIST test videos and the attention of {run_name} "
                    "(cyan = digit frames)", fontsize=10)
    names = [str(d) for d in range(10)]
    for panel, video in zip(figure.subfigures(len(chosen), 1, squeeze=False)[:, 0], chosen,
                            strict=True):
        top, heat = panel.subplots(2, 1, height_ratios=[0.7, heat_height], sharex=True)
        montage = np.concatenate(list(flash["test/frames"][video]), axis=1)
        top.imshow(montage, cmap="gray", extent=(0, 25, 0, 1), aspect="auto")
        top.set_yticks([])
        top.tick_params(axis="x", length=0, labeltop=True, labelbottom=False)
        top.set_xticks(np.arange(25) + 0.5,
                       [names[d] if d >= 0 else "" for d in frame_digit[video]], fontsize=8)
        mass = float((attention[video].mean(axis=0) * (frame_digit[video] != NOISE)).sum())
        panel.suptitle(
            f"test video {video}: digits {digits_of(analysis['label'][video])}, predicted "
            f"{digits_of(analysis['predicted'][video])}; its {digit_frames[video]} digit "
            f"frames (of 25) get {100 * mass:.0f}% of the attention", fontsize=9, x=0.01,
            ha="left")
        image = heat.imshow(attention[video], cmap="magma", vmin=0, aspect="auto",
                            extent=(0, 25, units - 0.5, -0.5), interpolation="nearest")
        for frame in np.flatnonzero(frame_digit[video] != NOISE):
            heat.axvspan(frame, frame + 1, ymin=0.0, ymax=0.04, color="cyan")
        heat.tick_params(axis="x", length=0, labelbottom=False)
        heat.set_ylabel("unit", fontsize=8)
        panel.colorbar(image, ax=heat, fraction=0.015, pad=0.01, label="weight")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return chosen


def digits_of(class_id: int) -> str:
    return "{" + ",".join(str(d) for d in range(10) if int(class_id) >> d & 1) + "}"


def draw_curves(folder: Path, results: Sequence[dict[str, Any]], units: Sequence[str]
                ) -> list[Path]:
    """Test top-1 after every epoch, one line per cluster size (seed 0; solid: shifting,
    dashed: none), with average pooling in grey; one file per unit kind that has results."""
    from matplotlib import colormaps

    avg = [r for r in results if r["unit"] == "avg" and r["seed"] == 0]
    written = []
    for unit in units:
        rows = sorted((r for r in results if r["unit"] == unit and r["seed"] == 0),
                      key=lambda r: (r["units"], not r["shifting"]))
        if not rows:
            continue
        sizes = sorted({r["units"] for r in rows})
        colours = colormaps["viridis"](np.linspace(0, 0.9, len(sizes)))
        figure = Figure(figsize=(8, 5), layout="constrained")
        axes = figure.subplots()
        for row in rows:
            curve = 100 * np.asarray(row["val_top1_per_epoch"])
            axes.plot(np.arange(1, len(curve) + 1), curve,
                      color=colours[sizes.index(row["units"])],
                      linestyle="-" if row["shifting"] else "--", linewidth=1.2,
                      label=f"N={row['units']}{'' if row['shifting'] else ', no shifting'}")
        for row in avg:
            curve = 100 * np.asarray(row["val_top1_per_epoch"])
            axes.plot(np.arange(1, len(curve) + 1), curve, color="grey", linestyle=":",
                      label="average pooling")
        axes.set_xlabel("epoch")
        axes.set_ylabel("test top-1 (%)")
        axes.set_title(f"Flash-MNIST, {unit} units: test accuracy after every epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, ncol=2)
        path = folder / CURVES_NAME.format(unit=unit)
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=90)
        written.append(path)
    return written

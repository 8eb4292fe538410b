"""The pictures a training run leaves behind: learning curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pipeline.train.metrics import headline_metric


def plot_curves(path: Path, history: list[dict[str, Any]], task: str) -> None:
    """Loss and headline accuracy per epoch, train and validation."""
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(10, 4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [h["train_loss"] for h in history], label="train")
    loss_axes.plot(epochs, [h["val"]["loss"] for h in history], label="validation")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    name = headline_metric(task)
    accuracy_axes.plot(epochs, [h["train_accuracy"] for h in history], label="train top-1")
    accuracy_axes.plot(epochs, [h["val"][name] for h in history], label=f"validation {name}")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for axes in (loss_axes, accuracy_axes):
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_confusion(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    """Row-normalised confusion matrix; class names drawn only when they stay legible."""
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = min(20.0, 4 + 0.25 * len(classes))
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    image = axes.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    if len(classes) <= 40:
        axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        axes.set_yticks(range(len(classes)), classes, fontsize=7)
    axes.set(xlabel="predicted", ylabel="true", title="validation confusion (row-normalised)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)

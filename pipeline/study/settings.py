"""What one Flash-MNIST reproduction depends on: schedules, the grid, the published numbers.

Also the one conversion of the `cli.py reproduce` options into `Settings`, with their
validation (a bad value is a UserError: one line, exit code 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from extract.errors import UserError

SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
UNITS = ("linear", "mlp")
ATTENTION_UNITS = ("linear", "mlp", "dot")  # the units a grid may train (avg is the baseline)
UNIT_LABELS = {"linear": "linear (one layer)", "mlp": "two-layer (tanh)",
               "dot": "dot product (learned query)", "avg": "average pooling"}
BATCH_SIZE = 64  # every grid configuration's training batch (the authors' code)
DROPOUT = 0.5
# The public reproduction of the Flash-MNIST study (paper-notes.md), top-1 % by cluster size.
PUBLIC = {
    "linear": dict(zip(SIZES, (34.5, 65.8, 72.7, 80.5, 84.6, 84.7, 85.0, 85.2), strict=True)),
    "mlp": dict(zip(SIZES, (54.1, 64.7, 73.8, 76.4, 86.6, 87.0, 87.3, 87.4), strict=True)),
}


@dataclass(frozen=True)
class Schedule:
    """How much data and training each configuration gets."""

    name: str
    per_class_train: int
    per_class_test: int
    epochs: int
    lr: float
    hidden: int  # width of the two-layer unit's hidden layer
    lenet_steps: int
    lenet_batch: int


# Sized for the whole grid in ~45 min on a shared 2-core CPU (docs/reproduction.md says why
# lr and hidden differ from the paper: ~300x fewer optimiser steps, and the two-layer units'
# (B, L, N*hidden) activations dominate the grid's cost).
REDUCED = Schedule("reduced", per_class_train=8, per_class_test=2, epochs=3, lr=1e-2, hidden=32,
                   lenet_steps=400, lenet_batch=128)
FULL = Schedule("full", per_class_train=100, per_class_test=10, epochs=100, lr=1e-3,
                hidden=128, lenet_steps=5000, lenet_batch=256)


# Why the reduced schedule departs from the paper's lr and hidden width (measured once, while
# sizing the schedule on this machine, before the committed run).
SIZING_NOTE = (
    "- Why lr and hidden width differ here: in a sizing trial (linear, N=8, shifting, 4 epochs "
    "of 12,288 videos) Adam at 1e-3 reached 3.4% test top-1 and at 1e-2 9.1%, because this "
    "budget allows only a few hundred optimiser steps; and two-layer units with 128 hidden "
    "units each made the two-layer half of the grid alone (hidden activations of size "
    "batch x 25 x N*128) too slow for the ~45 min budget on this CPU."
)


@dataclass(frozen=True)
class GridConfig:
    """One cell of the ablation grid."""

    unit: str
    units: int
    shifting: bool

    @property
    def name(self) -> str:
        return f"{self.unit}-n{self.units:03d}-{'shift' if self.shifting else 'noshift'}"


@dataclass
class Settings:
    """Everything one reproduction depends on (the CLI's options)."""

    schedule: Schedule = REDUCED
    sizes: tuple[int, ...] = SIZES
    units: tuple[str, ...] = UNITS
    seed: int = 0
    source: str = "sklearn"
    mnist_dir: Path | None = None
    device: str = "auto"
    data_dir: Path = Path("data/flash-mnist")
    runs_dir: Path = Path("runs/flash-mnist-grid")
    docs_dir: Path = Path("docs")
    progress: bool = True


def grid(sizes: Sequence[int], units: Sequence[str]) -> list[GridConfig]:
    """Every unit x size x shifting cell, plus the average-pooling baseline first."""
    cells = [GridConfig("avg", 1, False)]
    cells += [GridConfig(u, n, s) for u in units for s in (True, False) for n in sizes]
    return cells


def schedule_from_options(full: bool = False, **overrides: float | None) -> Schedule:
    """REDUCED (or FULL) with the given fields replaced; each override must be positive (and
    whole, except lr). The name records the overrides, so a custom run says it is one."""
    base = FULL if full else REDUCED
    chosen = {k: v for k, v in overrides.items() if v is not None}
    for name, value in chosen.items():
        if value <= 0 or (name != "lr" and value != int(value)):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    name = base.name if not chosen else f"{base.name} (custom: {chosen})"
    return dataclasses.replace(base, name=name, **chosen)


def parse_sizes(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4): positive whole numbers, at least one."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--sizes must be whole numbers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"--sizes must list positive cluster sizes, got {text!r}")
    return sizes


def parse_units(text: str) -> tuple[str, ...]:
    """'linear,mlp' -> ('linear', 'mlp'), each one of ATTENTION_UNITS."""
    units = tuple(u.strip() for u in text.split(",") if u.strip())
    if not set(units) <= set(ATTENTION_UNITS):
        raise UserError(f"--units must be among {', '.join(ATTENTION_UNITS)}, got {text!r}")
    return units


def settings_from_options(
    *, full: bool = False, per_class_train: int | None = None,
    per_class_test: int | None = None, epochs: int | None = None, lr: float | None = None,
    hidden: int | None = None, lenet_steps: int | None = None, sizes: str | None = None,
    units: str | None = None, seed: int = 0, source: str = "sklearn",
    mnist_dir: Path | None = None, device: str = "auto", data_dir: Path | None = None,
    runs_dir: Path | None = None, docs_dir: Path | None = None, progress: bool = True,
) -> Settings:
    """The Settings the `cli.py reproduce` options describe (None: the default)."""
    from pipeline.datasets.generated.digits import SOURCES  # cv2: only when actually used

    schedule = schedule_from_options(
        full, per_class_train=per_class_train, per_class_test=per_class_test, epochs=epochs,
        lenet_steps=lenet_steps, lr=lr, hidden=hidden)
    if source not in SOURCES:
        raise UserError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    defaults = Settings()
    return Settings(
        schedule=schedule,
        sizes=parse_sizes(sizes) if sizes is not None else SIZES,
        units=parse_units(units) if units is not None else UNITS,
        seed=seed, source=source, mnist_dir=mnist_dir, device=device,
        data_dir=data_dir or defaults.data_dir, runs_dir=runs_dir or defaults.runs_dir,
        docs_dir=docs_dir or defaults.docs_dir, progress=progress)

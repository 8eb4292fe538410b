"""What one Flash-MNIST reproduction depends on: schedules, the grid, the published numbers.

Also the one conversion of the `cli.py reproduce` options into `Settings`, with their
validation (a bad value is a UserError: one line, exit code 1).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from extract.errors import UserError
from pipeline.train.precision import PRECISIONS

PRECISION_CHOICES = ("auto", *PRECISIONS)
# Units whose training forward pass may run under bf16 autocast with precision "auto" (where it
# is faster on the machine: step_cost.py): those where bench/flash_precision.py found the test
# accuracy unchanged (linear: 42.19% fp32 vs 42.15% bf16 after 8 epochs at N=8). The two-layer
# scorer lost 18 points under bf16 (71.8% vs 53.6%), so it stays fp32. Average pooling shares
# the linear head.
BF16_UNITS = ("avg", "linear")
# Units that may run only the classifier head under bf16 (precision "bf16_head"): those of
# BF16_UNITS (their whole forward pass in bf16 kept the accuracy) and the two-layer scorer,
# whose attention then stays fp32: bench/flash_precision.py found mlp_shared N=8 at 60.2%
# against fp32's 60.4% after 8 epochs (mean of seeds 0-2, which alone span 45-72%), and
# N=128 at 25.0% against 23.2% after 2 epochs, 1.7-1.8x as fast.
HEAD_BF16_UNITS = ("avg", "linear", "mlp_shared")

SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
UNITS = ("linear", "mlp_shared")
ATTENTION_UNITS = ("linear", "mlp_shared", "mlp", "dot")  # units a grid may train (avg: baseline)
UNIT_LABELS = {"linear": "linear (one layer)", "mlp_shared": "two-layer (tanh)",
               "mlp": "two-layer, one hidden layer per unit", "dot": "dot product (learned query)",
               "avg": "average pooling"}
BATCH_SIZE = 64  # every grid configuration's training batch (the authors' code)
DROPOUT = 0.5
# The public reproduction of the Flash-MNIST study (paper-notes.md): best test top-1 % over
# 200 epochs, by cluster size.
PUBLIC = {
    "linear": dict(zip(SIZES, (34.5, 65.8, 72.7, 80.5, 84.6, 84.7, 85.0, 85.2), strict=True)),
    "mlp_shared": dict(zip(SIZES, (54.1, 64.7, 73.8, 76.4, 86.6, 87.0, 87.3, 87.4),
                           strict=True)),
}


@dataclass(frozen=True)
class Schedule:
    """How much data and training each configuration gets."""

    name: str
    per_class_train: int
    per_class_test: int
    epochs: int
    min_epochs: int  # with --hours: a configuration whose epochs do not all fit still trains
    # when at least this many do, and its entry says how many it ran (the 30)
    lr: float
    hidden: int  # width of the two-layer scorer's hidden layer
    lenet_digit_images: int  # the LeNet's pre-training set (one epoch)
    lenet_noise_images: int
    seeds: tuple[int, ...]  # every configuration runs seeds[0]; small ones run them all
    all_seeds_up_to: int  # ... the configurations with at most this many units
    precision: str  # auto (auto_precisions: the fastest harmless one), else for every unit


# The authors' code: 100 / 10 videos per class, Adam 1e-3, 100 epochs, the LeNet's 330,000
# noisy images; the public reproduction's 128 hidden units. Precision: see auto_precisions.
AUTHORS = Schedule("authors", per_class_train=100, per_class_test=10, epochs=100,
                   min_epochs=30, lr=1e-3, hidden=128, lenet_digit_images=300_000,
                   lenet_noise_images=30_000, seeds=(0, 1, 2), all_seeds_up_to=8,
                   precision="auto")
# `--quick` (the test of `make test` runs it): 1 / 1 videos per class, 2 epochs, a LeNet of
# 3,300 images, seeds 0 and 1 for N <= 2 and average pooling; about a minute on this machine.
QUICK = Schedule("quick", per_class_train=1, per_class_test=1, epochs=2, min_epochs=1,
                 lr=1e-3, hidden=128, lenet_digit_images=3_000, lenet_noise_images=300,
                 seeds=(0, 1), all_seeds_up_to=2, precision="auto")
QUICK_SIZES = (1, 4)


@dataclass(frozen=True)
class GridConfig:
    """One cell of the ablation grid, for one seed."""

    unit: str
    units: int
    shifting: bool
    seed: int = 0

    @property
    def name(self) -> str:
        return (f"{self.unit}-n{self.units:03d}-{'shift' if self.shifting else 'noshift'}"
                f"-s{self.seed}")


def auto_precisions(unit: str) -> tuple[str, ...]:
    """The precisions "auto" lets a unit train in: fp32 and those shown harmless for it."""
    return ("fp32", *(("bf16",) if unit in BF16_UNITS else ()),
            *(("bf16_head",) if unit in HEAD_BF16_UNITS else ()))


def allowed_precisions(schedule: Schedule, unit: str) -> tuple[str, ...]:
    """The precisions a configuration may train in: the forced one, or auto_precisions (of
    which step_cost.py picks the fastest on the machine)."""
    if schedule.precision != "auto":
        return (schedule.precision,)
    return auto_precisions(unit)


@dataclass
class Settings:
    """Everything one reproduction depends on (the CLI's options)."""

    schedule: Schedule = AUTHORS
    sizes: tuple[int, ...] = SIZES
    units: tuple[str, ...] = UNITS
    source: str = "sklearn"
    mnist_dir: Path | None = None
    device: str = "auto"
    data_dir: Path = Path("data/flash-mnist")
    runs_dir: Path = Path("runs/flash-mnist-grid")
    docs_dir: Path = Path("docs")
    progress: bool = True
    deadline: float | None = None  # time.time() by which every started configuration must end


def grid(sizes: Sequence[int], units: Sequence[str], schedule: Schedule) -> list[GridConfig]:
    """Every configuration in the order it is trained: average pooling, then the rows with
    shifting (both unit kinds, N ascending), then those without, then the other seeds of the
    small configurations (most of the table's value comes first)."""
    first, *others = schedule.seeds
    cells = [GridConfig("avg", 1, False, first)]
    for shifting in (True, False):
        cells += [GridConfig(u, n, shifting, first) for n in sizes for u in units]
    small = [c for c in cells if c.units <= schedule.all_seeds_up_to]
    cells += [dataclasses.replace(c, seed=s) for s in others for c in small]
    return cells


def schedule_from_options(quick: bool = False, **overrides: float | str | None) -> Schedule:
    """AUTHORS (or QUICK) with the given fields replaced; each number must be positive (and
    whole, except lr). The name records the overrides, so a custom run says it is one."""
    base = QUICK if quick else AUTHORS
    chosen = {k: v for k, v in overrides.items() if v is not None}
    for name, value in chosen.items():
        if name == "precision":
            if value not in PRECISION_CHOICES:
                raise UserError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, "
                                f"got {value!r}")
        elif value <= 0 or (name != "lr" and value != int(value)):
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
    """'linear,mlp_shared' -> ('linear', 'mlp_shared'), each one of ATTENTION_UNITS."""
    units = tuple(u.strip() for u in text.split(",") if u.strip())
    if not units or not set(units) <= set(ATTENTION_UNITS):
        raise UserError(f"--units must be among {', '.join(ATTENTION_UNITS)}, got {text!r}")
    return units


def settings_from_options(
    *, quick: bool = False, epochs: int | None = None, precision: str | None = None,
    sizes: str | None = None, units: str | None = None, hours: float | None = None,
    source: str = "sklearn",
    mnist_dir: Path | None = None, device: str = "auto", data_dir: Path | None = None,
    runs_dir: Path | None = None, docs_dir: Path | None = None, progress: bool = True,
) -> Settings:
    """The Settings the `cli.py reproduce` options describe (None: the default)."""
    from pipeline.datasets.generated.digits import SOURCES  # cv2: only when actually used

    schedule = schedule_from_options(quick, epochs=epochs, precision=precision)
    if source not in SOURCES:
        raise UserError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    if hours is not None and not hours > 0:
        raise UserError(f"--hours must be positive, got {hours}")
    defaults = Settings()
    return Settings(
        schedule=schedule,
        sizes=parse_sizes(sizes) if sizes is not None else (QUICK_SIZES if quick else SIZES),
        units=parse_units(units) if units is not None else UNITS,
        source=source, mnist_dir=mnist_dir, device=device,
        data_dir=data_dir or defaults.data_dir, runs_dir=runs_dir or defaults.runs_dir,
        docs_dir=docs_dir or defaults.docs_dir, progress=progress,
        deadline=time.time() + 3600 * hours if hours else None)

"""Training settings: every default declared once, here.

A profile's `train:` section and the CLI's options are both read through
`TrainConfig.from_dict`, so a key this dataclass knows is accepted everywhere and a typo is
refused everywhere with the same line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from extract.errors import UserError
from model.attention import UNIT_KINDS
from model.network import HEADS
from pipeline.train.precision import PRECISIONS

SCHEDULES = ("none", "cosine", "step")
# Settings that change how a run looks or where it runs, not what it computes.
PRESENTATION_KEYS = ("progress", "device", "num_workers", "streaming", "memory_budget_gb")
THREADS_ENV = "AC_TORCH_THREADS"  # torch CPU threads of `train` and of `classify`'s model
DEFAULT_THREADS = 1  # 0: torch's own choice, one per core (see torch_threads)


def threads_wanted() -> int:
    """AC_TORCH_THREADS if set, else DEFAULT_THREADS; refused with one line if not a count."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit():
        raise UserError(f"{THREADS_ENV}={value!r}: expected a thread count (0: torch's default)")
    return int(value)


@contextlib.contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Torch math on `count` threads (None: threads_wanted()) while the block runs.

    Why one by default: these models are small, so a second thread gains little, while with
    torch's one thread per core a core taken by another process leaves OpenMP's threads
    spinning for each other at every operation: on a 2-core machine with one core busy a
    toy epoch took several times as long at 2 threads as at 1 (bench/train_threads.py).
    """
    count = threads_wanted() if count is None else count
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainConfig:
    """Everything a run depends on; field names match the `train:` section of a profile."""

    split: int = 1
    modalities: list[str] | None = None  # None: every modality of the store
    epochs: int | None = None  # None: decided by the data, see epochs_for
    min_epochs: int = 30  # with epochs unset: at least this many...
    min_steps: int = 600  # ...and more for a small set, until this many optimiser steps
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"  # none | cosine | step (x0.1 at 1/2 and 3/4 of the epochs)
    clusters: dict[str, int] = field(default_factory=lambda: {"rgb": 64, "flow": 32, "audio": 32})
    default_clusters: int = 32  # units for a modality not named in `clusters`
    unit: str = "mlp"
    shifting: bool = True
    dropout: float = 0.5
    head: str = "linear"
    hidden: int = 128
    seed: int = 0
    # fp32, bf16 or bf16_head: the training forward pass, all or only the head under bf16
    # autocast (pipeline/train/precision.py); faster on CPUs with AVX512-BF16 or AMX and on
    # recent GPUs.
    precision: str = "fp32"
    device: str = "auto"
    memory_budget_gb: float | None = None  # None: half the available memory
    streaming: str = "auto"  # auto | on | off
    num_workers: int = 1  # DataLoader workers when streaming
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a profile's `train:` mapping (plus CLI overrides), rejecting typos."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"unknown training option(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        config = cls(**values)
        config.validate()
        return config

    def resumable_settings(self) -> dict[str, Any]:
        """The settings a continued run must share with the one that wrote last.pt."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in PRESENTATION_KEYS}

    def validate(self) -> None:
        """One clear line for an impossible setting (or one of the wrong type)."""
        try:
            self._check_values()
        except (TypeError, AttributeError) as exc:  # e.g. epochs: "ten", clusters: [8, 8]
            raise UserError(f"training config: a setting has the wrong type ({exc})") from None

    def _check_values(self) -> None:
        checks = [
            (self.unit in UNIT_KINDS, f"unit must be one of {', '.join(UNIT_KINDS)}"),
            (self.head in HEADS, f"head must be one of {', '.join(HEADS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.streaming in ("auto", "on", "off"), "streaming must be auto, on or off"),
            (self.epochs is None or self.epochs >= 1, "epochs must be at least 1"),
            (self.min_epochs >= 1, "min_epochs must be at least 1"),
            (self.min_steps >= 0, "min_steps must be at least 0"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (0 < self.lr < math.inf, "lr must be a positive, finite number"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (all(n >= 1 for n in self.clusters.values()), "every cluster needs >= 1 unit"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"training config: {message}")

    def epochs_for(self, train_rows: int) -> int:
        """The epochs to run on `train_rows` training videos: `epochs` when set, else at least
        `min_epochs` and enough for `min_steps` optimiser steps.

        Why: a fixed epoch count gives a small set a handful of steps (8 videos per class and
        batch 64 make 1 step per epoch), and such a model ranks the classes right at near
        uniform probabilities (34% / 33% / 33%), which reads as "the model does not know".
        """
        if self.epochs is not None:
            return self.epochs
        return max(self.min_epochs,
                   math.ceil(self.min_steps / max(1, self.steps_per_epoch(train_rows))))

    def steps_per_epoch(self, train_rows: int) -> int:
        """Optimiser steps of one pass over `train_rows` videos (the last batch may be short)."""
        return math.ceil(train_rows / self.batch_size)

    def units_for(self, modality: str) -> int:
        return int(self.clusters.get(modality, self.default_clusters))

"""Where training runs go (runs/<dataset>/<timestamp>[-split<N>]/) and how commands find them.

`evaluate` and `classify` default to the newest checkpoint of the dataset, so the three headline
commands work with no arguments.
"""

from __future__ import annotations

import time
from pathlib import Path

from extract.errors import UserError

RUNS_ROOT = Path("runs")
CHECKPOINT_NAME = "best.pt"


def new_run_dir(dataset: str, split: int | None = None, root: Path = RUNS_ROOT) -> Path:
    """A fresh, sortable run folder name; never reuses an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = f"-split{split}" if split is not None else ""
    candidate, n = root / dataset / f"{stamp}{suffix}", 1
    while candidate.exists():
        n += 1
        candidate = root / dataset / f"{stamp}{suffix}-{n}"
    return candidate


def checkpoints_of(dataset: str, root: Path = RUNS_ROOT) -> list[Path]:
    """Every run checkpoint of a dataset, newest first."""
    found = list((root / dataset).glob(f"*/{CHECKPOINT_NAME}"))
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_checkpoint(dataset: str, root: Path = RUNS_ROOT) -> Path:
    found = checkpoints_of(dataset, root)
    if not found:
        raise UserError(
            f"no checkpoint of dataset '{dataset}' under {root / dataset}: "
            f"run `make train DATASET={dataset}` first (or give --checkpoint)"
        )
    return found[0]

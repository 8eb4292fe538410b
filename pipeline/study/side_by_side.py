"""Train one grid configuration for a few epochs with some settings changed, for the checks
that justify or explain a choice of the grid (bench/flash_precision.py: bf16 vs fp32;
bench/flash_dropout.py: why the rows without shifting learn so little)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.study.run import train_config
from pipeline.study.settings import GridConfig, Settings
from pipeline.train.loop import train

CHECK_SETTINGS = Settings(device="cpu", progress=False)


def train_variant(store: Path, out_dir: Path, cell: GridConfig, epochs: int, precision: str,
                  **changes: Any) -> tuple[list[float], float]:
    """Test top-1 after every epoch and the seconds taken, for `cell` trained as the grid
    does but for `epochs` epochs, in `precision`, with the TrainConfig fields `changes`."""
    config = dataclasses.replace(train_config(CHECK_SETTINGS, cell, precision), epochs=epochs,
                                 **changes)
    started = time.perf_counter()
    outcome = train(store, out_dir, config)
    return [h["val"]["top1"] for h in outcome.history], time.perf_counter() - started


def check_parser(description: str, docs_name: str) -> argparse.ArgumentParser:
    """The options every check takes: --store, --quick, --write-docs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--store", type=Path, default=Path("data/flash-mnist/features.zarr"))
    parser.add_argument("--quick", action="store_true", help="one small configuration")
    parser.add_argument("--write-docs", action="store_true", help=f"also write docs/{docs_name}")
    return parser


def checked(args: argparse.Namespace) -> argparse.Namespace:
    """`args` once the store exists (else one line and exit 1), torch at one thread as the
    grid's workers."""
    if not args.store.exists():
        sys.exit(f"error: no feature store at {args.store} (run `python cli.py reproduce` "
                 "first, or pass --store)")
    torch.set_num_threads(1)
    return args

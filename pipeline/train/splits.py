"""The official splits: train one model per split, evaluate the newest model of each.

UCF101 and HMDB51 report the mean over their three splits, each split with its own model;
`--split all` on `train` and `evaluate` does exactly that, with run folders named after the
split so the newest checkpoint of each split can be found again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extract.errors import UserError
from pipeline.profiles import default_profile_for, load_profile
from pipeline.remote.urls import Location
from pipeline.store.feature_store import open_store
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.evaluate import evaluate, evaluate_splits
from pipeline.train.loop import TrainResult, train
from pipeline.train.runs import checkpoints_of, new_run_dir, newest_checkpoint


def check_split_option(split: str) -> None:
    """`--split` is a split number or 'all' (numbers are checked against the store later)."""
    if split != "all" and not split.isdigit():
        raise UserError(f"--split must be a split number or 'all', got {split!r}")


def parse_splits(split: str, available: int) -> list[int]:
    """'all' -> 1..S; a number -> [that number]."""
    check_split_option(split)
    return list(range(1, available + 1)) if split == "all" else [int(split)]


def run_dir_for(dataset: str, split: int, several: bool, out: Path | None) -> Path:
    """`--out` as given for one split, `--out/splitN` for several, else a new runs/ folder."""
    if out is not None:
        return out / f"split{split}" if several else out
    return new_run_dir(dataset, split if several else None)


def train_splits(store: Location, dataset: str, split: str, profile: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, out: Path | None = None
                 ) -> list[TrainResult]:
    """Train on one split or on every split ('all') of `store`, one run folder each.

    Settings: the profile's `train:` section (the dataset's own profile when None), then
    `overrides` (the CLI's options) on top.
    """
    settings = {**load_profile(profile or default_profile_for(dataset))["train"],
                **(overrides or {})}
    numbers = parse_splits(split, open_store(store).num_splits)
    return [
        train(store, run_dir_for(dataset, number, len(numbers) > 1, out),
              TrainConfig.from_dict({**settings, "split": number}))
        for number in numbers
    ]


def newest_checkpoint_per_split(dataset: str) -> list[Path]:
    """The newest checkpoint of every split trained under runs/<dataset>, by split number."""
    newest: dict[int, Path] = {}
    for path in checkpoints_of(dataset):  # newest first
        newest.setdefault(int(load_checkpoint(path).get("split", 1)), path)
    if not newest:
        raise UserError(f"--split all averages the newest checkpoint of each split under "
                        f"runs/{dataset}: train them with `cli.py train --split all`")
    return [newest[number] for number in sorted(newest)]


def evaluate_dataset(dataset: str, store: Location, checkpoint: Path | None = None,
                     split: str | None = None, device: str = "auto",
                     per_class_csv: Path | None = None) -> dict[str, Any]:
    """`evaluate`: one checkpoint on one split, or ('all') the mean over every split.

    With 'all' the result is {"splits": {...}, "mean": {...}}; otherwise the metrics of the
    checkpoint (the newest of the dataset unless given) on its split or on `split`.
    """
    if split == "all":
        if checkpoint is not None:
            raise UserError("--split all averages the newest checkpoint of each split under "
                            f"runs/{dataset}; it takes no --checkpoint")
        return evaluate_splits(newest_checkpoint_per_split(dataset), store, device=device)
    if split is not None:
        check_split_option(split)
    return evaluate(checkpoint or newest_checkpoint(dataset), store,
                    split=int(split) if split else None, device=device,
                    per_class_csv=per_class_csv)

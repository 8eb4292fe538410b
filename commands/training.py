"""`cli.py train` and `cli.py evaluate`: store -> checkpoint -> test metrics."""

from __future__ import annotations

from pathlib import Path

import click

from commands.options import DATASET, PATH_OR_URL, device_option, store_for
from pipeline.atomic import json_text
from pipeline.remote.urls import Location


@click.command()
@click.option("--dataset", default=DATASET, show_default=True, help="Dataset name.")
@click.option("--features", "store_path", type=PATH_OR_URL,
              help="Feature store, a path or URL [features/DATASET.zarr].")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run folder [runs/DATASET/<timestamp>].")
@click.option("--split", default="1", show_default=True,
              help="Official split to train on (1-based), or 'all' for one model per split.")
@click.option("--epochs", type=click.IntRange(min=1), help="[the profile's train.epochs]")
@click.option("--batch-size", type=click.IntRange(min=1), help="[the profile's]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="[the profile's]")
@click.option("--modalities", help="Comma-separated subset, e.g. rgb,audio [all in the store].")
@click.option("--seed", type=int, help="[the profile's train.seed]")
@click.option("--config", "config", help="Profile with a train: section [configs/DATASET.yaml].")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(dataset: str, store_path: Location | None, out: Path | None, split: str,
          epochs: int | None, batch_size: int | None, lr: float | None,
          modalities: str | None, seed: int | None, config: str | None, device: str,
          as_json: bool) -> None:
    """Train the Attention Clusters classifier on a feature store."""
    from pipeline.train.splits import train_splits

    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if modalities:
        overrides["modalities"] = [m.strip() for m in modalities.split(",") if m.strip()]
    overrides.update(device=device, progress=not as_json)
    results = train_splits(store_for(dataset, store_path), dataset, split, config, overrides,
                           out)
    if as_json:
        payload = [result.to_json() for result in results]
        click.echo(json_text(payload[0] if len(payload) == 1 else payload))
        return
    for result in results:
        best = result.best_metrics
        headline = ", ".join(f"{k} {v:.3f}" for k, v in best.items()
                             if k in ("top1", "top5", "mean_class_accuracy", "gap", "map"))
        click.echo(f"split {result.split}: best epoch {result.best_epoch} of {result.epochs} "
                   f"({result.steps} optimiser steps): {headline}")
        click.echo(f"checkpoint: {result.checkpoint}")




@click.command()
@click.option("--dataset", default=DATASET, show_default=True, help="Dataset name.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint [the newest under runs/DATASET].")
@click.option("--features", "store_path", type=PATH_OR_URL,
              help="Feature store, a path or URL [features/DATASET.zarr].")
@click.option("--split", help="Split to test on [the checkpoint's]; 'all' averages the "
              "newest checkpoint of each split.")
@click.option("--per-class", type=click.Path(path_type=Path), help="Write per-class CSV here.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(dataset: str, checkpoint: Path | None, store_path: Location | None, split: str | None,
             per_class: Path | None, device: str, as_json: bool) -> None:
    """Test metrics of a checkpoint: top-1/top-5/mean class accuracy, or mAP/GAP/Hit@1/PERR."""
    from pipeline.train.splits import evaluate_dataset

    metrics = evaluate_dataset(dataset, store_for(dataset, store_path), checkpoint, split,
                               device=device, per_class_csv=per_class)
    if as_json:
        click.echo(json_text(metrics))
    elif "mean" in metrics:
        click.echo(metrics_line(metrics["mean"], "mean"))
    else:
        click.echo(metrics_line(metrics, f"split {metrics['split']}"))



def metrics_line(metrics: dict, where: str) -> str:
    names = {"top1": "top-1", "top5": "top-5", "mean_class_accuracy": "mean class accuracy",
             "map": "mAP", "gap": "GAP@20", "hit1": "Hit@1", "perr": "PERR"}
    shown = ", ".join(f"{label} {100 * metrics[key]:.1f}%" for key, label in names.items()
                      if key in metrics)
    return f"{where}: {shown} (n={metrics['n']})"

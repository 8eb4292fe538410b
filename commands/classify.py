"""`cli.py classify`: videos -> classes, with the attention picture on request."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from commands.options import DATASET, device_option
from pipeline.atomic import json_text


@click.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dataset", default=DATASET, show_default=True,
              help="Dataset whose newest checkpoint is used.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint file [newest runs/DATASET/*/best.pt].")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@device_option
@click.option("--explain", type=click.Path(path_type=Path),
              help="Write the attention picture here (several videos: NAME-1.png, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def classify(videos: tuple[Path, ...], dataset: str, checkpoint: Path | None, top_k: int,
             device: str, explain: Path | None, as_json: bool) -> None:
    """Classify videos with a trained checkpoint; --explain shows the moments that decided it."""
    from pipeline.inference.classify import classify_videos, format_table

    results = classify_videos(list(videos), checkpoint, top_k=top_k, device=device,
                              explain=explain, progress=not as_json, dataset=dataset)
    click.echo(json_text(results) if as_json else format_table(results))
    if any("error" in result for result in results):
        sys.exit(1)

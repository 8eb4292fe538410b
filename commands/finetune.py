"""`cli.py finetune`: a backbone trained TSN-style on the videos."""

from __future__ import annotations

from pathlib import Path

import click

from commands.options import DATASET, MANIFEST_KINDS, device_option
from pipeline.atomic import json_text


@click.command()
@click.argument("dataset", default=DATASET)
@click.option("--modality", required=True, help="rgb or flow: the backbone to fine-tune.")
@click.option("--root", type=click.Path(path_type=Path), help="[data/DATASET]")
@click.option("--config", "config", help="Profile [configs/DATASET.yaml, else default].")
@click.option("--kind", type=click.Choice(MANIFEST_KINDS), help="[the profile's]")
@click.option("--splits", type=click.Path(path_type=Path), help="Folder of the split files.")
@click.option("--split", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="[runs/DATASET/finetune-...]")
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--segments", type=click.IntRange(min=1), default=3, show_default=True,
              help="TSN's K: snippets per video in each training step.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="[0.001 rgb, 0.005 flow]")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="TSN's horizontal flips; --no-flip where mirroring changes the class "
                   "(the toy set's Left/Right).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option("--max-videos", type=click.IntRange(min=1), help="At most N train + N val.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def finetune(dataset: str, modality: str, root: Path | None, config: str | None,
             kind: str | None, splits: Path | None, split: int, out: Path | None, epochs: int,
             segments: int, batch_size: int, lr: float | None, flip: bool, seed: int,
             device: str,
             max_videos: int | None, as_json: bool) -> None:
    """Fine-tune the profile's RGB or flow backbone TSN-style (docs/backbones.md); rerun to
    resume. Writes MODALITY.pth, its sha256 and finetune.json for `backbone.weights_file`."""
    from pipeline.finetune.outputs import summary_text
    from pipeline.finetune.run import run_finetune
    from pipeline.finetune.settings import FinetuneSettings

    settings = FinetuneSettings(modality=modality, split=split, epochs=epochs,
                                segments=segments, batch_size=batch_size, lr=lr, flip=flip,
                                seed=seed)
    out = out or Path("runs") / dataset / f"finetune-{modality}-split{split}"
    record = run_finetune(dataset=dataset, root=root or Path("data") / dataset,
                          modality=modality, out=out, profile=config, kind=kind,
                          splits_dir=splits, settings=settings, max_videos=max_videos,
                          device=device, progress=not as_json)
    if as_json:
        click.echo(json_text({k: v for k, v in record.items() if k != "identity"}))
        return
    click.echo(summary_text(record))

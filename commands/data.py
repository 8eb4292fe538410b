"""`cli.py data generate|get|validate`: the datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from commands.options import MANIFEST_KINDS
from pipeline.datasets.obtain import GENERATED


@click.group()
def data() -> None:
    """Generate, download and validate datasets."""


@data.command("generate")
@click.argument("name", type=click.Choice(GENERATED))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [data/NAME].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--videos", type=click.IntRange(min=1),
              help="toy: number of clips; flash-mnist: training videos per class.")
@click.option("--mnist-dir", type=click.Path(path_type=Path),
              help="flash-mnist: folder with MNIST's IDX files [scikit-learn's digits].")
@click.option("--source", type=click.Choice(("auto", "mnist", "sklearn", "mnist5k", "download")),
              default="auto", show_default=True,
              help="flash-mnist digits: auto = MNIST when --mnist-dir is given, else sklearn.")
def data_generate(name: str, out: Path | None, seed: int, videos: int | None,
                  mnist_dir: Path | None = None, source: str = "auto") -> None:
    """Write a generated dataset (offline, deterministic for a seed)."""
    from pipeline.datasets.obtain import generate_dataset

    path = generate_dataset(name, out or Path("data") / name, seed, videos, mnist_dir, source)
    click.echo(f"wrote {name} to {path}")


@data.command("get")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [data/NAME].")
def data_get(name: str, out: Path | None) -> None:
    """Generate (toy, flash-mnist) or download (ucf101, hmdb51, kinetics400) a dataset."""
    from pipeline.datasets.obtain import get_dataset

    path, made = get_dataset(name, out or Path("data") / name)
    if not made:
        click.echo(f"{name} is already in {path} (`cli.py data generate {name}` remakes it)")
    elif name in GENERATED:
        click.echo(f"wrote {name} to {path}")
    else:
        click.echo(f"{name} is in {path}")


@data.command("validate")
@click.argument("kind", type=click.Choice(MANIFEST_KINDS))
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset folder.")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Folder of the official split files, when not inside the root.")
def data_validate(kind: str, root: Path, splits: Path | None) -> None:
    """Check a dataset against its official layout: classes, splits, missing files."""
    from pipeline.datasets.manifest import validate_command

    text, valid = validate_command(kind, root, splits)
    click.echo(text)
    if not valid:
        sys.exit(1)

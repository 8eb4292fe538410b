"""Command-line entry point: data, features, store, train, evaluate, classify.

Every command turns `UserError` into one line on stderr and exit code 1, so a user mistake
never shows a traceback. Heavy imports (torch, dask) happen inside the commands that need
them, so `--help` and `data validate` answer at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from extract.errors import UserError

DATASET = os.environ.get("DATASET", "toy")
GENERATED = ("toy", "flash-mnist")
MANIFEST_KINDS = ("ucf101", "hmdb51", "kinetics400", "folder")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Attention Clusters video classification: features, training and inference."""


@main.group()
def data() -> None:
    """Generate, download and validate datasets."""


@data.command("generate")
@click.argument("name", type=click.Choice(GENERATED))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [data/NAME].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--videos", type=click.IntRange(min=1),
              help="toy: number of clips; flash-mnist: training videos per class.")
def data_generate(name: str, out: Path | None, seed: int, videos: int | None) -> None:
    """Write a generated dataset (offline, deterministic for a seed)."""
    out = out or Path("data") / name
    if name == "toy":
        from pipeline.toy import generate_toy

        kwargs = {"videos": videos} if videos else {}
        path = generate_toy(out, seed=seed, **kwargs)
    else:
        from pipeline.flash_mnist import generate_flash_mnist

        kwargs = {"per_class_train": videos} if videos else {}
        path = generate_flash_mnist(out, seed=seed, **kwargs)
    click.echo(f"wrote {name} to {path}")


@data.command("get")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [data/NAME].")
def data_get(name: str, out: Path | None) -> None:
    """Generate (toy, flash-mnist) or download (ucf101, hmdb51, kinetics400) a dataset."""
    out = out or Path("data") / name
    if name in GENERATED:
        ctx = click.get_current_context()
        ctx.invoke(data_generate, name=name, out=out, seed=0, videos=None)
        return
    from pipeline.download import fetch_dataset

    click.echo(f"{name} is in {fetch_dataset(name, out)}")


@data.command("validate")
@click.argument("kind", type=click.Choice(MANIFEST_KINDS))
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset folder.")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Folder of the official split files, when not inside the root.")
def data_validate(kind: str, root: Path, splits: Path | None) -> None:
    """Check a dataset against its official layout: classes, splits, missing files."""
    from pipeline.manifests import validate_command

    text, valid = validate_command(kind, root, splits)
    click.echo(text)
    if not valid:
        sys.exit(1)


def run() -> None:
    """Run the CLI, turning user errors into one clear line and a non-zero exit."""
    try:
        code = main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()

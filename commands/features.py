"""`cli.py features`: videos -> feature store, with the run's notes on stderr."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from commands.options import DATASET, MANIFEST_KINDS, PATH_OR_URL, dataset_paths, device_option
from extract.errors import UserError
from pipeline.atomic import json_text
from pipeline.remote.urls import Location


@click.command()
@click.argument("dataset", default=DATASET)
@click.option("--root", type=PATH_OR_URL,
              help="Dataset folder or URL (s3://bucket/ucf101) [data/DATASET].")
@click.option("--config", "config", help="Profile name or YAML path [configs/DATASET.yaml, "
              "else configs/default.yaml].")
@click.option("--kind", type=click.Choice(MANIFEST_KINDS),
              help="Dataset layout [the profile's dataset.kind].")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Folder of the official split files, when not inside the root.")
@click.option("--out", type=PATH_OR_URL,
              help="Store, a path or URL (s3://bucket/x.zarr) [features/DATASET.zarr].")
@click.option("--workers", type=click.IntRange(min=1), help="Local Dask workers [one per core].")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:8786).")
@device_option
@click.option("--limit", type=click.IntRange(min=1), help="Only N videos, spread over the set.")
@click.option("--overwrite", is_flag=True, help="Recompute rows that are already done.")
@click.option("--repair", is_flag=True, help="Read every chunk of the store first and recompute "
              "the rows whose data is damaged (missing chunks are always recomputed).")
@click.option("--strict", is_flag=True, help="Exit 1 if any video failed.")
@click.option("--flush-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Write finished videos to the store at least this often.")
@click.option("--json", "as_json", is_flag=True, help="Print the store summary as JSON.")
@click.option("--cooperate", is_flag=True, help="Fill the store together with other "
              "`features --cooperate` runs (other machines), rows claimed with leases.")
@click.option("--lease-seconds", type=click.FloatRange(min=3), default=60.0, show_default=True,
              help="How long the lock or a lease of a dead run blocks others (object storage "
                   "and --cooperate).")
@click.option("--lease-rows", type=click.IntRange(min=1),
              help="Rows per lease with --cooperate (a power of two) [a shard's rows].")
@click.option("--gpu-workers", type=click.IntRange(min=0), help="Local workers running flow and "
              "CNNs for --gpu-batch videos at once, one GPU each, while the others decode [one "
              "per GPU with CUDA; --scheduler: its workers started with --resources GPU=1].")
@click.option("--gpu-batch", type=click.IntRange(min=1), default=8, show_default=True)
def features(dataset: str, root: Location | None, config: str | None, kind: str | None,
             splits: Path | None, out: Location | None, workers: int | None, scheduler: str | None,
             device: str, limit: int | None, overwrite: bool, strict: bool,
             flush_seconds: float, as_json: bool, repair: bool = False, cooperate: bool = False,
             lease_seconds: float = 60.0, lease_rows: int | None = None,
             gpu_workers: int | None = None, gpu_batch: int = 8) -> None:
    """Extract RGB, flow and audio features of every video of DATASET into a Zarr store.

    Rerunning the same command resumes: finished videos are not recomputed.
    """
    from pipeline.features.dask_runner import format_run_summary
    from pipeline.features.run import run_features
    from pipeline.store.summary import format_summary, summarize

    root, out = dataset_paths(dataset, root, out)
    result = run_features(
        kind=kind, root=root, profile=config, out=out,
        dataset=dataset, splits_dir=splits, workers=workers, scheduler=scheduler,
        device=device, limit=limit, overwrite=overwrite, flush_seconds=flush_seconds,
        repair=repair, cooperate=cooperate, lease_s=lease_seconds, lease_rows=lease_rows,
        gpu_workers=gpu_workers, gpu_batch=gpu_batch,
    )
    if result.run.interrupted:  # one line: the rows handed back so far are flushed
        written, listed = result.written()
        click.echo(f"interrupted: {written} of {listed} videos written to {out}; rerun the "
                   f"same command to resume", err=True)
        sys.exit(130)
    summary = summarize(result.store)
    if result.damage is not None:
        click.echo(result.damage.note(), err=True)
    if result.relisting is not None:
        click.echo(result.relisting.describe(), err=as_json)
    click.echo(format_run_summary(result.run), err=as_json)
    if result.skipped_missing:
        click.echo(f"note: {result.skipped_missing} listed videos are missing on disk",
                   err=True)
    if result.left_to_others:
        click.echo(f"note: {result.left_to_others} rows computed here were left to the run "
                   f"that took their block over (this run was stalled past its lease)",
                   err=True)
    if result.skipped_unsafe:
        click.echo(f"note: {result.skipped_unsafe} list entries lead outside {root} and were "
                   f"not read (`cli.py data validate` lists them)", err=True)
    if result.skipped_unreadable:
        click.echo(f"note: {result.skipped_unreadable} entries under {root} cannot be read and "
                   f"were skipped (`cli.py data validate` lists them)", err=True)
    click.echo(json_text(summary) if as_json else format_summary(summary))
    failed = sum(m["counts"]["failed"] for m in summary["modalities"].values())
    done = sum(m["counts"]["done"] for m in summary["modalities"].values())
    if done == 0:
        raise UserError(_no_features(summary, out))
    if strict and failed:
        sys.exit(1)


def _no_features(summary: dict, out: Location) -> str:
    """Why a run that computed nothing usable is not a success, with the counts."""
    counts = "; ".join(
        f"{name}: " + ", ".join(f"{n} {label}" for label, n in info["counts"].items() if n)
        for name, info in summary["modalities"].items())
    if any(info["counts"]["failed"] for info in summary["modalities"].values()):
        return (f"all {summary['videos']} videos failed ({counts}): see `cli.py store info "
                f"{out}` for the errors")
    return f"none of the {summary['videos']} videos has features ({counts})"

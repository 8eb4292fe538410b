"""`cli.py store info`: what a store holds, or where it is damaged."""

from __future__ import annotations

import sys

import click

from commands.options import PATH_OR_URL
from pipeline.atomic import json_text
from pipeline.remote.urls import Location


@click.group()
def store() -> None:
    """Inspect feature stores."""


@store.command("info")
@click.argument("path", type=PATH_OR_URL)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Read every chunk: report the damaged rows per "
              "modality, exit 1 if any.")
def store_info(path: Location, as_json: bool, verify: bool = False) -> None:
    """Counts per modality and status, failures with their errors, the extraction config."""
    from pipeline.store.summary import format_summary, read_summary

    if verify:
        from pipeline.store.feature_store import open_store
        from pipeline.store.verify import find_damage

        report = find_damage(open_store(path), full=True, progress=not as_json)
        click.echo(json_text(report.to_json()) if as_json else report.describe())
        sys.exit(1 if report.damaged else 0)
    summary = read_summary(path)
    click.echo(json_text(summary) if as_json else format_summary(summary))

"""Dataset manifests: which videos a dataset has, their labels and official split membership.

`load_manifest(kind, root, splits_dir)` dispatches to one adapter per dataset layout
(`ucf101`, `hmdb51`, `kinetics`, `folder` in this package); other
modules plug more datasets in by adding to `ADAPTERS`. `validate_command` is what
`cli.py data validate` prints and exits on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from extract.errors import UserError
from pipeline.datasets.base import VIDEO_EXTENSIONS, Manifest, Problem, ValidationReport, VideoEntry
from pipeline.datasets.folder import load_folder
from pipeline.datasets.hmdb51 import load_hmdb51
from pipeline.datasets.kinetics import load_kinetics400
from pipeline.datasets.ucf101 import load_ucf101
from pipeline.remote.paths import RemotePath
from pipeline.remote.urls import is_url

__all__ = [
    "ADAPTERS",
    "VIDEO_EXTENSIONS",
    "Manifest",
    "Problem",
    "ValidationReport",
    "VideoEntry",
    "format_summary",
    "is_valid",
    "load_manifest",
    "validate_command",
]

Adapter = Callable[[Path, Path | None], Manifest]

ADAPTERS: dict[str, Adapter] = {
    "ucf101": load_ucf101,
    "hmdb51": load_hmdb51,
    "kinetics400": load_kinetics400,
    "folder": load_folder,
}

EXAMPLES_SHOWN = 5


def load_manifest(kind: str, root: Path | str, splits_dir: Path | str | None = None) -> Manifest:
    """The manifest of the dataset at `root`, read with the adapter registered as `kind`."""
    adapter = ADAPTERS.get(kind)
    if adapter is None:
        raise UserError(f"unknown dataset kind {kind!r}: choose one of {', '.join(ADAPTERS)}")
    return adapter(_place(root), _place(splits_dir) if splits_dir is not None else None)


def _place(location: Path | str) -> Any:
    """A folder as a `Path`, a URL (s3://bucket/ucf101) as a `RemotePath`."""
    return RemotePath(str(location)) if is_url(location) else Path(location)


def is_valid(manifest: Manifest) -> bool:
    """Usable as is: at least one video, and no problem at all, except missing files for
    datasets where they are normal (Kinetics), which are simply left out."""
    problems = manifest.problems
    tolerated = len(problems.missing) if manifest.missing_files_allowed else 0
    return bool(manifest.videos) and problems.count() == tolerated


def format_summary(manifest: Manifest) -> str:
    """Human summary: classes, train/test/unused counts per split, then every kind of problem
    with its count and the first few examples, then the verdict."""
    task = "multi-label" if manifest.task == "multi" else "single-label"
    lines = [
        f"{manifest.dataset} at {manifest.root}: {len(manifest.classes)} classes, "
        f"{len(manifest.videos)} videos ({task})"
    ]
    for name, counts in manifest.count_by_split().items():
        lines.append(
            f"  {name}: train {counts['train']}, test {counts['test']}, unused {counts['unused']}"
        )
    for title, problems in manifest.problems.sections():
        if not problems:
            continue
        note = ""
        if problems is manifest.problems.missing and manifest.missing_files_allowed:
            note = " (allowed for this dataset: left out of the manifest)"
        lines.append(f"{title}: {len(problems)}{note}")
        lines.extend(f"  {problem}" for problem in problems[:EXAMPLES_SHOWN])
        if len(problems) > EXAMPLES_SHOWN:
            lines.append(f"  ... and {len(problems) - EXAMPLES_SHOWN} more")
    if is_valid(manifest):
        lines.append("valid")
    elif not manifest.videos:
        lines.append("INVALID: no videos found")
    else:
        lines.append("INVALID: fix the problems above")
    return "\n".join(lines)


def validate_command(
    kind: str, root: Path | str, splits_dir: Path | str | None = None
) -> tuple[str, bool]:
    """(summary to print, valid?) for `cli.py data validate`; exit 1 when not valid.
    A missing root or split file raises UserError instead."""
    manifest = load_manifest(kind, root, splits_dir)
    return format_summary(manifest), is_valid(manifest)

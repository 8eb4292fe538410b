"""Placing unpacked files into the dataset layout and checking that layout is complete.

Completeness is judged by the dataset's manifest (`load_manifest`), the same reading of the
official split lists that `cli.py data validate` and feature extraction use, so a download
counts as done exactly when the rest of the pipeline will find every listed video.
"""

from __future__ import annotations

import re
from pathlib import Path

from extract.errors import UserError
from pipeline.datasets.base import VIDEO_EXTENSIONS
from pipeline.datasets.manifest import load_manifest


def place_videos(unpacked: Path, out: Path) -> int:
    """Move every video to `<out>/<its folder name>/`; returns how many moved."""
    moved = 0
    for video in sorted(unpacked.rglob("*")):
        suffix = video.suffix.lower()
        if suffix in VIDEO_EXTENSIONS and video.is_file() and video.parent != unpacked:
            target = out / video.parent.name / video.name
            target.parent.mkdir(parents=True, exist_ok=True)
            video.replace(target)
            moved += 1
    return moved


def place_matching(unpacked: Path, target: Path, keep: re.Pattern[str]) -> int:
    """Move files whose name matches `keep` flat into `target`; returns how many moved."""
    found = [p for p in sorted(unpacked.rglob("*")) if p.is_file() and keep.match(p.name)]
    target.mkdir(parents=True, exist_ok=True)
    for path in found:
        path.replace(target / path.name)
    return len(found)


def missing_listed_videos(dataset: str, out: Path) -> list[str]:
    """Video ids (paths relative to `out`, sorted) that the official split lists name but that
    have no file. Names that differ only in case match (UCF101's lists and folder names
    disagree for a few classes). Raises UserError when the split lists are absent."""
    manifest = load_manifest(dataset, out)
    present = {entry.id for entry in manifest.existing()}
    return sorted(entry.id for entry in manifest.videos if entry.id not in present)


def layout_complete(dataset: str, out: Path) -> bool:
    """True when the split lists are there and every video they name is too (placed by hand)."""
    try:
        manifest = load_manifest(dataset, out)
    except UserError:  # no (complete) split lists yet: nothing is in place
        return False
    return bool(manifest.videos) and len(manifest.existing()) == len(manifest.videos)

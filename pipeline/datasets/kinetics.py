"""Kinetics-400 adapter: the official annotation CSVs (label, youtube_id, time_start, time_end,
split) over clips named `<youtube_id>_<start:06d>_<end:06d>.<ext>`.

Clips are searched in the three layouts that downloaders produce: flat in the root,
`<root>/<split>/`, and `<root>/<split>/<label>/`. Many clips have vanished from YouTube, so a
missing clip is reported and left out, never fatal. Split mapping (one split, "train/val"):
train -> train, val/validate -> test, test -> unused (kept, with its label when the CSV has one,
so nothing is silently dropped; the paper and common practice report on the validation set).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from extract.errors import UserError
from pipeline.datasets.base import (
    Manifest,
    Problem,
    ValidationReport,
    VideoEntry,
    is_utf8,
    printable,
    require_root,
)
from pipeline.datasets.disk import DiskIndex
from pipeline.store.format import Split

DEFAULT_SPLITS_DIR = "annotations"
REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end")
# Canonical split -> the folder / CSV split names that mean it.
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "validate", "validation", "valid"),
    "test": ("test", "testing"),
}
SPLIT_CODES = {"train": Split.TRAIN, "val": Split.TEST, "test": Split.UNUSED}
_CANONICAL = {alias: name for name, aliases in SPLIT_ALIASES.items() for alias in aliases}
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class _Row:
    where: str
    label: str | None
    stem: str
    split: str


def load_kinetics400(root: Path, splits_dir: Path | None = None) -> Manifest:
    """Kinetics-400 clips found on disk; absent clips go to problems.missing."""
    root = require_root(root, "Kinetics-400")
    report = ValidationReport()
    rows = [row for path in _find_csv_files(root, splits_dir) for row in _read_csv(path, report)]
    classes = sorted({row.label for row in rows if row.label})
    label_of = {name: i for i, name in enumerate(classes)}
    disk = DiskIndex(root)
    finder = _ClipFinder(disk)
    first_seen: dict[str, str] = {}
    videos = []
    for row in rows:
        if row.stem in first_seen:
            report.duplicates.append(
                Problem(row.where, f"clip {row.stem} already listed at {first_seen[row.stem]}")
            )
            continue
        first_seen[row.stem] = row.where
        video_id = finder.find(row.stem, row.split, row.label)
        if video_id is None:
            report.missing.append(Problem(row.where, f"clip {row.stem} not found"))
        elif not disk.refuse(video_id, report):
            label = label_of[row.label] if row.label else -1
            videos.append(VideoEntry(id=video_id, label=label, splits=(SPLIT_CODES[row.split],)))
    report.unreadable.extend(disk.problems())
    videos.sort(key=lambda entry: entry.id)
    return Manifest(
        dataset="kinetics400",
        root=root,
        classes=classes,
        task="single",
        split_names=["train/val"],
        videos=videos,
        problems=report,
        missing_files_allowed=True,
    )


def _find_csv_files(root: Path, splits_dir: Path | None) -> list[Path]:
    """`splits_dir` may be one CSV or a folder of them; by default root/annotations/*.csv."""
    where = Path(splits_dir).expanduser() if splits_dir else root / DEFAULT_SPLITS_DIR
    files = [where] if where.is_file() else sorted(where.glob("*.csv")) if where.is_dir() else []
    if not files:
        raise UserError(
            f"Kinetics-400 annotation CSVs not found in {where}: expected train.csv, "
            "validate.csv (test.csv optional) (give --splits DIR)"
        )
    return files


def _split_from_filename(path: Path) -> str | None:
    """train.csv, kinetics_val.csv ... name their split; used when a CSV has no split column."""
    for token in re.split(r"[^a-z]+", path.stem.lower()):
        if token in _CANONICAL:
            return _CANONICAL[token]
    return None


def _read_csv(path: Path, report: ValidationReport) -> list[_Row]:
    """The CSV's rows; one that is not valid UTF-8 (read with surrogateescape to find it) is
    reported as malformed and costs that row only."""
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            absent = [name for name in REQUIRED_COLUMNS if name not in header]
            if absent:
                raise UserError(f"{path} is not a Kinetics CSV: no column {', '.join(absent)}")
            reader.fieldnames = header
            default_split = _split_from_filename(path)
            rows = []
            for record in reader:
                row = _parse_row(record, f"{path.name}:{reader.line_num}", default_split, report)
                if row is not None:
                    rows.append(row)
            return rows
    except (OSError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def _parse_row(
    record: dict[str, str | None], where: str, default_split: str | None, report: ValidationReport
) -> _Row | None:
    values = {key: (value or "").strip() for key, value in record.items() if key}
    if not all(is_utf8(value) for value in values.values()):
        shown = ",".join(printable(value) for value in values.values())
        report.malformed.append(Problem(where, f"not valid UTF-8: {shown}"))
        return None
    youtube_id = values["youtube_id"]
    if "/" in youtube_id or "\\" in youtube_id:
        report.unsafe.append(Problem(where, f"youtube_id {youtube_id!r} contains a path separator"))
        return None
    if not _YOUTUBE_ID.match(youtube_id):
        report.malformed.append(Problem(where, f"youtube_id {youtube_id!r} is not a YouTube id"))
        return None
    try:
        start, end = int(float(values["time_start"])), int(float(values["time_end"]))
    except ValueError:
        report.malformed.append(
            Problem(where, f"times {values['time_start']!r}, {values['time_end']!r} not numbers")
        )
        return None
    split = _CANONICAL.get(values.get("split", "").lower(), default_split)
    if split is None:
        report.malformed.append(Problem(where, f"unknown split {values.get('split', '')!r}"))
        return None
    label = values.get("label") or None
    return _Row(where=where, label=label, stem=f"{youtube_id}_{start:06d}_{end:06d}", split=split)


def _label_key(name: str) -> str:
    """Folder names made from labels differ by downloader ("air drumming", "air_drumming",
    quotes or brackets dropped); comparing letters and digits only matches them all."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


class _ClipFinder:
    """Finds a clip by file stem in the supported layouts, reading each folder once."""

    def __init__(self, disk: DiskIndex) -> None:
        self.disk = disk
        top = disk.subdirs("")
        self.split_dirs = {
            name: [d for d in top if d.lower() in aliases]
            for name, aliases in SPLIT_ALIASES.items()
        }
        self._stems: dict[str, dict[str, str]] = {}
        self._label_dirs: dict[str, dict[str, str]] = {}

    def _stem_map(self, rel_dir: str) -> dict[str, str]:
        if rel_dir not in self._stems:
            names = self.disk.video_files(rel_dir)
            self._stems[rel_dir] = {os.path.splitext(name)[0]: name for name in names}
        return self._stems[rel_dir]

    def _label_dir(self, split_dir: str, label: str) -> str | None:
        if split_dir not in self._label_dirs:
            subdirs = self.disk.subdirs(split_dir)
            self._label_dirs[split_dir] = {_label_key(name): name for name in subdirs}
        return self._label_dirs[split_dir].get(_label_key(label))

    def find(self, stem: str, split: str, label: str | None) -> str | None:
        """The clip's id (path relative to the root), or None when it is nowhere."""
        candidates = [""]
        for split_dir in self.split_dirs[split]:
            candidates.append(split_dir)
            label_dir = self._label_dir(split_dir, label) if label else None
            if label_dir:
                candidates.append(f"{split_dir}/{label_dir}")
        for rel_dir in candidates:
            name = self._stem_map(rel_dir).get(stem)
            if name:
                return f"{rel_dir}/{name}" if rel_dir else name
        return None

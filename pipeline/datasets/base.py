"""Shared pieces of the dataset manifests: the data types, path safety and name rules.

The adapters (one module per dataset) only parse their official list files; everything that
must behave identically across datasets (what an id is, what counts as unsafe, which names can
be ids) lives here, the view of the files on disk in `disk.py` and the reading of list files in
`lists.py`, so that `data validate` means the same thing for every dataset.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from extract.errors import UserError
from pipeline.remote.paths import RemotePath
from pipeline.remote.urls import remote_errors
from pipeline.store.format import Split

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}
)


@dataclass(frozen=True)
class VideoEntry:
    """One video: `id` is its path relative to the dataset root (posix, unique)."""

    id: str
    splits: tuple[int, ...]
    label: int = -1
    labels: tuple[int, ...] = ()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: `where` is a list file position (file:line) or a video id."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ValidationReport:
    """Everything found wrong while building a manifest, grouped by kind."""

    missing: list[Problem] = field(default_factory=list)
    unknown_classes: list[Problem] = field(default_factory=list)
    duplicates: list[Problem] = field(default_factory=list)
    unsafe: list[Problem] = field(default_factory=list)
    malformed: list[Problem] = field(default_factory=list)
    conflicts: list[Problem] = field(default_factory=list)
    unreadable: list[Problem] = field(default_factory=list)

    def sections(self) -> list[tuple[str, list[Problem]]]:
        """(human title, problems) for every kind, in a fixed order for stable output."""
        return [
            ("missing files", self.missing),
            ("unknown classes", self.unknown_classes),
            ("duplicates", self.duplicates),
            ("unsafe paths", self.unsafe),
            ("malformed lines", self.malformed),
            ("label/split conflicts", self.conflicts),
            ("unreadable entries", self.unreadable),
        ]

    def count(self) -> int:
        return sum(len(problems) for _, problems in self.sections())


@dataclass
class Manifest:
    """A dataset as the pipeline sees it: classes, videos with labels and split membership.

    `missing_files_allowed` is true for datasets where absent videos are normal (Kinetics clips
    vanish from YouTube): their missing files are reported but do not make the dataset invalid.
    """

    dataset: str
    root: Path | RemotePath  # a folder, or a prefix on object storage (--root s3://...)
    classes: list[str]
    task: Literal["single", "multi"]
    split_names: list[str]
    videos: list[VideoEntry]
    problems: ValidationReport = field(default_factory=ValidationReport)
    missing_files_allowed: bool = False

    def path(self, entry: VideoEntry) -> Path | RemotePath:
        return self.root / entry.id

    def count_by_split(self) -> dict[str, dict[str, int]]:
        """Per split name: how many videos are train, test and unused."""
        counts = {name: dict.fromkeys((s.label for s in Split), 0) for name in self.split_names}
        for entry in self.videos:
            for name, code in zip(self.split_names, entry.splits, strict=True):
                counts[name][Split(code).label] += 1
        return counts

    def existing(self) -> list[VideoEntry]:
        """The entries whose file is present now (lists may name videos not on disk)."""
        return [entry for entry, _ in self.present_files()]

    def present_files(self) -> list[tuple[VideoEntry, os.stat_result]]:
        """Each entry whose file is present now, with that one stat of it (a resume compares
        size and mtime). A stat that fails (EACCES, EIO) makes its entry absent, never an
        error: one entry that changed since the listing must not stop the others."""
        present = []
        for entry in self.videos:
            path = self.path(entry)
            try:
                info = path.stat() if isinstance(path, RemotePath) else os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                present.append((entry, info))
        return present


def require_root(root: Path | RemotePath, dataset: str) -> Path | RemotePath:
    """The dataset root as an absolute path, or a UserError naming it. A root on object
    storage that cannot be reached (no bucket, no credentials) is one line too."""
    if isinstance(root, RemotePath):
        with remote_errors(UserError, f"read the {dataset} root", root):
            if not root.is_dir():
                raise UserError(f"{dataset} root not found: {root} (give --root URL)")
        return root
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "not found"
        raise UserError(f"{dataset} root {what}: {root} (give --root DIR)")
    return root.absolute()


def safe_relative(raw: str, base: tuple[str, ...] = ()) -> str | None:
    """`raw` joined under the folder `base` as a normalised posix id, or None when unsafe.

    Unsafe: absolute paths (posix, Windows drive or UNC), NUL bytes, and any `..` that climbs
    out of `base`. Backslashes are read as separators so Windows-made lists work. The check is
    purely textual, so a hostile list can never make the pipeline open a file outside the root.
    """
    text = raw.replace("\\", "/")
    if not text or "\0" in text or text.startswith("/"):
        return None
    if len(text) >= 2 and text[1] == ":":
        return None
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join((*base, *parts)) if parts else None


def is_utf8(text: str) -> bool:
    """False for names read from disk (or lines read with surrogateescape) holding bytes that
    are not UTF-8: such a name cannot be stored as an id in Zarr or JSON."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with its non-UTF-8 bytes written as `\\xff` escapes, for one readable line."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def has_video_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS

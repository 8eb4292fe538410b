"""Shared pieces of the dataset manifests: the data types, path safety, and a cached view of
the files under a dataset root.

The adapters (one module per dataset) only parse their official list files; everything that
must behave identically across datasets (what an id is, what counts as unsafe, how missing
files are found) lives here so that `data validate` means the same thing for every dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from extract.errors import UserError
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

    def sections(self) -> list[tuple[str, list[Problem]]]:
        """(human title, problems) for every kind, in a fixed order for stable output."""
        return [
            ("missing files", self.missing),
            ("unknown classes", self.unknown_classes),
            ("duplicates", self.duplicates),
            ("unsafe paths", self.unsafe),
            ("malformed lines", self.malformed),
            ("label/split conflicts", self.conflicts),
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
    root: Path
    classes: list[str]
    task: Literal["single", "multi"]
    split_names: list[str]
    videos: list[VideoEntry]
    problems: ValidationReport = field(default_factory=ValidationReport)
    missing_files_allowed: bool = False

    def path(self, entry: VideoEntry) -> Path:
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
        return [entry for entry in self.videos if self.path(entry).is_file()]


def require_root(root: Path, dataset: str) -> Path:
    """The dataset root as an absolute path, or a UserError naming it."""
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


@dataclass(frozen=True)
class _Item:
    is_file: bool
    is_dir: bool
    is_link: bool


class DiskIndex:
    """Cached directory listings under one root.

    Each folder is listed once with `os.scandir`, so checking hundreds of thousands of list
    entries costs one directory read per folder instead of several `stat` calls per file, and
    symlinks are known without extra system calls.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = os.path.realpath(root)
        self._listings: dict[str, dict[str, _Item]] = {}

    def _listing(self, rel_dir: str) -> dict[str, _Item]:
        if rel_dir not in self._listings:
            items: dict[str, _Item] = {}
            try:
                with os.scandir(self.root / rel_dir) as entries:
                    for entry in entries:
                        items[entry.name] = _Item(
                            is_file=entry.is_file(),
                            is_dir=entry.is_dir(),
                            is_link=entry.is_symlink(),
                        )
            except OSError:
                items = {}
            self._listings[rel_dir] = items
        return self._listings[rel_dir]

    def _item(self, rel: str) -> _Item | None:
        parent, _, name = rel.rpartition("/")
        return self._listing(parent).get(name)

    def is_file(self, rel: str) -> bool:
        item = self._item(rel)
        return item is not None and item.is_file

    def on_disk(self, rel: str) -> str:
        """`rel` as spelled on disk: the official UCF101 lists say `HandStandPushups/...` where
        the folder is `HandstandPushups`, so names that match only ignoring case are resolved to
        the one file that exists (unchanged when there is no such file, or several)."""
        parts, resolved = rel.split("/"), []
        for part in parts:
            listing = self._listing("/".join(resolved))
            if part not in listing:
                matches = [name for name in listing if name.lower() == part.lower()]
                if len(matches) != 1:
                    return rel
                part = matches[0]
            resolved.append(part)
        return "/".join(resolved)

    def subdirs(self, rel_dir: str = "") -> list[str]:
        """Names of the visible folders directly inside `rel_dir`, sorted."""
        items = self._listing(rel_dir)
        return sorted(n for n, i in items.items() if i.is_dir and not n.startswith("."))

    def video_files(self, rel_dir: str = "") -> list[str]:
        """Names of the visible video files directly inside `rel_dir`, sorted."""
        items = self._listing(rel_dir)
        return sorted(
            name
            for name, item in items.items()
            if item.is_file and not name.startswith(".") and has_video_extension(name)
        )

    def escapes_root(self, rel: str) -> bool:
        """True when a symlink on the way to `rel` leads outside the root."""
        parts = rel.split("/")
        for depth in range(len(parts)):
            item = self._listing("/".join(parts[:depth])).get(parts[depth])
            if item is None:
                return False
            if item.is_link:
                real = os.path.realpath(self.root / rel)
                return os.path.commonpath([real, self._real_root]) != self._real_root
        return False


def has_video_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) for every non-blank line.

    Tolerates a UTF-8 byte-order mark, CRLF endings and trailing blanks, as found in the
    official UCF101 and HMDB51 files.
    """
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


@dataclass
class _Pending:
    label: int
    first_source: str
    # Per split: (role, list position) once a list names the video; None means unused.
    roles: list[tuple[int, str] | None]


class ListCollector:
    """Gathers (video, split, train/test) statements from official list files.

    It reports the same video twice in one split as a duplicate (same role) or a conflict
    (train in one line, test in another), then checks files on disk once per video.
    """

    def __init__(self, n_splits: int, report: ValidationReport) -> None:
        self.n_splits = n_splits
        self.report = report
        self._pending: dict[str, _Pending] = {}

    def add(self, video_id: str, label: int, split: int, code: int, source: str) -> None:
        """Record that `video_id` has role `code` in split number `split` (0-based)."""
        pending = self._pending.setdefault(
            video_id, _Pending(label=label, first_source=source, roles=[None] * self.n_splits)
        )
        if pending.label != label:
            self.report.conflicts.append(
                Problem(source, f"{video_id} has label {label} here, {pending.label} elsewhere")
            )
            return
        previous = pending.roles[split]
        if previous is None:
            pending.roles[split] = (code, source)
        elif previous[0] == code:
            self.report.duplicates.append(
                Problem(source, f"{video_id} already listed at {previous[1]}")
            )
        else:
            self.report.conflicts.append(
                Problem(
                    source,
                    f"{video_id} is {Split(code).label} here but "
                    f"{Split(previous[0]).label} at {previous[1]}",
                )
            )

    def entries(self, disk: DiskIndex) -> list[VideoEntry]:
        """The collected videos sorted by id; symlinks out of the root are reported and dropped,
        missing files are reported and kept (an official split stays complete)."""
        entries = []
        for listed_id in sorted(self._pending):
            pending = self._pending[listed_id]
            video_id = disk.on_disk(listed_id)
            if disk.escapes_root(video_id):
                self.report.unsafe.append(
                    Problem(video_id, "symlink resolves outside the dataset root")
                )
                continue
            if not disk.is_file(video_id):
                self.report.missing.append(
                    Problem(video_id, f"listed in {pending.first_source} but not found")
                )
            splits = tuple(Split.UNUSED if role is None else role[0] for role in pending.roles)
            entries.append(VideoEntry(id=video_id, label=pending.label, splits=splits))
        return entries

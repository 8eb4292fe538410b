"""A cached view of the files under a dataset root, where one broken entry costs that entry.

Every adapter finds its videos through `DiskIndex`, so a symlink loop, a FIFO named .mp4 or
a file name that is not UTF-8 is reported the same way for every dataset (`data validate`
lists it under "unreadable entries", `features` counts it) and never hides its neighbours.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.base import (
    Problem,
    ValidationReport,
    has_video_extension,
    is_utf8,
    printable,
)
from pipeline.remote.paths import RemotePath


@dataclass(frozen=True)
class _Item:
    is_file: bool
    is_dir: bool
    is_link: bool
    problem: str | None = None  # why this entry cannot be used, when it looks like data


_NOT_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _examine(entry: os.DirEntry[str]) -> _Item:
    """One listing entry; a failed stat, a name that is not UTF-8 or a video name on something
    that is not a file becomes this entry's `problem`, never an error for its folder."""
    try:
        item = _Item(entry.is_file(), entry.is_dir(), entry.is_symlink())
    except OSError as exc:  # a symlink loop, EACCES or ENAMETOOLONG on the link's target
        hidden = entry.name.startswith(".")
        return _Item(False, False, True, None if hidden else f"cannot be read: {_why(exc)}")
    if entry.name.startswith("."):
        return item
    video_name = has_video_extension(entry.name)
    if not is_utf8(entry.name):
        if item.is_dir or video_name:
            kind = "folder" if item.is_dir else "file"
            return _Item(False, False, item.is_link, f"{kind} name is not valid UTF-8 (rename it)")
        return _Item(False, False, item.is_link)
    if video_name and not (item.is_file or item.is_dir):
        return _Item(False, False, item.is_link, _not_a_file(entry.path))
    return item


def _not_a_file(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "symlink to a missing file"
    except OSError as exc:
        return f"cannot be read: {_why(exc)}"
    kind = next((what for test, what in _NOT_FILES if test(mode)), "not a regular file")
    return f"is {kind}, not a video file"


class DiskIndex:
    """Cached directory listings under one root.

    Each folder is listed once with `os.scandir`, so checking hundreds of thousands of list
    entries costs one directory read per folder instead of several `stat` calls per file, and
    symlinks are known without extra system calls. An entry that cannot be examined (a symlink
    loop, a FIFO named .mp4, a name that is not UTF-8) costs that entry only: it keeps its
    `problem`, which `reason` and `problems` report, and its siblings are listed as usual.
    """

    def __init__(self, root: Path | RemotePath) -> None:
        self.root = root
        self._real_root = str(root) if isinstance(root, RemotePath) else os.path.realpath(root)
        self._listings: dict[str, dict[str, _Item]] = {}
        self._unlisted: dict[str, str] = {}  # folder -> why it could not be listed

    def _listing(self, rel_dir: str) -> dict[str, _Item]:
        if rel_dir not in self._listings:
            items: dict[str, _Item] = {}
            self._listings[rel_dir] = items
            if isinstance(self.root, RemotePath):  # object storage: no links, FIFOs, devices
                items.update((name, _Item(not is_dir, is_dir, False))
                             for name, is_dir, _ in (self.root / rel_dir).listing())
                return items
            try:
                with os.scandir(self.root / rel_dir) as entries:
                    for entry in entries:
                        items[entry.name] = _examine(entry)
            except (FileNotFoundError, NotADirectoryError):
                pass  # an absent folder: its files are reported as missing where it matters
            except OSError as exc:  # what was listed before the error stays usable
                self._unlisted[rel_dir] = f"folder cannot be listed: {_why(exc)}"
        return self._listings[rel_dir]

    def _item(self, rel: str) -> _Item | None:
        parent, _, name = rel.rpartition("/")
        return self._listing(parent).get(name)

    def is_file(self, rel: str) -> bool:
        item = self._item(rel)
        return item is not None and item.is_file

    def reason(self, rel: str) -> str | None:
        """Why `rel` cannot be read although it (or the folder that should hold it) is there:
        its own problem or that of a folder on the way; None when readable or simply absent."""
        parts = rel.split("/")
        for depth, part in enumerate(parts):
            folder = "/".join(parts[:depth])
            item = self._listing(folder).get(part)
            if item is None and folder in self._unlisted:
                return f"{printable(folder)}: {self._unlisted[folder]}"
            if item is None:
                return None
            if item.problem:
                return item.problem if depth == len(parts) - 1 else (
                    f"{printable('/'.join(parts[: depth + 1]))}: {item.problem}")
        return None

    def problems(self) -> list[Problem]:
        """Every folder that could not be listed and every entry with a problem seen so far,
        except the video files, which `video_files` hands out for their callers to report."""
        found = [Problem(printable(rel or "."), why) for rel, why in self._unlisted.items()]
        for rel_dir, items in self._listings.items():
            found.extend(
                Problem(printable(f"{rel_dir}/{name}" if rel_dir else name), item.problem)
                for name, item in items.items()
                if item.problem and not _video_candidate(name, item)
            )
        return sorted(found, key=lambda problem: problem.where)

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
        """Names of the visible, readable folders directly inside `rel_dir`, sorted."""
        items = self._listing(rel_dir)
        return sorted(n for n, i in items.items() if i.is_dir and not n.startswith("."))

    def video_files(self, rel_dir: str = "") -> list[str]:
        """Names of the visible entries named like videos directly inside `rel_dir` that are
        files or could not be examined (callers report those: `refuse`), sorted."""
        items = self._listing(rel_dir)
        return sorted(name for name, item in items.items() if _video_candidate(name, item))

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

    def refuse(self, rel: str, report: ValidationReport) -> bool:
        """Report `rel` and answer True when it must not be read: it cannot be read (the
        entry itself or a folder on the way) or a symlink takes it outside the root."""
        why = self.reason(rel)
        if why is not None:
            report.unreadable.append(Problem(printable(rel), why))
            return True
        if self.escapes_root(rel):
            report.unsafe.append(Problem(rel, "symlink resolves outside the dataset root"))
            return True
        return False


def _video_candidate(name: str, item: _Item) -> bool:
    """A visible entry named like a video that is a file, or would be one but is broken."""
    if name.startswith(".") or item.is_dir or not has_video_extension(name):
        return False
    return item.is_file or item.problem is not None

"""A dataset root on object storage, seen through the few `Path` methods the adapters use.

The dataset adapters (UCF101, HMDB51, Kinetics, folder) read list files and look files up
under a root; with `--root s3://bucket/ucf101` that root is a `RemotePath`, so every adapter
works unchanged: `/`, `name`, `is_file`, `is_dir`, `iterdir`, `glob`, `read_text`, `open`,
`stat`. Folders are prefixes; each is listed once per `DiskIndex` (`listing`), as on disk.
"""

from __future__ import annotations

import fnmatch
import io
import os
import stat
from datetime import datetime
from typing import IO, Any

from pipeline.remote.urls import filesystem, join


class RemotePath:
    """A file or folder named by an fsspec URL; compared and sorted by that URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._fs: Any = None
        self._path = ""

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._path = filesystem(self.url)
        return self._fs

    @property
    def fs_path(self) -> str:
        _ = self.fs
        return self._path

    def __truediv__(self, name: str | os.PathLike[str]) -> RemotePath:
        return RemotePath(join(self.url, str(name).strip("/"))) if str(name) else self

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.url.rpartition("/")[2]

    @property
    def stem(self) -> str:
        name = self.name
        return name.rpartition(".")[0] if "." in name.lstrip(".") else name

    def expanduser(self) -> RemotePath:
        return self

    def absolute(self) -> RemotePath:
        return self

    def _info(self) -> dict[str, Any] | None:
        try:
            return self.fs.info(self.fs_path)
        except FileNotFoundError:
            return None

    def exists(self) -> bool:
        return self._info() is not None

    def is_file(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "file"

    def is_dir(self) -> bool:
        return self.fs.isdir(self.fs_path)

    def listing(self) -> list[tuple[str, bool, dict[str, Any]]]:
        """(name, is a folder, fsspec info) of every entry directly inside this prefix."""
        try:
            entries = self.fs.ls(self.fs_path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        inside = self.fs_path.rstrip("/")
        found = []
        for entry in entries:
            name = str(entry["name"]).rstrip("/").rpartition("/")[2]
            if str(entry["name"]).rstrip("/") != inside and name:
                found.append((name, entry.get("type") == "directory", entry))
        return sorted(found, key=lambda item: item[0])

    def iterdir(self) -> list[RemotePath]:
        return [self / name for name, _, _ in self.listing()]

    def glob(self, pattern: str) -> list[RemotePath]:
        return [self / name for name, _, _ in self.listing() if fnmatch.fnmatch(name, pattern)]

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.fs_path)

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def open(self, mode: str = "r", newline: str | None = None, encoding: str | None = None,
             errors: str | None = None) -> IO[Any]:
        raw = self.fs.open(self.fs_path, "rb")
        if "b" in mode:
            return raw
        return io.TextIOWrapper(raw, encoding=encoding or "utf-8", errors=errors,
                                newline=newline)

    def stat(self) -> os.stat_result:
        info = self._info()
        if info is None or info.get("type") != "file":
            raise FileNotFoundError(2, "no such object", self.url)
        return file_stat(info)


def file_stat(info: dict[str, Any]) -> os.stat_result:
    """An `os.stat_result` of a regular file from an fsspec info: size and modification time
    are what a resume compares (-1 when the service gives none)."""
    modified = info.get("LastModified", info.get("mtime", info.get("created")))
    if isinstance(modified, datetime):
        mtime_ns = int(modified.timestamp() * 1e9)
    elif isinstance(modified, int | float):
        mtime_ns = int(modified * 1e9)
    else:
        mtime_ns = -1
    size = int(info.get("size") or 0)
    seconds = mtime_ns / 1e9
    return os.stat_result((stat.S_IFREG | 0o444, 0, 0, 1, 0, 0, size, int(seconds),
                           int(seconds), int(seconds), seconds, seconds, seconds,
                           mtime_ns, mtime_ns, mtime_ns))

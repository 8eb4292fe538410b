"""Videos on object storage handed to the decoders as open files.

`extract/` knows files and file objects, never URLs or credentials: a task whose video is a
URL opens it here, in the worker, and passes the decoders one seekable file object, named by
its URL in every error line. Each modality reads it again from its start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pipeline.remote.urls import describe, filesystem

BLOCK_BYTES = 4 * 2**20  # one ranged GET per 4 MiB: a UCF101 clip is one or two of them


class NamedFile:
    """A binary file object whose `str()` is its URL, so decode errors name the video."""

    def __init__(self, url: str, file: Any) -> None:
        self.url, self._file = url, file

    def __str__(self) -> str:
        return self.url

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class UnreadableVideo(Exception):
    """The object could not be opened: the whole row fails with this line."""


@contextlib.contextmanager
def open_video(url: str) -> Iterator[NamedFile]:
    fs, path = filesystem(url)
    try:
        file = fs.open(path, "rb", block_size=BLOCK_BYTES)
    except Exception as exc:  # no such object, access denied, unreachable: this row only
        raise UnreadableVideo(f"{url}: cannot be read ({describe(exc)})") from exc
    try:
        yield NamedFile(url, file)
    finally:
        with contextlib.suppress(Exception):
            file.close()

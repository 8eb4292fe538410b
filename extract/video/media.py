"""Open a media file with PyAV, choose its streams, and turn every way it can fail into
one-line DecodeErrors.

Why a module of its own: video and audio decoding share it, and the rules "a bad file is a
DecodeError that names the file and says what is wrong" and "use the stream a player would
play" must each hold in exactly one place.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

import av
from av.container import InputContainer
from av.stream import Disposition, Stream

from extract.errors import DecodeError

# What PyAV and the file system raise on unreadable input. PyAV's errors subclass FFmpegError;
# some broken containers surface as IndexError/ValueError/UnicodeDecodeError from PyAV internals.
DECODE_FAILURES: tuple[type[BaseException], ...] = (
    av.FFmpegError,
    OSError,
    ValueError,
    IndexError,
    StopIteration,
    RuntimeError,
)


def reason_of(error: BaseException) -> str:
    """A short reason without PyAV's repeated file name and errno prefix."""
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return reason.strip().rstrip(".").lower()


class Deadline:
    """A per-decode time limit (the profile's `limits.timeout_s`), checked cooperatively.

    Why cooperative: an FFmpeg call cannot be interrupted from Python, and killing a worker
    would lose its loaded models. Decoders call `check()` once per packet (and the sampler once
    per frame), so a pathological file (a huge GOP, a header that lies about length, a very
    slow codec) fails as a DecodeError within one packet's decode time after the limit.
    """

    def __init__(self, name: str, seconds: float | None) -> None:
        self.name = name
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise DecodeError(
                f"{self.name}: decoding exceeded the {self.seconds:g} s per-video limit "
                "(limits.timeout_s)"
            )


def choose_stream(container: InputContainer, kind: Literal["video", "audio"]) -> Stream | None:
    """The stream of `kind` a player would play, or None when no stream of it can be decoded.

    Why not simply the first: files carry cover art (an attached picture, e.g. an mp4 `covr`)
    and stills beside the real footage, and FFmpeg's own choice (`streams.best`) ranks the
    "default" flag above frame count, so it picks a 1-frame still that an mp4 lists first.
    Attached pictures and streams without a decoder are never chosen; a stream that holds a
    single frame (or is flagged as a still image) only when nothing else is left; among the
    rest FFmpeg's best, else the first. Probing, RGB, flow and audio all choose here.
    """
    best = container.streams.best(kind)
    candidates = [
        stream for stream in container.streams
        if stream.type == kind and stream.codec_context is not None
        and not stream.disposition & Disposition.attached_pic
    ]

    def rank(stream: Stream) -> tuple[bool, bool, int]:
        still = kind == "video" and (
            stream.frames == 1 or bool(stream.disposition & Disposition.still_image)
        )
        return still, best is None or stream.index != best.index, stream.index

    return min(candidates, key=rank, default=None)


def unusable(streams: Sequence[Stream]) -> str:
    """What the streams `choose_stream` passed over are, for an error line ('' for none)."""
    kinds = {
        "a cover picture (attached_pic)" if stream.disposition & Disposition.attached_pic
        else f"stream {stream.index} with a codec FFmpeg cannot decode"
        for stream in streams
    }
    return ", ".join(sorted(kinds))


def _file_size(file: BinaryIO) -> int:
    """The size of an open binary file, which is then read again from its start."""
    size = file.seek(0, 2)
    file.seek(0)
    return size


@contextmanager
def open_media(path: str | Path | BinaryIO) -> Iterator[InputContainer]:
    """Yield an open input container; close it however the caller leaves.

    `path` may also be an open, seekable binary file (whoever opened it names it in its
    `str()`): a video on object storage is read that way, and each call starts at its start.
    """
    name = str(path)
    if hasattr(path, "read"):
        source: str | BinaryIO = path  # type: ignore[assignment]
        try:
            empty = _file_size(path) == 0  # type: ignore[arg-type]
        except DECODE_FAILURES as error:
            raise DecodeError(f"{name}: cannot be read ({reason_of(error)})") from error
    else:
        file = Path(path)  # type: ignore[arg-type]
        if not file.exists():
            raise DecodeError(f"{name}: no such file")
        if file.is_dir():
            raise DecodeError(f"{name}: is a directory, not a video file")
        source, empty = name, file.stat().st_size == 0
    if empty:
        raise DecodeError(f"{name}: empty file (0 bytes)")
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except DECODE_FAILURES as error:
        raise DecodeError(f"{name}: not a readable media file ({reason_of(error)})") from error
    try:
        yield container
    finally:
        container.close()

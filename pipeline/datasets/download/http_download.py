"""Resumable download of one URL: streamed to `<dest>.part`, resumed with an HTTP Range request
when the server allows, size-checked against Content-Length, then renamed to `<dest>`.

A failed transfer keeps its `.part` file so that a rerun asks only for the rest, because the
official archives are gigabytes and the servers are slow.
"""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from extract.errors import UserError

# Short enough that an offline machine fails fast; applies to connecting and to each read.
CONNECT_TIMEOUT_S = 15.0
CHUNK_BYTES = 1 << 20
USER_AGENT = "attention-clusters-download/0.1 (+python urllib)"


class Unreachable(UserError):
    """A network failure; `fetch_dataset` turns it into advice for the whole dataset."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot reach {host} (offline?): {reason}")
        self.host = host
        self.reason = reason


def download_file(
    url: str, dest: Path, *, progress: bool = True, timeout: float = CONNECT_TIMEOUT_S
) -> Path:
    """Fetch `url` to `dest` through `dest.part`, resuming it with a Range request when the
    server allows; an existing `dest` is kept as is. Raises UserError (one line) on failure."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    host = urlsplit(url).netloc or url
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset and _complete_after_416(exc, offset):
            part.replace(dest)
            return dest
        if exc.code == 416:  # our .part is not a prefix of this file: start over
            part.unlink()
            return download_file(url, dest, progress=progress, timeout=timeout)
        raise UserError(
            f"{host} answered HTTP {exc.code} {exc.reason} for {url}: the file may have moved; "
            f"fetch it by hand (see docs/download.md)"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise UserError(
                f"the TLS certificate of {host} could not be verified ({reason.verify_message}); "
                f"fetch {url} by hand (see docs/download.md)"
            ) from None
        raise Unreachable(host, str(reason)) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise Unreachable(host, str(exc) or type(exc).__name__) from None
    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        written = _stream(response, part, start, total, dest.name, host, progress)
    if total is not None and written != total:
        raise UserError(
            f"download of {url} stopped at {written} of {total} bytes; partial file kept at "
            f"{part}, run again to resume"
        )
    part.replace(dest)
    return dest


def _stream(
    response: http.client.HTTPResponse,
    part: Path,
    start: int,
    total: int | None,
    label: str,
    host: str,
    progress: bool,
) -> int:
    """Append the body to `part` from byte `start`; returns the file's size afterwards."""
    written = start
    try:
        with (
            part.open("r+b" if start else "wb") as sink,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, disable=not progress, leave=False,
            ) as bar,
        ):
            sink.truncate(start)
            sink.seek(start)
            while chunk := response.read(CHUNK_BYTES):
                sink.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
        raise UserError(
            f"connection to {host} lost after {written} bytes ({reason}); partial file kept at "
            f"{part}, run again to resume"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot write {part}: {exc.strerror or exc}") from None
    return written


def _complete_after_416(exc: urllib.error.HTTPError, offset: int) -> bool:
    """True when a 416 answer says the whole file is `offset` bytes, i.e. `.part` is done."""
    match = re.fullmatch(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
    return bool(match) and int(match.group(1)) == offset

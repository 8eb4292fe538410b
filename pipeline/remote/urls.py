"""Telling a URL from a path, the filesystem behind a URL, and one-line errors for it.

A store or dataset location is a local `Path` or an fsspec URL kept as a `str` (`Path` would
fold `s3://` into `s3:/`). Credentials are fsspec's and botocore's own business: the usual
environment variables or a profile (`AWS_PROFILE`), never written anywhere by this project.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from extract.errors import UserError

Location = str | Path
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(location: Location) -> bool:
    """Whether `location` names an fsspec URL (`file://` included) rather than a plain path."""
    return isinstance(location, str) and URL.match(location) is not None


def as_location(value: Location) -> Location:
    """A URL as its text (trailing slashes dropped), anything else as a `Path`."""
    if is_url(value):
        return str(value).rstrip("/")
    return Path(value)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`; an unknown scheme is one line."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise UserError(f"cannot use {url}: {exc}") from None


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


def _remote_error_types() -> tuple[type[BaseException], ...]:
    """What the object-storage clients raise besides OSError, where they are installed."""
    types: list[type[BaseException]] = []
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        types += [BotoCoreError, ClientError]
    with contextlib.suppress(ImportError):
        from aiohttp import ClientError as HttpError

        types.append(HttpError)
    return tuple(types)


def describe(exc: BaseException) -> str:
    """The reason of a storage failure in a few words, with a hint for the usual ones."""
    text = str(exc).strip() or type(exc).__name__
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return ("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                "AWS_PROFILE)")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        return f"the storage service cannot be reached ({text})"
    if isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
        return f"{text}: create the bucket or check the URL"
    if isinstance(exc, PermissionError):
        return f"access denied ({text}): check the credentials and the bucket's permissions"
    return text.splitlines()[0]


@contextlib.contextmanager
def remote_errors(error: type[UserError], action: str, url: Location) -> Iterator[None]:
    """Object-storage failures (no bucket, no credentials, unreachable) as one `error` line."""
    try:
        yield
    except UserError:
        raise
    except (OSError, *_remote_error_types()) as exc:
        raise error(f"cannot {action} {url}: {describe(exc)}") from exc

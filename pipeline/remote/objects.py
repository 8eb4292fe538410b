"""Small operations on objects named by URL: read, conditional put, list, remove.

Object storage has no rename and no `flock`; what it does have, on S3 and its compatibles
(and moto), are conditional writes: create-if-absent (`If-None-Match: *`) and replace-if-
unchanged (`If-Match: <etag>`). The store's lock and the cooperating runs' leases are built
on those two alone. Listings are never taken from fsspec's cache: other runs change them.
Plain paths work too (a store on a shared disk): create links a finished temporary file into
place (so no reader ever sees a half-written record, which would pass for a dead lock), the
etag is the content's md5, replace compares and writes under an exclusive `flock` of the file
and a read takes a shared one (so it never sees a replace half done).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from typing import Any

from pipeline.remote.urls import filesystem


class Conflict(Exception):
    """A conditional write lost: the object exists (create) or changed (replace)."""


LOST_RACE = ("PreconditionFailed", "ConditionalRequestConflict")  # 412, and 409 while another
# conditional write of the same key is in flight (AWS: "try again")


def _lost_race(exc: BaseException) -> bool:
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    return code in LOST_RACE or "pre-condition" in str(exc)


def read(url: str) -> tuple[bytes, str] | None:
    """(content, etag) of the object at `url`, or None if there is none."""
    fs, path = filesystem(url)
    if not _refreshes(fs):
        return _read_file(path)
    try:
        info = fs.info(path, refresh=True)
        if info.get("type") != "file":
            return None
        content = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return content, str(info.get("ETag") or content_etag(content))


def content_etag(content: bytes) -> str:
    """A file's etag on disk (and an object's where the store gives none): its md5."""
    return hashlib.md5(content).hexdigest()


def _read_file(path: str) -> tuple[bytes, str] | None:
    try:
        handle = open(path, "rb")  # noqa: SIM115 (held while locked)
    except (FileNotFoundError, IsADirectoryError):
        return None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        content = handle.read()
    return content, content_etag(content)


def _refreshes(fs: Any) -> bool:
    return type(fs).__name__ == "S3FileSystem"


def create(url: str, content: bytes) -> str:
    """Write the object only if none exists (else `Conflict`); returns its etag."""
    fs, path = filesystem(url)
    if not _refreshes(fs):
        return _create_file(url, path, content)
    try:
        fs.pipe_file(path, content, mode="create")
    except FileExistsError:
        raise Conflict(url) from None
    except OSError as exc:
        if _lost_race(exc):
            raise Conflict(url) from None
        raise
    found = read(url)
    return found[1] if found else ""


STAGED_SUFFIX = ".partial"  # a create in flight (or killed mid-way): not an object


def _create_file(url: str, path: str, content: bytes) -> str:
    """Write a hidden temporary file whole, then hard-link it to `path` (fails if it exists)."""
    parent, _, name = path.rpartition("/")
    os.makedirs(parent or ".", exist_ok=True)
    staged = f"{parent}/.{name}.{uuid.uuid4().hex}{STAGED_SUFFIX}"
    with open(staged, "wb") as handle:
        handle.write(content)
    try:
        os.link(staged, path)
    except FileExistsError:
        raise Conflict(url) from None
    finally:
        os.unlink(staged)
    return content_etag(content)


def replace(url: str, content: bytes, etag: str) -> str:
    """Overwrite the object only if its etag is still `etag` (else `Conflict`): new etag."""
    fs, path = filesystem(url)
    if not _refreshes(fs):
        return _replace_file(url, path, content, etag)
    bucket, key, _ = fs.split_path(path)
    try:
        answer = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=content, IfMatch=etag)
    except OSError as exc:  # FileNotFoundError: removed meanwhile
        if isinstance(exc, FileNotFoundError) or _lost_race(exc):
            raise Conflict(url) from None
        raise
    fs.invalidate_cache(path)
    return str(answer.get("ETag", ""))


def _replace_file(url: str, path: str, content: bytes, etag: str) -> str:
    """Compare and write a local file under an exclusive flock (NFS maps it to a lock)."""
    try:
        handle = open(path, "r+b")  # noqa: SIM115 (held while locked)
    except FileNotFoundError:
        raise Conflict(url) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if content_etag(handle.read()) != etag:
            raise Conflict(url)
        handle.seek(0)
        handle.truncate()
        handle.write(content)
        handle.flush()
    return content_etag(content)


def remove(url: str) -> None:
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
    fs.invalidate_cache(path)


def exists(url: str) -> bool:
    """Whether an object `url` exists (not a prefix)."""
    return read(url) is not None


def files_under(url: str) -> list[str]:
    """Every object under the prefix `url`, relative to it, sorted."""
    fs, path = filesystem(url)
    fs.invalidate_cache()
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return []
    prefix = path.rstrip("/") + "/"
    return sorted(name[len(prefix):] for name in found
                  if name.startswith(prefix) and not name.endswith(STAGED_SUFFIX))


def remove_tree(url: str) -> None:
    fs, path = filesystem(url)
    fs.invalidate_cache()
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.invalidate_cache()

"""Files that a reader must never see half-written (checkpoints, metrics, result JSON), and
JSON that every reader can parse.

Written to a temp file in the same folder, flushed to disk, then renamed over the target: a
crash mid-write leaves the previous file intact, and a reader sees the old or the new one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(stream)` on a temp file beside `path`, fsync it, rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def finite(content: Any) -> Any:
    """`content` with NaN and infinities as None: JSON has no such numbers, and Python's
    `json` would write the invalid tokens NaN / Infinity that other readers refuse."""
    if isinstance(content, float):
        return content if math.isfinite(content) else None
    if isinstance(content, dict):
        return {key: finite(value) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return [finite(value) for value in content]
    return content


def json_text(content: Any) -> str:
    """Indented, valid JSON (non-finite numbers as null), as `--json` prints it."""
    return json.dumps(finite(content), indent=2, allow_nan=False)


def write_json_atomic(path: str | Path, content: Any) -> Path:
    """`content` as indented JSON, atomically (metrics.json is rewritten every epoch)."""
    data = json_text(content).encode()
    return write_atomic(path, lambda stream: stream.write(data))

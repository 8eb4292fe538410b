"""Files that a reader must never see half-written: checkpoints, metrics and result JSON.

Written to a temp file in the same folder, flushed to disk, then renamed over the target: a
crash mid-write leaves the previous file intact, and a reader sees the old or the new one.
"""

from __future__ import annotations

import json
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


def write_json_atomic(path: str | Path, content: Any) -> Path:
    """`content` as indented JSON, atomically (metrics.json is rewritten every epoch)."""
    data = json.dumps(content, indent=2).encode()
    return write_atomic(path, lambda stream: stream.write(data))

"""One modality's extraction result laid out as a store row: padded to L positions.

The store writes rows this way and `classify` feeds the network rows this way, so a video
classified on its own reaches the model exactly as its row in a store would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.store.format import Status

MAX_ERROR_CHARS = 2000


@dataclass
class PaddedRow:
    """features (L, D) float16 zero-padded, mask (L,) false on padding, time (L,) seconds,
    and which stream of the file was decoded (a cover picture or a still is never chosen)."""

    features: np.ndarray
    mask: np.ndarray
    time: np.ndarray
    status: Status
    error: str
    stream: int = -1  # index of the file's stream the features came from, -1 unknown


def parse_status(value: Any) -> Status:
    """A Status from a Status, its code or its name ('done')."""
    if isinstance(value, str):
        try:
            return Status[value.upper()]
        except KeyError:
            raise ValueError(f"unknown status {value!r}") from None
    return Status(int(value))


def pad_row(result: Mapping[str, Any], positions: int, dim: int) -> PaddedRow:
    """{status, features (l<=L, D), mask, time, error, stream} -> a row of L positions."""
    status = parse_status(result.get("status", Status.DONE))
    if status == Status.PENDING:
        raise ValueError("a result cannot set a row back to pending")
    features = np.zeros((positions, dim), dtype=np.float16)
    mask = np.zeros(positions, dtype=bool)
    times = np.zeros(positions, dtype=np.float32)
    stream = -1
    if status == Status.DONE:
        values = np.asarray(result["features"])
        if values.ndim != 2 or values.shape[1] != dim or values.shape[0] > positions:
            raise ValueError(f"features of shape {values.shape} do not fit ({positions}, {dim})")
        used = values.shape[0]
        features[:used] = values
        given_mask = result.get("mask")
        mask[:used] = True if given_mask is None else np.asarray(given_mask, dtype=bool)[:used]
        if result.get("time") is not None:
            times[:used] = np.asarray(result["time"], dtype=np.float32)[:used]
        stream = int(result.get("stream", -1))
    error = str(result.get("error") or "")[:MAX_ERROR_CHARS]
    return PaddedRow(features, mask, times, status, error, stream)

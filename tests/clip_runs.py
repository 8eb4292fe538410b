"""What the kill -9 and cooperation tests share: a small clip set with the store of one clean
run to compare against, the store's arrays, and the rows finished so far (on disk or at a URL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.format import Status
from tests.hostile import clip_dataset
from tests.profiles import CHEAP_PROFILE

MODALITIES = ("rgb", "flow", "audio")
FIELDS = ("features", "mask", "time", "status", "error")


def clips_and_clean_store(base: Path, videos: int) -> tuple[Path, Path, Path]:
    """(dataset root, cheap profile, store of an uninterrupted run) under `base`."""
    root = clip_dataset(base / "clips", videos)
    profile = base / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    clean = base / "clean.zarr"
    run_features(kind="folder", root=root, profile=load_profile(profile), out=clean,
                 dataset="clips", workers=1, device="cpu", progress=False)
    return root, profile, clean


def store_arrays(location: str | Path, fields: tuple[str, ...] = FIELDS
                 ) -> dict[str, np.ndarray]:
    group = zarr.open_group(location, mode="r")
    return {f"{m}/{f}": group[f"{m}/{f}"][:] for m in MODALITIES for f in fields}


def complete_rows(location: str | Path) -> np.ndarray:
    """Rows every modality has finished (done or absent), read while a command writes.

    A shard may be replaced (atomically) between reading its index and its chunks, which zarr
    reports as a RuntimeError, and a store still being created has missing keys: both read as
    nothing finished yet, and the next poll retries.
    """
    if isinstance(location, Path) and not (location / "audio" / "status").exists():
        return np.zeros(0, dtype=np.int64)
    try:
        group = zarr.open_group(location, mode="r")
        done = np.ones(group["rgb/status"].shape[0], dtype=bool)
        for name in MODALITIES:
            done &= np.isin(group[f"{name}/status"][:], (Status.DONE, Status.ABSENT))
    except (KeyError, ValueError, FileNotFoundError, RuntimeError, OSError):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(done)

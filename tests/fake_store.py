"""Small synthetic feature stores in the version-1 format of DESIGN.md, written with plain zarr.

Features carry a learnable signal: a few positions of each video hold its class prototype
(one prototype per positive label for multi-label) plus noise, the rest is noise. So a model
that attends to the right positions learns, and one that cannot learn fails the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline.store.format import FORMAT_NAME, FORMAT_VERSION, Split, Status


def make_store(
    path: Path,
    n: int = 80,
    modalities: dict[str, tuple[int, int]] | None = None,
    classes: int = 4,
    task: str = "single",
    statuses: dict[str, dict[int, int]] | None = None,
    num_splits: int = 1,
    seed: int = 0,
    chunk_rows: int = 16,
    signal: float = 3.0,
    unlabelled: tuple[int, ...] = (),
) -> Path:
    """Write a store at `path`; modalities maps name -> (L, D); statuses maps name -> {row:
    status} overriding the default 'done' (absent rows get an all-false mask and zeros)."""
    modalities = modalities or {"rgb": (6, 12), "audio": (4, 8)}
    statuses = statuses or {}
    rng = np.random.default_rng(seed)
    class_names = [f"class_{c:02d}" for c in range(classes)]
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dataset": "fake",
            "task": task,
            "classes": class_names,
            "modalities": {
                name: {"positions": length, "backbone": {"name": f"fake-{dim}"}}
                for name, (length, dim) in modalities.items()
            },
            "software": {"zarr": zarr.__version__},
            "created": "2026-01-01T00:00:00Z",
        }
    )
    videos = root.create_group("videos")
    ids = np.array([f"class_{i % classes:02d}/video_{i:04d}.mp4" for i in range(n)], dtype=object)
    id_array = videos.create_array("id", shape=(n,), dtype=str, chunks=(chunk_rows,))
    id_array[:] = ids
    if task == "single":
        label = (np.arange(n) % classes).astype(np.int32)
        label[list(unlabelled)] = -1
        videos.create_array("label", shape=(n,), dtype="int32", chunks=(chunk_rows,))[:] = label
        positives = [[int(x)] if x >= 0 else [] for x in label]
    else:
        labels = rng.random((n, classes)) < 0.3
        labels[np.arange(n), np.arange(n) % classes] = True
        videos.create_array(
            "labels", shape=(n, classes), dtype="bool", chunks=(chunk_rows, classes)
        )[:] = labels
        positives = [list(np.flatnonzero(row)) for row in labels]
    split = np.where(rng.random((n, num_splits)) < 0.7, Split.TRAIN, Split.TEST).astype(np.uint8)
    split[0] = Split.TRAIN  # at least one train and one test row whatever the seed
    split[1] = Split.TEST
    videos.create_array(
        "split", shape=(n, num_splits), dtype="uint8", chunks=(chunk_rows, num_splits)
    )[:] = split

    for name, (length, dim) in modalities.items():
        prototypes = rng.normal(size=(classes, dim)).astype(np.float32)
        features = rng.normal(size=(n, length, dim)).astype(np.float32)
        mask = np.ones((n, length), dtype=bool)
        lengths = rng.integers(max(1, length // 2), length + 1, size=n)
        status = np.full(n, Status.DONE, dtype=np.uint8)
        error = np.full(n, "", dtype=object)
        for row in range(n):
            mask[row, lengths[row] :] = False
            real = rng.permutation(lengths[row])
            for slot, label_id in enumerate(positives[row]):
                features[row, real[slot % len(real)]] += signal * prototypes[label_id]
        for row, value in statuses.get(name, {}).items():
            status[row] = value
            if value in (Status.ABSENT, Status.PENDING, Status.FAILED):
                features[row] = 0.0
                mask[row] = False
            if value == Status.FAILED:
                error[row] = "DecodeError: broken file"
        features[~mask] = 0.0
        group = root.create_group(name)
        group.create_array(
            "features", shape=(n, length, dim), dtype="float16", chunks=(chunk_rows, length, dim)
        )[:] = features.astype(np.float16)
        group.create_array("mask", shape=(n, length), dtype="bool", chunks=(chunk_rows, length))[
            :
        ] = mask
        group.create_array("time", shape=(n, length), dtype="float32", chunks=(chunk_rows, length))[
            :
        ] = np.tile(np.arange(length, dtype=np.float32), (n, 1))
        group.create_array("error", shape=(n,), dtype=str, chunks=(chunk_rows,))[:] = error
        group.create_array("status", shape=(n,), dtype="uint8", chunks=(chunk_rows,))[:] = status
    return Path(path)

"""Folder adapter for a user's own videos sorted as `<root>/<class>/<video>`.

There is no official split, so one is derived: within each class, videos are ranked by a hash
of their id and the first `test_fraction` of them (at least one when the class has two or more
videos, never all) are test, the rest train. The hash makes the split identical on every run and
machine, independent of file-system listing order; ranking per class keeps every class in both
train and test, which a plain per-video hash threshold cannot promise for small classes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from extract.errors import UserError
from pipeline.datasets.base import Manifest, ValidationReport, VideoEntry, require_root
from pipeline.datasets.disk import DiskIndex
from pipeline.store.format import Split

DEFAULT_TEST_FRACTION = 0.2


def load_folder(
    root: Path, splits_dir: Path | None = None, test_fraction: float = DEFAULT_TEST_FRACTION
) -> Manifest:
    """Every visible video file directly inside a class folder; folders without videos are
    not classes (so stray `annotations/` or `splits/` folders are ignored). An entry that
    cannot be read is reported and left out, and so is a folder that cannot be listed."""
    root = require_root(root, "folder")
    if splits_dir is not None:
        raise UserError(
            f"the folder dataset has no split files; --splits {splits_dir} cannot be used "
            "(the train/test split is derived from a hash of each video path)"
        )
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"test fraction must be in [0, 1), got {test_fraction}")
    disk = DiskIndex(root)
    report = ValidationReport()
    by_class = {
        name: [
            video_id
            for video_id in (f"{name}/{file_name}" for file_name in disk.video_files(name))
            if not disk.refuse(video_id, report)
        ]
        for name in disk.subdirs("")
    }
    report.unreadable.extend(disk.problems())
    classes = [name for name, ids in by_class.items() if ids]
    videos = []
    for label, class_name in enumerate(classes):
        ids = by_class[class_name]
        test_ids = set(sorted(ids, key=_stable_hash)[: _test_count(len(ids), test_fraction)])
        videos.extend(
            VideoEntry(id=video_id, label=label,
                       splits=(Split.TEST if video_id in test_ids else Split.TRAIN,))
            for video_id in ids
        )
    return Manifest(
        dataset="folder",
        root=root,
        classes=classes,
        task="single",
        split_names=[f"holdout{round(test_fraction * 100)}"],
        videos=videos,
        problems=report,
    )


def _stable_hash(video_id: str) -> str:
    return hashlib.sha256(video_id.encode("utf-8")).hexdigest()


def _test_count(n_videos: int, test_fraction: float) -> int:
    if n_videos < 2 or test_fraction == 0.0:
        return 0
    return min(n_videos - 1, max(1, round(n_videos * test_fraction)))

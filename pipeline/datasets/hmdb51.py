"""HMDB51 adapter: the official `testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`
files ("<video file> <0|1|2>": 1 train, 2 test, 0 unused) over `<root>/<class>/<video file>`."""

from __future__ import annotations

import re
from pathlib import Path

from extract.errors import UserError
from pipeline.datasets.base import (
    Manifest,
    Problem,
    ValidationReport,
    is_utf8,
    printable,
    require_root,
    safe_relative,
)
from pipeline.datasets.disk import DiskIndex
from pipeline.datasets.lists import ListCollector, read_lines

SPLIT_NUMBERS = (1, 2, 3)
DEFAULT_SPLITS_DIR = "testTrainMulti_7030_splits"
_SPLIT_FILE = re.compile(r"^(?P<cls>[^.].*)_test_split(?P<k>\d+)\.txt$")


def load_hmdb51(root: Path, splits_dir: Path | None = None) -> Manifest:
    """HMDB51 with its three official splits; classes are the split files' class names, sorted."""
    root = require_root(root, "HMDB51")
    split_dir = Path(splits_dir).expanduser() if splits_dir else root / DEFAULT_SPLITS_DIR
    report = ValidationReport()
    files = _find_split_files(split_dir, report)
    classes = sorted(files)
    collector = ListCollector(len(SPLIT_NUMBERS), report)
    for label, class_name in enumerate(classes):
        for split, k in enumerate(SPLIT_NUMBERS):
            path = files[class_name][k]
            for line_no, line in read_lines(path, report):
                where = f"{path.name}:{line_no}"
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    report.malformed.append(
                        Problem(where, f"expected '<video file> <0|1|2>', got {line!r}")
                    )
                    continue
                video_id = safe_relative(parts[0], base=(class_name,))
                if video_id is None:
                    report.unsafe.append(
                        Problem(where, f"{parts[0]!r} is absolute or escapes its class folder")
                    )
                    continue
                collector.add(video_id, label, split, int(parts[1]), where)
    return Manifest(
        dataset="hmdb51",
        root=root,
        classes=classes,
        task="single",
        split_names=[f"split{k}" for k in SPLIT_NUMBERS],
        videos=collector.entries(DiskIndex(root)),
        problems=report,
    )


def _find_split_files(split_dir: Path, report: ValidationReport) -> dict[str, dict[int, Path]]:
    """{class: {split number: file}}; every class must have all three split files. A file
    whose name is not UTF-8 cannot name a class (its name would be every video's id): it is
    reported and left out."""
    files: dict[str, dict[int, Path]] = {}
    if split_dir.is_dir():
        for path in sorted(split_dir.iterdir()):
            match = _SPLIT_FILE.match(path.name)
            if match and not is_utf8(path.name):
                report.malformed.append(
                    Problem(printable(path.name), "file name is not valid UTF-8 (rename it)")
                )
            elif match and path.is_file():
                files.setdefault(match["cls"], {})[int(match["k"])] = path
    if not files:
        raise UserError(
            f"HMDB51 split files not found in {split_dir}: expected <class>_test_split1.txt, "
            "_test_split2.txt, _test_split3.txt for each class (give --splits DIR)"
        )
    absent = [
        f"{class_name}_test_split{k}.txt"
        for class_name in sorted(files)
        for k in SPLIT_NUMBERS
        if k not in files[class_name]
    ]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise UserError(
            f"HMDB51 split files not found in {split_dir}: expected {shown} (give --splits DIR)"
        )
    return files

"""UCF101 adapter: the official `ucfTrainTestlist/` files (classInd.txt, trainlist0k.txt,
testlist0k.txt for k = 1, 2, 3) over the extracted `UCF-101/<Class>/<video>` folders."""

from __future__ import annotations

from pathlib import Path

from extract.errors import UserError
from pipeline.datasets.base import Manifest, Problem, ValidationReport, require_root, safe_relative
from pipeline.datasets.disk import DiskIndex
from pipeline.datasets.lists import ListCollector, read_lines
from pipeline.store.format import Split

SPLIT_NUMBERS = (1, 2, 3)
DEFAULT_SPLITS_DIR = "ucfTrainTestlist"


def expected_files() -> list[str]:
    return [
        "classInd.txt",
        *(f"trainlist0{k}.txt" for k in SPLIT_NUMBERS),
        *(f"testlist0{k}.txt" for k in SPLIT_NUMBERS),
    ]


def load_ucf101(root: Path, splits_dir: Path | None = None) -> Manifest:
    """UCF101 with its three official splits; labels come from classInd.txt (1-based)."""
    root = require_root(root, "UCF101")
    split_dir = Path(splits_dir).expanduser() if splits_dir else root / DEFAULT_SPLITS_DIR
    absent = [name for name in expected_files() if not (split_dir / name).is_file()]
    if absent:
        raise UserError(
            f"UCF101 split files not found in {split_dir}: expected {', '.join(absent)} "
            "(give --splits DIR)"
        )
    report = ValidationReport()
    classes, label_of_number = _read_class_index(split_dir / "classInd.txt", report)
    collector = ListCollector(len(SPLIT_NUMBERS), report)
    for split, k in enumerate(SPLIT_NUMBERS):
        for name, code in ((f"trainlist0{k}.txt", Split.TRAIN), (f"testlist0{k}.txt", Split.TEST)):
            _read_list(split_dir / name, split, code, classes, label_of_number, collector)
    return Manifest(
        dataset="ucf101",
        root=root,
        classes=classes,
        task="single",
        split_names=[f"split{k}" for k in SPLIT_NUMBERS],
        videos=collector.entries(DiskIndex(root)),
        problems=report,
    )


def _read_class_index(path: Path, report: ValidationReport) -> tuple[list[str], dict[int, int]]:
    """Class names in classInd order and the map from its 1-based numbers to label ids."""
    by_number: dict[int, str] = {}
    for line_no, line in read_lines(path, report):
        where = f"{path.name}:{line_no}"
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            report.malformed.append(
                Problem(where, f"expected '<number> <ClassName>', got {line!r}")
            )
        elif int(parts[0]) in by_number or parts[1] in by_number.values():
            report.duplicates.append(Problem(where, f"class {line!r} defined twice"))
        else:
            by_number[int(parts[0])] = parts[1]
    if not by_number:
        raise UserError(f"{path} lists no classes")
    gaps = sorted(set(range(1, max(by_number) + 1)) - set(by_number))
    if gaps:
        report.malformed.append(
            Problem(path.name, f"class numbers must run 1..N; missing {gaps[:5]}")
        )
    numbers = sorted(by_number)
    return [by_number[n] for n in numbers], {n: i for i, n in enumerate(numbers)}


def _read_list(
    path: Path,
    split: int,
    code: int,
    classes: list[str],
    label_of_number: dict[int, int],
    collector: ListCollector,
) -> None:
    """One trainlist/testlist file. The class folder decides the label; a number after the path
    (trainlists) must agree with it."""
    report = collector.report
    # Case-insensitive: the official lists spell some classes differently from classInd.txt
    # (HandStandPushups vs HandstandPushups).
    label_of_class = {name.lower(): i for i, name in enumerate(classes)}
    for line_no, line in read_lines(path, report):
        where = f"{path.name}:{line_no}"
        parts = line.split()
        number: int | None = None
        raw = line
        if len(parts) >= 2 and parts[-1].lstrip("-").isdigit():
            number = int(parts[-1])
            raw = line[: -len(parts[-1])].strip()
        elif len(parts) > 1:
            report.malformed.append(
                Problem(where, f"expected '<Class>/<video> [label]', got {line!r}")
            )
            continue
        video_id = safe_relative(raw)
        if video_id is None:
            report.unsafe.append(Problem(where, f"{raw!r} is absolute or escapes the root"))
            continue
        folder, sep, _ = video_id.partition("/")
        if not sep:
            report.malformed.append(Problem(where, f"{raw!r} has no class folder"))
            continue
        if folder.lower() not in label_of_class:
            report.unknown_classes.append(Problem(where, f"class {folder!r} not in classInd.txt"))
            continue
        label = label_of_class[folder.lower()]
        if number is not None and number not in label_of_number:
            report.unknown_classes.append(Problem(where, f"label {number} not in classInd.txt"))
            continue
        if number is not None and label_of_number[number] != label:
            report.conflicts.append(
                Problem(
                    where,
                    f"label {number} ({classes[label_of_number[number]]}) disagrees with "
                    f"its folder {folder}",
                )
            )
            continue
        collector.add(video_id, label, split, code, where)

"""Reading official list files (UCF101, HMDB51): their lines, and the videos they name with
each one's split roles, checked against the files on disk once per video."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from extract.errors import UserError
from pipeline.datasets.base import Problem, ValidationReport, VideoEntry, is_utf8, printable
from pipeline.datasets.disk import DiskIndex
from pipeline.store.format import Split


def read_lines(path: Path, report: ValidationReport) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) for every non-blank line.

    Tolerates a UTF-8 byte-order mark, CRLF endings and trailing blanks, as found in the
    official UCF101 and HMDB51 files. A line that is not valid UTF-8 is reported as malformed
    and left out: it costs that line only, and no id ever holds bytes that cannot be stored.
    """
    try:
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if is_utf8(line):
            lines.append((n, line.strip()))
        else:
            report.malformed.append(
                Problem(f"{path.name}:{n}", f"not valid UTF-8: {printable(line.strip())}")
            )
    return lines


@dataclass
class _Pending:
    label: int
    first_source: str
    # Per split: (role, list position) once a list names the video; None means unused.
    roles: list[tuple[int, str] | None]


class ListCollector:
    """Gathers (video, split, train/test) statements from official list files.

    It reports the same video twice in one split as a duplicate (same role) or a conflict
    (train in one line, test in another), then checks files on disk once per video.
    """

    def __init__(self, n_splits: int, report: ValidationReport) -> None:
        self.n_splits = n_splits
        self.report = report
        self._pending: dict[str, _Pending] = {}

    def add(self, video_id: str, label: int, split: int, code: int, source: str) -> None:
        """Record that `video_id` has role `code` in split number `split` (0-based)."""
        pending = self._pending.setdefault(
            video_id, _Pending(label=label, first_source=source, roles=[None] * self.n_splits)
        )
        if pending.label != label:
            self.report.conflicts.append(
                Problem(source, f"{video_id} has label {label} here, {pending.label} elsewhere")
            )
            return
        previous = pending.roles[split]
        if previous is None:
            pending.roles[split] = (code, source)
        elif previous[0] == code:
            self.report.duplicates.append(
                Problem(source, f"{video_id} already listed at {previous[1]}")
            )
        else:
            self.report.conflicts.append(
                Problem(
                    source,
                    f"{video_id} is {Split(code).label} here but "
                    f"{Split(previous[0]).label} at {previous[1]}",
                )
            )

    def entries(self, disk: DiskIndex) -> list[VideoEntry]:
        """The collected videos sorted by id; symlinks out of the root and entries that cannot
        be read are reported and dropped, missing files are reported and kept (an official
        split stays complete)."""
        entries = []
        for listed_id in sorted(self._pending):
            pending = self._pending[listed_id]
            video_id = disk.on_disk(listed_id)
            if disk.refuse(video_id, self.report):
                continue
            if not disk.is_file(video_id):
                self.report.missing.append(
                    Problem(video_id, f"listed in {pending.first_source} but not found")
                )
            splits = tuple(Split.UNUSED if role is None else role[0] for role in pending.roles)
            entries.append(VideoEntry(id=video_id, label=pending.label, splits=splits))
        return entries

"""Kinetics-400 clips from YouTube: `yt-dlp` (+ `ffmpeg` to cut the segment) per annotation row.

Videos that are gone are common, so they are logged and counted, never fatal; clips already on
disk are skipped, so a rerun resumes or extends a partial download.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from extract.errors import UserError

# At most 360p (features use a short side of 256) keeps ~240k clips on one disk.
YTDLP_FORMAT = "bv*[height<=360]+ba/b[height<=360]/bv*+ba/b"
CLIP_TIMEOUT_S = 600.0
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
FAILURES_LOG = "download_failures.tsv"


@dataclass
class ClipReport:
    """What one Kinetics clip run did; `failures_log` lists every clip that failed."""

    requested: int = 0
    skipped: int = 0
    downloaded: int = 0
    failed: int = 0
    failures_log: Path | None = None
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = (
            f"{self.requested} clips: {self.downloaded} downloaded, {self.skipped} already "
            f"present, {self.failed} failed"
        )
        return f"{line} (see {self.failures_log})" if self.failed else line


def clip_filename(youtube_id: str, start: int, end: int) -> str:
    """The clip name the Kinetics manifest expects: `<id>_<start:06d>_<end:06d>.mp4`."""
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


@dataclass(frozen=True)
class _Clip:
    split: str
    youtube_id: str
    start: int
    end: int

    @property
    def name(self) -> str:
        return clip_filename(self.youtube_id, self.start, self.end)


def clip_tools() -> tuple[str, str]:
    """Paths of yt-dlp and ffmpeg, or a UserError saying how to install what is missing."""
    ytdlp, ffmpeg = shutil.which("yt-dlp"), shutil.which("ffmpeg")
    missing = []
    if not ytdlp:
        missing.append("yt-dlp (pip install yt-dlp)")
    if not ffmpeg:
        missing.append("ffmpeg (apt-get install ffmpeg / conda install -c conda-forge ffmpeg)")
    if not ytdlp or not ffmpeg:
        raise UserError(f"Kinetics clips need yt-dlp and ffmpeg; missing: {', '.join(missing)}")
    return ytdlp, ffmpeg


def fetch_kinetics_clips(
    root: Path,
    *,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    jobs: int = 4,
    progress: bool = True,
) -> ClipReport:
    """Download the clips of `root/annotations/<split>.csv` to `root/<split>/<clip name>`.

    Resumable: clips already on disk are skipped. `limit` keeps the first N rows of each
    split (a partial download that a larger limit later extends). Failed clips are written
    to `root/download_failures.tsv` (rewritten each run) and counted, never raised.
    """
    root = Path(root)
    ytdlp, _ = clip_tools()
    wanted = _read_clips(root / "annotations", splits, limit)
    report = ClipReport(requested=len(wanted), failures_log=root / FAILURES_LOG)
    todo = [clip for clip in wanted if not (root / clip.split / clip.name).is_file()]
    report.skipped = len(wanted) - len(todo)
    with (
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
        tqdm(total=len(todo), unit="clip", desc="kinetics clips", disable=not progress) as bar,
    ):
        futures = {pool.submit(_download_clip, ytdlp, clip, root / clip.split): clip
                   for clip in todo}
        for future in as_completed(futures):
            clip, error = futures[future], future.result()
            if error is None:
                report.downloaded += 1
            else:
                report.failed += 1
                report.failures.append(
                    f"{clip.split}\t{clip.youtube_id}\t{clip.start}\t{clip.end}\t{error}"
                )
            bar.update(1)
    report.failures.sort()
    header = "split\tyoutube_id\ttime_start\ttime_end\terror\n"
    report.failures_log.write_text(header + "".join(f"{ln}\n" for ln in report.failures))
    return report


def _read_clips(
    annotations: Path, splits: Sequence[str] | None, limit: int | None
) -> list[_Clip]:
    """The clips listed in the annotation CSVs of `splits` (default: every CSV present)."""
    if not annotations.is_dir():
        raise UserError(f"no Kinetics annotations in {annotations} (fetch them first)")
    available = sorted(p.stem for p in annotations.glob("*.csv"))
    chosen = list(splits) if splits else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise UserError(
            f"no annotations for split(s) {', '.join(unknown)} in {annotations} "
            f"(have: {', '.join(available) or 'none'})"
        )
    clips: list[_Clip] = []
    for split in chosen:
        rows = _csv_rows(annotations / f"{split}.csv")
        clips.extend(_row_clip(split, row, annotations / f"{split}.csv") for row in rows[:limit])
    return clips


def _csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of one annotation CSV, refusing a file without the columns a clip needs."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        required = {"youtube_id", "time_start", "time_end"}
        if not required <= set(reader.fieldnames or ()):
            raise UserError(f"{path}: not a Kinetics annotation CSV (needs {sorted(required)})")
        return list(reader)


def _row_clip(split: str, row: dict[str, str], path: Path) -> _Clip:
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except (TypeError, ValueError):
        raise UserError(f"{path}: bad time_start/time_end in row {row}") from None
    return _Clip(split, row["youtube_id"], start, end)


def _download_clip(ytdlp: str, clip: _Clip, folder: Path) -> str | None:
    """Fetch one clip's segment; returns None on success or the reason it failed."""
    if not YOUTUBE_ID.match(clip.youtube_id):
        return f"invalid youtube_id {clip.youtube_id!r}"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".clip-", dir=folder) as scratch:
        command = [
            ytdlp, "--quiet", "--no-warnings", "--no-progress", "--no-playlist",
            "--format", YTDLP_FORMAT,
            "--download-sections", f"*{clip.start}-{clip.end}", "--force-keyframes-at-cuts",
            "--merge-output-format", "mp4", "--remux-video", "mp4",
            "--output", str(Path(scratch) / "clip.%(ext)s"),
            f"https://www.youtube.com/watch?v={clip.youtube_id}",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=CLIP_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {CLIP_TIMEOUT_S:.0f} s"
        produced = Path(scratch) / "clip.mp4"
        if result.returncode != 0 or not produced.is_file():
            message = (result.stderr or result.stdout).strip().splitlines()
            reason = message[-1] if message else f"yt-dlp exit code {result.returncode}"
            return " ".join(reason.split())[:300]
        produced.replace(folder / clip.name)
    return None

"""One bad entry costs that entry: symlink loops, dangling links, FIFOs, names too long to
resolve, folders that cannot be listed and names that are not UTF-8, in every adapter.

The entries are real (made in tmp_path; we may run as root, for whom chmod 000 hides nothing,
so the tricks are ones root cannot see through); what only a failing system call can show
(EACCES on one entry, a folder that fails while it is listed) patches `os.scandir` for that
one folder. The CLI cases run `cli.py` as a process on real videos.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.datasets.manifest import Manifest, format_summary, is_valid, load_manifest
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from tests.processes import ROOT
from tests.synth_video import make_clip
from tests.test_manifests import make_hmdb51, make_kinetics, make_ucf101, touch

LOOP_MESSAGE = "cannot be read: Too many levels of symbolic links"


def loop(path: Path) -> None:
    os.symlink(path.name, path)  # a -> a: ELOOP on every stat, for root too


def dangling(path: Path) -> None:
    os.symlink(path.parent / "gone.bin", path)


def too_long(path: Path) -> None:
    os.symlink("x" * 300, path)  # one name longer than NAME_MAX: ENAMETOOLONG


def fifo(path: Path) -> None:
    os.mkfifo(path)


def unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the socket file stays after close, as a dead server leaves it


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "loop": (loop, LOOP_MESSAGE),
    "dangling": (dangling, "symlink to a missing file"),
    "too long": (too_long, "cannot be read: File name too long"),
    "fifo": (fifo, "is a FIFO (named pipe), not a video file"),
    "socket": (unix_socket, "is a socket, not a video file"),
}


def make_folder_set(root: Path) -> list[str]:
    ids = [f"{cls}/clip{i}.mp4" for cls in ("cat", "dog") for i in range(3)]
    for video_id in ids:
        touch(root / video_id)
    return ids


def unreadable(manifest: Manifest) -> dict[str, str]:
    return {problem.where: problem.message for problem in manifest.problems.unreadable}


@pytest.mark.parametrize("case", BROKEN)
def test_folder_broken_entry_costs_only_itself(tmp_path: Path, case: str) -> None:
    ids = make_folder_set(tmp_path)
    make, message = BROKEN[case]
    make(tmp_path / "cat" / "bad.mp4")
    manifest = load_manifest("folder", tmp_path)
    assert manifest.classes == ["cat", "dog"]
    assert sorted(entry.id for entry in manifest.videos) == ids
    assert unreadable(manifest) == {"cat/bad.mp4": message}
    assert not is_valid(manifest)
    summary = format_summary(manifest)
    assert f"unreadable entries: 1\n  cat/bad.mp4: {message}" in summary
    assert summary.endswith("INVALID: fix the problems above")


def test_folder_names_not_utf8_are_reported_escaped(tmp_path: Path) -> None:
    ids = make_folder_set(tmp_path)
    touch(Path(os.fsdecode(bytes(tmp_path / "cat") + b"/clip\xff.mp4")))
    bad_class = Path(os.fsdecode(bytes(tmp_path) + b"/b\xe9b\xe9"))
    touch(bad_class / "v.mp4")
    touch(Path(os.fsdecode(bytes(tmp_path / "dog") + b"/notes\xff.txt")))  # not a video: ignored
    manifest = load_manifest("folder", tmp_path)
    assert sorted(entry.id for entry in manifest.videos) == ids
    assert unreadable(manifest) == {
        "cat/clip\\xff.mp4": "file name is not valid UTF-8 (rename it)",
        "b\\xe9b\\xe9": "folder name is not valid UTF-8 (rename it)",
    }
    assert "cat/clip\\xff.mp4: file name" in format_summary(manifest)


def test_class_folder_that_is_a_loop_is_reported(tmp_path: Path) -> None:
    make_folder_set(tmp_path)
    loop(tmp_path / "bird")
    loop(tmp_path / ".cache")  # hidden entries are never data: not reported
    manifest = load_manifest("folder", tmp_path)
    assert manifest.classes == ["cat", "dog"] and len(manifest.videos) == 6
    assert unreadable(manifest) == {"bird": LOOP_MESSAGE}


class _Entry:
    """A listing entry whose stat fails with `error` (EACCES, EIO): only a patch can make it."""

    def __init__(self, real: os.DirEntry[str], error: int) -> None:
        self.name, self.path, self._error = real.name, real.path, error

    def _fail(self) -> bool:
        raise OSError(self._error, os.strerror(self._error), self.path)

    is_file = is_dir = is_symlink = _fail


class _Listing:
    """`os.scandir` of one folder, with entry `bad` failing and, with `stop_after`, the listing
    itself failing with EIO after that many entries."""

    def __init__(self, real: Iterator[os.DirEntry[str]], bad: str | None,
                 stop_after: int | None) -> None:
        self.real, self.bad, self.stop_after = real, bad, stop_after

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *_: object) -> None:
        self.real.close()  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[object]:
        for n, entry in enumerate(sorted(self.real, key=lambda e: e.name)):
            if n == self.stop_after:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            yield _Entry(entry, errno.EACCES) if entry.name == self.bad else entry


def patch_scandir(monkeypatch: pytest.MonkeyPatch, folder: Path, bad: str | None = None,
                  stop_after: int | None = None) -> None:
    real_scandir = os.scandir

    def scandir(path: os.PathLike[str] | str = ".") -> object:
        listing = real_scandir(path)
        if Path(path) == folder:
            return _Listing(listing, bad, stop_after)
        return listing

    monkeypatch.setattr(os, "scandir", scandir)


def test_entry_whose_stat_is_denied_costs_only_itself(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ids = make_folder_set(tmp_path)
    patch_scandir(monkeypatch, tmp_path / "cat", bad="clip1.mp4")
    manifest = load_manifest("folder", tmp_path)
    assert sorted(entry.id for entry in manifest.videos) == [i for i in ids if i != "cat/clip1.mp4"]
    assert unreadable(manifest) == {"cat/clip1.mp4": "cannot be read: Permission denied"}


def test_folder_failing_while_listed_keeps_what_was_listed(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    make_folder_set(tmp_path)
    patch_scandir(monkeypatch, tmp_path / "dog", stop_after=1)
    manifest = load_manifest("folder", tmp_path)
    assert sorted(e.id for e in manifest.videos if e.id.startswith("dog/")) == ["dog/clip0.mp4"]
    assert len([e for e in manifest.videos if e.id.startswith("cat/")]) == 3
    assert unreadable(manifest) == {"dog": "folder cannot be listed: Input/output error"}


def test_existing_survives_a_stat_that_fails_later(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Between listing and reading, one file starts failing with EACCES: only it is left out."""
    make_folder_set(tmp_path)
    manifest = load_manifest("folder", tmp_path)
    denied = str(tmp_path / "dog" / "clip2.mp4")
    real_stat = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path) == denied:  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied", denied)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    assert [e.id for e in manifest.existing()] == [e.id for e in manifest.videos
                                                  if e.id != "dog/clip2.mp4"]


# --- the list adapters ------------------------------------------------------------------------


def test_ucf101_broken_listed_video_and_broken_class_folder(tmp_path: Path) -> None:
    make_ucf101(tmp_path)
    victim = tmp_path / "Archery" / "v_Archery_g02_c01.avi"
    victim.unlink()
    loop(victim)
    for path in (tmp_path / "Basketball").iterdir():
        path.unlink()
    (tmp_path / "Basketball").rmdir()
    loop(tmp_path / "Basketball")
    manifest = load_manifest("ucf101", tmp_path)
    ids = {entry.id for entry in manifest.videos}
    assert {f"Archery/v_Archery_g0{g}_c01.avi" for g in (1, 3, 4)} <= ids
    assert {f"ApplyEyeMakeup/v_ApplyEyeMakeup_g0{g}_c01.avi" for g in (1, 2, 3, 4)} <= ids
    assert len(ids) == 7 and not manifest.problems.missing
    found = unreadable(manifest)
    assert found.pop("Archery/v_Archery_g02_c01.avi") == LOOP_MESSAGE
    assert found == {f"Basketball/v_Basketball_g0{g}_c01.avi": f"Basketball: {LOOP_MESSAGE}"
                     for g in (1, 2, 3, 4)}


def test_ucf101_folder_that_cannot_be_listed(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    make_ucf101(tmp_path)
    patch_scandir(monkeypatch, tmp_path / "Archery", stop_after=0)
    manifest = load_manifest("ucf101", tmp_path)
    assert len(manifest.videos) == 8 and not manifest.problems.missing
    assert set(unreadable(manifest).values()) == {
        "Archery: folder cannot be listed: Input/output error"}


def test_list_lines_not_utf8_cost_that_line(tmp_path: Path) -> None:
    lists = make_ucf101(tmp_path)
    with (lists / "trainlist01.txt").open("ab") as handle:
        handle.write(b"Archery/v_Archery\xff_g05_c01.avi 2\r\n")
    with (lists / "classInd.txt").open("ab") as handle:
        handle.write(b"4 Bad\xfeClass\r\n")
    manifest = load_manifest("ucf101", tmp_path)
    assert len(manifest.videos) == 12 and manifest.classes == ["ApplyEyeMakeup", "Archery",
                                                               "Basketball"]
    assert {(p.where, p.message) for p in manifest.problems.malformed} == {
        ("trainlist01.txt:10", "not valid UTF-8: Archery/v_Archery\\xff_g05_c01.avi 2"),
        ("classInd.txt:4", "not valid UTF-8: 4 Bad\\xfeClass"),
    }


def test_hmdb51_broken_entry_and_names_not_utf8(tmp_path: Path) -> None:
    lists = make_hmdb51(tmp_path)
    (tmp_path / "cartwheel" / "b.avi").unlink()
    fifo(tmp_path / "cartwheel" / "b.avi")
    with (lists / "cartwheel_test_split1.txt").open("ab") as handle:
        handle.write(b"caf\xe9.avi 1\r\n")
    Path(os.fsdecode(bytes(lists) + b"/d\xe9j\xe0_test_split1.txt")).write_text("x.avi 1\n")
    manifest = load_manifest("hmdb51", tmp_path)
    assert manifest.classes == ["brush_hair", "cartwheel"]
    assert {e.id for e in manifest.videos} == {"cartwheel/a.avi", "cartwheel/c.avi",
                                               "brush_hair/d.avi", "brush_hair/e.avi"}
    assert unreadable(manifest) == {"cartwheel/b.avi": "is a FIFO (named pipe), not a video file"}
    assert {(p.where, p.message) for p in manifest.problems.malformed} == {
        ("cartwheel_test_split1.txt:4", "not valid UTF-8: caf\\xe9.avi 1"),
        ("d\\xe9j\\xe0_test_split1.txt", "file name is not valid UTF-8 (rename it)"),
    }


def test_kinetics_broken_clip_broken_folder_and_rows_not_utf8(tmp_path: Path) -> None:
    expected = make_kinetics(tmp_path, "split")
    clip = tmp_path / expected["aaaaaaaaaaa"]
    clip.unlink()
    loop(clip)
    shutil.rmtree(tmp_path / "val")
    loop(tmp_path / "validation")  # a split folder that cannot be entered
    with (tmp_path / "annotations" / "train.csv").open("ab") as handle:
        handle.write(b"caf\xe9,eeeeeeeeeee,0,10,train,0\n")
    manifest = load_manifest("kinetics400", tmp_path)
    assert {e.id for e in manifest.videos} == {expected["bbbbbbbbbbb"], expected["ddddddddddd"]}
    assert unreadable(manifest) == {expected["aaaaaaaaaaa"]: LOOP_MESSAGE,
                                    "validation": LOOP_MESSAGE}
    assert [p.message for p in manifest.problems.malformed] == [
        "not valid UTF-8: caf\\xe9,eeeeeeeeeee,0,10,train,0"]
    assert not is_valid(manifest)  # missing clips are allowed, unreadable entries are not


# --- through the CLI, as a process ------------------------------------------------------------

RGB_ONLY_PROFILE = """
dataset: {kind: folder}
limits: {max_seconds: 60, timeout_s: 60}
modalities:
  rgb: {positions: 2, resize_short: 64, crop: 56, backbone: {name: random}}
"""


def hostile_folder(root: Path, clips: bool) -> list[str]:
    """Two classes of three videos, plus one entry of every broken kind among them."""
    ids = [f"{cls}/v{i}.mp4" for cls in ("cat", "dog") for i in range(3)]
    for video_id in ids:
        touch(root / video_id)
        if clips:
            make_clip(root / video_id, 8)
    loop(root / "cat" / "loop.mp4")
    fifo(root / "dog" / "pipe.mp4")
    dangling(root / "dog" / "gone.mp4")
    touch(Path(os.fsdecode(bytes(root / "cat") + b"/clip\xff.mp4")))
    touch(Path(os.fsdecode(bytes(root) + b"/b\xe9b\xe9")) / "v.mp4")
    return ids


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_validate_names_every_broken_entry(tmp_path: Path) -> None:
    hostile_folder(tmp_path, clips=False)
    result = cli("data", "validate", "folder", "--root", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "2 classes, 6 videos" in result.stdout
    for line in (f"cat/loop.mp4: {LOOP_MESSAGE}",
                 "dog/pipe.mp4: is a FIFO (named pipe), not a video file",
                 "dog/gone.mp4: symlink to a missing file",
                 "cat/clip\\xff.mp4: file name is not valid UTF-8 (rename it)",
                 "b\\xe9b\\xe9: folder name is not valid UTF-8 (rename it)"):
        assert f"\n  {line}\n" in result.stdout, result.stdout
    assert "unreadable entries: 5" in result.stdout


def test_cli_features_processes_every_good_video(tmp_path: Path) -> None:
    root = tmp_path / "data"
    ids = hostile_folder(root, clips=True)
    profile = tmp_path / "rgb.yaml"
    profile.write_text(RGB_ONLY_PROFILE)
    out = tmp_path / "store.zarr"
    result = cli("features", "entries", "--kind", "folder", "--root", str(root), "--config",
                 str(profile), "--out", str(out), "--workers", "1",
                 "--device", "cpu")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"note: 5 entries under {root} cannot be read and were skipped" in result.stderr
    store = open_store(out)
    assert sorted(store.ids) == ids
    assert (store.status("rgb") == Status.DONE).all()

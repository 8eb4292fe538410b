"""Resume when the list of videos changed (issue 11, item 2): rows are matched by video id,
finished rows of listed, unchanged videos are kept bit for bit, new videos get new rows,
vanished ones are marked (never recomputed, never trained on) and a changed file is redone.

The store-level cases use `create_store` with synthetic rows; the end-to-end ones run the real
`run_features` (and `cli.py features`) over real clips whose files are deleted, added,
touched or limited between runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from pipeline.store.format import Split, Status
from pipeline.store.summary import format_summary, summarize
from pipeline.train.data import load_split
from tests.hostile import clip, clip_dataset
from tests.processes import ROOT
from tests.profiles import CHEAP_PROFILE
from tests.test_store import CLASSES, make_store, modalities, write_all

FIELDS = ("features", "mask", "time", "status", "error")
VIDEO_ARRAYS = ("videos/size", "videos/mtime_ns", "videos/listed")


def ids_of(rows: range | list[int]) -> list[str]:
    """The ids make_store gives rows 0..n-1."""
    return [f"{CLASSES[i % 3]}/v{i:05d}.mp4" for i in rows]


def relisted(path: Path, ids: list[str], files: np.ndarray | None = None, **changes):
    """Reopen the store at `path` for `ids` (labels = their number % 3, splits all train)."""
    numbers = np.array([int(video_id[-9:-4]) for video_id in ids])
    return make_store(path, ids=ids, labels=numbers % 3, files=files,
                      splits=np.full((len(ids), 2), Split.TRAIN), **changes)


def row_values(path: Path, rows: list[int]) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {f"{m}/{f}": group[f"{m}/{f}"][:][rows] for m in modalities() for f in FIELDS}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=key)


def test_vanished_and_added_videos_keep_every_finished_row(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = make_store(path, n=10)
    write_all(store, range(10))
    before = row_values(path, list(range(10)))

    # 3 and 7 vanished, 10 and 11 added, listed in another order than the store's rows
    now = ids_of([11, 9, 8, 6, 5, 4, 2, 1, 0, 10])
    resumed = relisted(path, now)
    assert resumed.relisting is not None
    assert (resumed.relisting.kept, resumed.relisting.added, resumed.relisting.vanished,
            resumed.relisting.changed) == (8, 2, 2, 0)
    assert resumed.n == 12 and resumed.ids[:10] == ids_of(range(10))
    assert resumed.ids[10:] == ids_of([11, 10])  # new rows at the end, in listing order
    assert resumed.todo_rows().tolist() == [10, 11]  # only the new videos need work
    assert resumed.listed.tolist() == [True] * 3 + [False] + [True] * 3 + [False] + [True] * 4
    assert_same(row_values(path, list(range(10))), before)  # finished rows untouched
    splits = resumed.splits
    assert (splits[[3, 7]] == Split.UNUSED).all() and (splits[resumed.listed] == Split.TRAIN).all()
    np.testing.assert_array_equal(resumed.labels, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2, 1])
    for name in modalities():
        assert (resumed.status(name)[10:] == Status.PENDING).all()

    write_all(resumed, [10, 11])
    # 3 is listed again: its row and finished data come back, nothing is recomputed
    again = relisted(path, ids_of([3, *range(3), *range(4, 12)]))
    assert (again.relisting.kept, again.relisting.added, again.relisting.vanished) == (12, 0, 0)
    assert not len(again.todo_rows()) and again.listed.all()
    assert_same(row_values(path, [3]), {k: v[[3]] for k, v in before.items()})


def test_vanished_pending_rows_are_never_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    store = make_store(path, n=6)
    write_all(store, range(3))  # rows 3..5 still pending
    resumed = relisted(path, ids_of([0, 1, 2, 3]))
    assert resumed.relisting.vanished == 2
    assert resumed.todo_rows().tolist() == [3]
    assert resumed.todo_rows(overwrite=True).tolist() == [0, 1, 2, 3]


def test_a_changed_file_is_recomputed_and_an_unknown_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    files = np.array([[1000 + i, 10**18 + i] for i in range(5)], dtype=np.int64)
    files[4] = -1  # a file that could not be stat-ed: unknown, never counts as changed
    store = make_store(path, n=5, files=files)
    write_all(store, range(5))
    group = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(group["videos/size"][:], files[:, 0])
    np.testing.assert_array_equal(group["videos/mtime_ns"][:], files[:, 1])

    now = files.copy()
    now[1, 1] += 1  # touched: same size, new mtime
    now[2, 0] += 7  # rewritten: new size
    now[4] = [5, 6]
    kept = row_values(path, [0, 3, 4])
    resumed = relisted(path, ids_of(range(5)), files=now)
    assert (resumed.relisting.kept, resumed.relisting.changed) == (3, 2)
    assert resumed.todo_rows().tolist() == [1, 2]
    for name in modalities():
        assert resumed.status(name)[[1, 2]].tolist() == [Status.PENDING] * 2
    assert_same(row_values(path, [0, 3, 4]), kept)
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["videos/size"][:], now[:, 0])
    # the same files again: nothing changed any more
    assert relisted(path, ids_of(range(5)), files=now).relisting.changed == 0


def test_training_uses_no_vanished_row(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    n = 12
    store = make_store(path, n=n, splits=np.full((n, 2), Split.TRAIN))
    write_all(store, range(n))
    assert load_split(path, 1, parts=(Split.TRAIN,)).counts["train"].used == n
    relisted(path, ids_of([0, 1, 2, 4, 5, 6, 8, 9]))  # rows 3, 7, 10, 11 vanished
    data = load_split(path, 1, parts=(Split.TRAIN,))
    assert data.counts["train"].used == 8
    assert sorted(data.train.rows.tolist()) == [0, 1, 2, 4, 5, 6, 8, 9]


@pytest.mark.parametrize("stop_at", ["videos/id resize", "videos/id write", "labels"])
def test_a_crash_while_adding_videos_leaves_a_store_that_opens_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_at: str) -> None:
    path = tmp_path / "s.zarr"
    store = make_store(path, n=6)
    write_all(store, range(6))
    before = row_values(path, list(range(6)))
    real_resize, real_set = zarr.Array.resize, zarr.Array.__setitem__

    def resize(self, shape, *args, **kwargs):
        if stop_at == "videos/id resize" and self.path == "videos/id":
            raise KeyboardInterrupt
        return real_resize(self, shape, *args, **kwargs)

    def setitem(self, selection, value):
        if stop_at == "videos/id write" and self.path == "videos/id":
            raise KeyboardInterrupt
        if stop_at == "labels" and self.path == "videos/label":
            raise KeyboardInterrupt
        return real_set(self, selection, value)

    monkeypatch.setattr(zarr.Array, "resize", resize)
    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)
    with pytest.raises(KeyboardInterrupt):
        relisted(path, ids_of(range(9)))
    monkeypatch.undo()

    reopened = open_store(path)  # stopped half way: the old rows, every reader consistent
    grown = stop_at == "labels"
    assert reopened.n == (9 if grown else 6)
    assert len(reopened.labels) == len(reopened.splits) == reopened.n
    assert len(reopened.read("rgb")[0]) == len(reopened.errors("rgb")) == reopened.n
    assert summarize(reopened)["videos"] == reopened.n
    resumed = relisted(path, ids_of(range(9)))
    assert resumed.n == 9 and resumed.todo_rows().tolist() == [6, 7, 8]
    assert resumed.relisting.added == (0 if grown else 3)
    assert_same(row_values(path, list(range(6))), before)
    write_all(resumed, [6, 7, 8])
    assert not len(open_store(path).todo_rows())


def test_a_version_1_store_is_read_and_resumed(tmp_path: Path) -> None:
    path = tmp_path / "v1.zarr"
    store = make_store(path, n=5)
    write_all(store, range(5))
    group = zarr.open_group(path, mode="r+")
    for name in VIDEO_ARRAYS:  # exactly the layout format 1 wrote
        del group[name]
    group.attrs["format_version"] = 1
    before = row_values(path, list(range(5)))

    old = open_store(path)
    assert old.listed.all() and old.n == 5 and not len(old.todo_rows())
    assert summarize(old)["format_version"] == 1
    files = np.array([[10, 20]] * 5)
    resumed = relisted(path, ids_of([0, 1, 2, 4, 5]), files=files)
    assert (resumed.relisting.kept, resumed.relisting.added, resumed.relisting.vanished,
            resumed.relisting.changed) == (4, 1, 1, 0)  # unknown sizes count as unchanged
    group = zarr.open_group(path, mode="r")
    assert group.attrs["format_version"] == 2
    assert group["videos/size"][:].tolist() == [10, 10, 10, -1, 10, 10]
    assert group["videos/listed"][:].tolist() == [True, True, True, False, True, True]
    assert_same(row_values(path, list(range(5))), before)


def test_other_datasets_and_extractions_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make_store(path, n=4)
    with pytest.raises(Exception, match="different extraction config for 'flow'"):
        relisted(path, ids_of(range(6)), modalities=modalities("opencv"))
    with pytest.raises(Exception, match="holds dataset 'toy'"):
        relisted(path, ids_of(range(6)), dataset="other")
    assert open_store(path).n == 4  # nothing was added by the refused runs


def test_store_info_reports_vanished_videos(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    write_all(make_store(path, n=8), range(8))
    relisted(path, ids_of(range(5)))
    summary = summarize(open_store(path))
    assert summary["videos"] == 5 and summary["vanished"] == 3
    assert summary["modalities"]["rgb"]["counts"]["done"] == 5
    assert "3 vanished videos kept" in format_summary(summary)


# End to end: the real `features` over real clips whose files change between runs.

@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, inprocess_scheduler: str
          ) -> tuple[Path, Path, Path]:
    """(dataset root, profile, store of a first full run) of 6 clips in 2 classes."""
    base = tmp_path_factory.mktemp("relist")
    root = clip_dataset(base / "clips", 6)
    profile = base / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    store = base / "first.zarr"
    rerun(root, profile, store, inprocess_scheduler)
    return root, profile, store


def copy_run(clips: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the clips and of the first run's store, to change without touching them."""
    root, _, store = clips
    shutil.copytree(root, tmp_path / "clips", copy_function=shutil.copy2)  # keeps mtimes
    shutil.copytree(store, tmp_path / "s.zarr")
    return tmp_path / "clips", tmp_path / "s.zarr"


def rerun(root: Path, profile: Path, out: Path, scheduler: str, limit: int | None = None):
    return run_features(kind="folder", root=root, profile=load_profile(profile), out=out,
                        dataset="clips", scheduler=scheduler, device="cpu", limit=limit,
                        progress=False)


def by_id(path: Path) -> dict[str, dict[str, np.ndarray]]:
    store = open_store(path)
    values = row_values(path, list(range(store.n)))
    return {video_id: {k: v[row] for k, v in values.items()}
            for row, video_id in enumerate(store.ids)}


def test_features_after_a_clip_vanished_and_one_was_added(clips, tmp_path: Path,
                                                          inprocess_scheduler: str) -> None:
    _, profile, _ = clips
    root, out = copy_run(clips, tmp_path)
    before = by_id(out)
    (root / "class1" / "v00003.mp4").unlink()
    clip(root / "class0" / "v00100.mp4", seconds=1.1, tone_hz=300.0)

    result = rerun(root, profile, out, inprocess_scheduler)
    assert result.run.total == 1  # only the new clip was computed
    assert (result.relisting.kept, result.relisting.added, result.relisting.vanished,
            result.relisting.changed) == (5, 1, 1, 0)
    store = open_store(out)
    after = by_id(out)
    for video_id, values in before.items():  # kept rows, and the vanished one, bit for bit
        assert_same(after[video_id], values)
    new = store.ids.index("class0/v00100.mp4")
    assert new == 6 and all(store.status(m)[new] == Status.DONE for m in ("rgb", "flow"))
    gone = store.ids.index("class1/v00003.mp4")
    assert not store.listed[gone] and (store.splits[gone] == Split.UNUSED).all()
    trained = load_split(out, 1)
    used = set(trained.train.rows.tolist()) | set(trained.test.rows.tolist())
    assert gone not in used and new in used and len(used) == 6


def test_features_recomputes_a_touched_clip_only(clips, tmp_path: Path,
                                                 inprocess_scheduler: str) -> None:
    _, profile, _ = clips
    root, out = copy_run(clips, tmp_path)
    before = by_id(out)
    touched = root / "class0" / "v00002.mp4"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    result = rerun(root, profile, out, inprocess_scheduler)
    assert result.run.total == 1 and result.relisting.changed == 1
    assert result.relisting.kept == 5
    after = by_id(out)
    for video_id, values in before.items():
        if video_id != "class0/v00002.mp4":
            assert_same(after[video_id], values)
    group = zarr.open_group(out, mode="r")
    row = open_store(out).ids.index("class0/v00002.mp4")
    assert group["videos/mtime_ns"][row] == stat.st_mtime_ns + 10**9
    assert group["videos/size"][row] == stat.st_size
    assert rerun(root, profile, out, inprocess_scheduler).run.total == 0  # now up to date


def test_features_with_another_limit_keeps_finished_rows(clips, tmp_path: Path,
                                                       inprocess_scheduler: str) -> None:
    root, profile, _ = clips
    out = tmp_path / "l.zarr"
    assert rerun(root, profile, out, inprocess_scheduler, limit=3).run.total == 3
    first = by_id(out)
    wider = rerun(root, profile, out, inprocess_scheduler, limit=6)
    assert wider.run.total == 3 and (wider.relisting.kept, wider.relisting.added) == (3, 3)
    narrower = rerun(root, profile, out, inprocess_scheduler, limit=2)
    assert narrower.run.total == 0
    assert (narrower.relisting.kept, narrower.relisting.vanished) == (2, 4)
    after = by_id(out)
    for video_id, values in first.items():
        assert_same(after[video_id], values)
    store = open_store(out)
    assert store.listed.sum() == 2 and (store.splits[~store.listed] == Split.UNUSED).all()


def test_cli_features_says_what_the_resume_kept(clips, tmp_path: Path) -> None:
    root, profile, store = clips
    out = tmp_path / "s.zarr"
    shutil.copytree(store, out)
    command = [sys.executable, str(ROOT / "cli.py"), "features", "clips", "--root", str(root),
               "--config", str(profile), "--out", str(out), "--workers", "1", "--device",
               "cpu", "--limit", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("resumed: 2 finished videos kept, 0 added, 4 vanished (kept in the store, not "
            "used), 0 changed on disk (recomputed)") in done.stdout
    assert "finished: 0/0 items" in done.stdout
    assert "6 videos" not in done.stdout and "2 videos" in done.stdout
    assert "4 vanished videos kept" in done.stdout

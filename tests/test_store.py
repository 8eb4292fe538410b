"""The feature store (format v2): layout as plain Zarr sees it, resume, validation, faults.

Resuming with a changed list of videos: tests/test_store_resume.py; damaged or foreign
metadata: tests/test_store_metadata.py."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from extract.errors import UserError
from pipeline.store.create import create_store
from pipeline.store.feature_store import open_store
from pipeline.store.format import FORMAT_NAME, ModalitySpec, Status, StoreError
from pipeline.store.summary import format_summary, summarize

CLASSES = ["jump", "run", "swim"]
SPLITS = ["split1", "split2"]


def modalities(flow_backend: str = "torch", rgb_positions: int = 4) -> dict[str, ModalitySpec]:
    return {
        "rgb": ModalitySpec(rgb_positions, 8, {"backbone": {"name": "efficientnet_lite0"},
                                               "positions": rgb_positions}),
        "flow": ModalitySpec(3, 8, {"backend": flow_backend, "bound": 20.0}),
        "audio": ModalitySpec(5, 6, {"backbone": {"name": "logmel"}}),
    }


def make_store(path: Path, n: int = 40, **changes):
    ids = [f"{CLASSES[i % 3]}/v{i:05d}.mp4" for i in range(n)]
    arguments = dict(dataset="toy", task="single", classes=CLASSES, ids=ids,
                     labels=np.arange(n) % 3, splits=(np.arange(n * 2) % 3).reshape(n, 2),
                     split_names=SPLITS, modalities=modalities())
    arguments.update(changes)
    return create_store(path, **arguments)


def fake_result(row: int, store) -> dict:
    """Deterministic per-row output: depends on the row only, like real extraction."""
    result = {}
    for name, spec in store.modalities.items():
        if name == "audio" and row % 4 == 3:
            result[name] = {"status": Status.ABSENT}
            continue
        used = spec.positions - (row % 2)
        rng = np.random.default_rng([row, spec.dim, spec.positions])
        result[name] = {"features": rng.standard_normal((used, spec.dim)),
                        "time": np.linspace(0.5, used, used) + row}
    return result


def write_all(store, rows) -> None:
    rows = list(rows)
    store.write_rows(rows, [fake_result(r, store) for r in rows])


def array_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_plain_zarr_reads_the_layout(tmp_path):
    path = tmp_path / "toy.zarr"
    store = make_store(path, n=40)
    write_all(store, range(0, 40, 2))
    store.write_rows([1], [{"rgb": {"status": Status.FAILED, "error": "DecodeError: broken"}}])

    group = zarr.open_group(path, mode="r")
    attrs = group.attrs.asdict()
    assert attrs["format"] == FORMAT_NAME and attrs["format_version"] == 2
    assert attrs["dataset"] == "toy" and attrs["task"] == "single"
    assert attrs["classes"] == CLASSES
    assert attrs["modalities"]["flow"] == {"backend": "torch", "bound": 20.0}
    assert "zarr" in attrs["software"] and attrs["created"]

    assert group["videos/id"].shape == (40,)
    assert str(group["videos/id"][7]) == "run/v00007.mp4"
    assert group["videos/label"].dtype == np.int32
    np.testing.assert_array_equal(group["videos/label"][:], np.arange(40) % 3)
    assert group["videos/split"].dtype == np.uint8 and group["videos/split"].shape == (40, 2)
    assert group["videos/split"].attrs["split_names"] == SPLITS
    for name, dtype in (("size", np.int64), ("mtime_ns", np.int64), ("listed", bool)):
        assert group[f"videos/{name}"].dtype == dtype and group[f"videos/{name}"].shape == (40,)
    assert (group["videos/size"][:] == -1).all() and group["videos/listed"][:].all()

    rgb = group["rgb"]
    assert rgb["features"].dtype == np.float16 and rgb["features"].shape == (40, 4, 8)
    assert rgb["mask"].dtype == bool and rgb["mask"].shape == (40, 4)
    assert rgb["time"].dtype == np.float32 and rgb["time"].shape == (40, 4)
    assert rgb["status"].dtype == np.uint8 and rgb["status"].shape == (40,)
    assert rgb["features"].shards[0] == store.rows_per_shard
    assert rgb["features"].metadata.dimension_names == ("video", "position", "channel")

    expected = fake_result(2, store)["rgb"]
    np.testing.assert_array_equal(rgb["features"][2],
                                  expected["features"].astype(np.float16))
    np.testing.assert_array_equal(rgb["mask"][3], [False] * 4)  # pending: all padding
    status = rgb["status"][:]
    assert status[2] == Status.DONE and status[1] == Status.FAILED and status[3] == Status.PENDING
    assert str(rgb["error"][1]) == "DecodeError: broken" and str(rgb["error"][2]) == ""
    # A row with one position fewer is padded: mask false, features zero there.
    odd = fake_result(5, store)["flow"]["features"].shape[0]
    write_all(store, [5])
    assert group["flow/mask"][5].tolist() == [True] * odd + [False] * (3 - odd)
    assert not group["flow/features"][5, odd:].any()
    assert group["audio/status"][3] == Status.PENDING and store.status("audio")[4] == Status.DONE


def test_read_returns_what_was_written(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=12)
    rows = np.array([9, 0, 4, 3])  # numpy rows, any order
    store.write_rows(rows, [fake_result(int(r), store) for r in rows])
    features, mask, times, status = store.read("audio", [3, 4])
    assert features.shape == (2, 5, 6) and features.dtype == np.float16
    assert status.tolist() == [Status.ABSENT, Status.DONE]
    assert not mask[0].any() and mask[1].all()
    np.testing.assert_allclose(times[1], np.linspace(0.5, 5, 5) + 4, rtol=1e-6)
    reopened = open_store(tmp_path / "s.zarr")
    assert reopened.n == 12 and reopened.classes == CLASSES
    assert reopened.split_names == SPLITS and reopened.ids == store.ids
    np.testing.assert_array_equal(reopened.read("rgb")[0], store.read("rgb")[0])


def test_multilabel_store(tmp_path):
    labels = np.eye(3, dtype=bool)[[0, 1, 2, 0]] | np.eye(3, dtype=bool)[[1, 1, 0, 2]]
    store = make_store(tmp_path / "m.zarr", n=4, task="multi", labels=labels)
    group = zarr.open_group(tmp_path / "m.zarr", mode="r")
    assert "label" not in group["videos"]
    assert group["videos/labels"].dtype == bool
    np.testing.assert_array_equal(group["videos/labels"][:], labels)
    np.testing.assert_array_equal(store.labels, labels)


def test_status_is_written_last(tmp_path, monkeypatch):
    import pipeline.store.feature_store as store_module

    store = make_store(tmp_path / "s.zarr", n=10)
    real_write = store_module.write_sorted_rows

    def crash_at_status(array, rows, values, shard_rows):
        if array.path.endswith("status"):
            raise RuntimeError("power cut")
        real_write(array, rows, values, shard_rows)

    monkeypatch.setattr(store_module, "write_sorted_rows", crash_at_status)
    with pytest.raises(RuntimeError):
        write_all(store, [2, 3])
    monkeypatch.undo()

    reopened = open_store(tmp_path / "s.zarr")
    assert reopened.read("rgb", [2])[0].any()  # the data reached the disk...
    assert reopened.status("rgb")[2] == Status.PENDING  # ...but the row is still pending
    assert {2, 3} <= set(reopened.todo_rows().tolist())


def test_resume_keeps_done_rows_and_refreshes_labels(tmp_path):
    path = tmp_path / "s.zarr"
    store = make_store(path, n=20)
    write_all(store, range(8))
    store.write_rows([8], [{"status": Status.FAILED, "error": "KilledWorker: boom"}])
    before = store.read("rgb", range(8))[0]

    resumed = make_store(path, n=20, labels=np.full(20, 2))
    assert resumed.todo_rows().tolist() == list(range(8, 20))  # failed rows are retried
    assert resumed.todo_modalities(3) == [] and resumed.todo_modalities(8) == list(
        store.modalities)
    np.testing.assert_array_equal(resumed.read("rgb", range(8))[0], before)
    np.testing.assert_array_equal(open_store(path).labels, np.full(20, 2))


def test_task_failure_only_touches_unfinished_modalities(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=4)
    store.write_rows([1], [{"rgb": fake_result(1, store)["rgb"]}])
    store.write_rows([1], [{"status": Status.FAILED, "error": "ValueError: bad audio"}])
    assert store.status("rgb")[1] == Status.DONE
    assert store.status("flow")[1] == store.status("audio")[1] == Status.FAILED
    assert str(store.errors("audio")[1]) == "ValueError: bad audio"


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    straight = make_store(tmp_path / "a.zarr", n=300)
    with straight.writer(expected_rows=straight.todo_rows()) as writer:
        for row in range(300):
            writer.add(row, fake_result(row, straight))

    broken = make_store(tmp_path / "b.zarr", n=300)
    writer = broken.writer(expected_rows=broken.todo_rows(), max_buffered_rows=7)
    for row in range(299, 120, -3):  # out of order, flushed in blocks of 7
        writer.add(row, fake_result(row, broken))
    lost = writer.buffered  # the process dies: buffered rows are never written
    assert lost > 0
    resumed = make_store(tmp_path / "b.zarr", n=300)
    todo = resumed.todo_rows()
    assert len(todo) == 300 - len(range(299, 120, -3)) + lost
    with resumed.writer(expected_rows=todo) as writer:
        for row in todo:
            writer.add(row, fake_result(int(row), resumed))

    a = zarr.open_group(tmp_path / "a.zarr", mode="r")
    b = zarr.open_group(tmp_path / "b.zarr", mode="r")
    for name in ("rgb", "flow", "audio"):
        for field in ("features", "mask", "time", "status", "error"):
            np.testing.assert_array_equal(a[f"{name}/{field}"][:], b[f"{name}/{field}"][:])
    assert not len(resumed.todo_rows())


def test_overwrite_starts_again(tmp_path):
    path = tmp_path / "s.zarr"
    store = make_store(path, n=10)
    write_all(store, range(10))
    assert not len(store.todo_rows())
    assert store.todo_rows(overwrite=True).tolist() == list(range(10))
    fresh = make_store(path, n=10, modalities=modalities("opencv"), overwrite=True)
    assert fresh.todo_rows().tolist() == list(range(10))
    assert fresh.modalities["flow"].config["backend"] == "opencv"


def test_overwrite_refuses_to_delete_other_folders(tmp_path):
    precious = tmp_path / "videos"
    precious.mkdir()
    (precious / "keep.mp4").write_bytes(b"data")
    with pytest.raises(StoreError, match="not an attention-clusters feature store"):
        make_store(precious, n=3, overwrite=True)
    assert (precious / "keep.mp4").exists()


def test_different_config_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "x.zarr"
    make_store(path, n=6)
    with pytest.raises(UserError, match=r"different extraction config for 'flow' "
                                        r"\(backend torch vs opencv\): use --overwrite"):
        make_store(path, n=6, modalities=modalities("opencv"))
    with pytest.raises(UserError, match=r"stores 'rgb' as 4x8, not 6x8"):
        make_store(path, n=6, modalities=modalities(rgb_positions=6))
    with pytest.raises(UserError, match="dataset 'toy'"):
        make_store(path, n=6, dataset="ucf101")
    make_store(tmp_path / "multi.zarr", n=6, task="multi", labels=np.ones((6, 3)))
    with pytest.raises(UserError, match="has 3 classes, not 4"):
        make_store(tmp_path / "multi.zarr", n=6, task="multi", labels=np.ones((6, 4)),
                   classes=[*CLASSES, "dive"])
    fewer = modalities()
    del fewer["audio"]
    with pytest.raises(UserError, match="holds modalities"):
        make_store(path, n=6, modalities=fewer)


def test_open_rejects_what_is_not_a_store(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_store(tmp_path / "missing.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="is not an attention-clusters feature store"):
        open_store(tmp_path / "folder")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(UserError, match="is not an attention-clusters feature store"):
        open_store(tmp_path / "file.zarr")
    other = zarr.open_group(tmp_path / "other.zarr", mode="w")
    other.attrs["format"] = "something-else"
    with pytest.raises(UserError, match="is not an attention-clusters feature store"):
        open_store(tmp_path / "other.zarr")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, n=3)
    zarr.open_group(path, mode="r+").attrs["format_version"] = 3
    with pytest.raises(UserError, match="format version 3 is newer than this software supports"):
        open_store(path)


def test_file_count_stays_small_at_scale(tmp_path):
    path = tmp_path / "big.zarr"
    n = 5000
    store = make_store(path, n=n)
    assert store.rows_per_shard == 1024
    with store.writer(expected_rows=np.arange(n)) as writer:
        for row in range(n):
            writer.add(row, {"rgb": {"features": np.full((4, 8), row % 11)},
                             "flow": {"status": Status.FAILED, "error": "x"},
                             "audio": {"status": Status.ABSENT}})
    shards = -(-n // store.rows_per_shard)  # 5
    arrays = 6 + 5 * 3  # videos/{id,label,split,size,mtime_ns,listed} + 5 per modality
    groups = 1 + 1 + 3
    files = array_files(path)
    assert len(files) <= arrays * shards + arrays + groups  # data shards + zarr.json files
    assert len(array_files(path / "rgb" / "features")) == shards + 1  # shards + zarr.json
    assert store.status("rgb").min() == Status.DONE
    assert int(zarr.open_group(path, mode="r")["rgb/features"][4321, 0, 0]) == 4321 % 11


def test_summary_counts_and_text(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=8)
    write_all(store, range(4))
    store.write_rows([5], [{"status": Status.FAILED, "error": "DecodeError: v00005.mp4 truncated"}])
    summary = summarize(open_store(tmp_path / "s.zarr"))
    json.dumps(summary)  # `store info --json` must be able to print it
    assert summary["videos"] == 8
    assert summary["modalities"]["audio"]["counts"] == {
        "pending": 3, "done": 3, "failed": 1, "absent": 1}
    assert summary["modalities"]["rgb"]["failures"] == [
        {"row": 5, "id": "swim/v00005.mp4", "error": "DecodeError: v00005.mp4 truncated"}]
    text = format_summary(summary)
    assert "rgb: 4 x 8: 3 pending, 4 done, 1 failed, 0 absent" in text
    assert "extraction: positions=4, backbone=efficientnet_lite0" in text
    assert "failed swim/v00005.mp4: DecodeError: v00005.mp4 truncated" in text


def test_unwritable_location_is_a_user_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(UserError, match="cannot create feature store at .*not-a-dir"):
        make_store(blocker / "toy.zarr", n=3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_a_user_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot create feature store.*writable --out"):
            make_store(locked / "toy.zarr", n=3)
    finally:
        locked.chmod(0o755)


def test_disk_full_during_a_flush_keeps_flushed_rows(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    store = make_store(path, n=30)
    writer = store.writer(max_buffered_rows=10)
    for row in range(10):
        writer.add(row, fake_result(row, store))
    assert writer.flushed_rows == 10

    real_set = zarr.storage.LocalStore.set
    calls = {"n": 0}

    async def disk_fills_up(self, key, value):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", disk_fills_up)
    full = "No space left on device: free some space and rerun"
    with pytest.raises(UserError, match=full), writer:
        for row in range(10, 20):
            writer.add(row, fake_result(row, store))
    monkeypatch.undo()

    reopened = open_store(path)
    for name in reopened.modalities:
        status = reopened.status(name)
        assert np.isin(status[:10], (Status.DONE, Status.ABSENT)).all()
        assert (status[10:] == Status.PENDING).all()
    np.testing.assert_array_equal(reopened.read("rgb", range(10))[0],
                                  store.read("rgb", range(10))[0])
    assert reopened.todo_rows().tolist() == list(range(10, 30))

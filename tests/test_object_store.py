"""Stores and videos on object storage: a real S3 API (moto's server on 127.0.0.1), real runs.

The store written at s3://… must hold exactly what the same run writes on disk, read back with
plain zarr given the URL, resume without recomputing, and serve `store info`, `train` and
`evaluate`; videos listed and decoded from a bucket must give the rows they give on disk.
User mistakes (no bucket, no credentials, nothing listening) are one line each.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import s3fs
import zarr
from click.testing import CliRunner

import cli
from cli import main
from pipeline.datasets.manifest import load_manifest
from pipeline.features.cooperate import BlockWriter
from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.remote import creation, objects
from pipeline.remote.leases import Leases, leases_url
from pipeline.store.create import create_store
from pipeline.store.format import ModalitySpec, StoreError
from pipeline.store.lock import Holder, check_still_held, holder_alive, store_lock, writer_of
from tests.hostile import clip_dataset
from tests.profiles import CHEAP_PROFILE

MODALITIES = ("rgb", "flow", "audio")
FIELDS = ("features", "mask", "time", "status", "error")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(a folder dataset of 4 clips, the cheap profile)."""
    base = tmp_path_factory.mktemp("s3-clips")
    (base / "cheap.yaml").write_text(CHEAP_PROFILE)
    return clip_dataset(base / "clips", 4), load_profile(base / "cheap.yaml")


@pytest.fixture
def scheduler(inprocess_scheduler: str) -> str:
    return inprocess_scheduler


def features(root: Path | str, out: Path | str, profile: dict, scheduler: str):
    return run_features(kind="folder", root=root, profile=profile, out=out, dataset="clips",
                        scheduler=scheduler, progress=False)


def arrays(location: Path | str) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(location) if isinstance(location, str) else location, mode="r")
    return {f"{m}/{f}": group[f"{m}/{f}"][:] for m in MODALITIES for f in FIELDS}


def test_store_on_s3_is_the_store_on_disk(clips: tuple[Path, dict], scheduler: str,
                                          s3_bucket: str, tmp_path: Path) -> None:
    root, profile = clips
    url = f"{s3_bucket}/features/clips.zarr"
    on_s3 = features(root, url, profile, scheduler)
    assert on_s3.written() == (4, 4)
    features(root, tmp_path / "clips.zarr", profile, scheduler)
    expected, found = arrays(tmp_path / "clips.zarr"), arrays(url)  # plain zarr, the URL
    for key, values in expected.items():
        np.testing.assert_array_equal(found[key], values, err_msg=key)
    names = objects.files_under(s3_bucket)
    assert "features/clips.zarr/zarr.json" in names
    assert not [n for n in names if n.endswith((".lock", creation.MARKER))], names
    assert not any("testing" in objects.read(f"{s3_bucket}/{n}")[0].decode("latin-1")
                   for n in names if n.endswith("zarr.json")), "credentials in the store"
    again = features(root, url, profile, scheduler)  # resume: nothing to recompute
    assert again.run.completed == 0 and again.relisting is not None
    assert again.relisting.kept == 4


def test_videos_listed_and_read_from_a_bucket(clips: tuple[Path, dict], scheduler: str,
                                              s3_bucket: str, tmp_path: Path) -> None:
    root, profile = clips
    fs = s3fs.S3FileSystem()
    fs.put(str(root), f"{s3_bucket[5:]}/clips", recursive=True)
    broken = f"{s3_bucket[5:]}/clips/class0/broken.mp4"
    fs.pipe_file(broken, b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    remote = features(f"{s3_bucket}/clips", tmp_path / "remote.zarr", profile, scheduler)
    local = features(root, tmp_path / "local.zarr", profile, scheduler)
    store = remote.store
    assert store.ids == sorted(local.store.ids + ["class0/broken.mp4"])
    row = store.ids.index("class0/broken.mp4")
    errors = store.errors("rgb")
    assert errors[row].startswith(f"{s3_bucket}/clips/class0/broken.mp4: "), errors[row]
    sizes = zarr.open_group(tmp_path / "remote.zarr", mode="r")["videos/size"][:]
    assert sizes[row] == 12 + 2048 and (sizes > 0).all()
    got, want = arrays(tmp_path / "remote.zarr"), arrays(tmp_path / "local.zarr")
    rows = [store.ids.index(video_id) for video_id in local.store.ids]
    for key, values in want.items():
        np.testing.assert_array_equal(got[key][rows], values, err_msg=key)


@pytest.mark.slow  # three CLI processes with training; make test-all runs it
def test_store_info_train_and_evaluate_from_the_bucket(clips: tuple[Path, dict],
                                                       scheduler: str, s3_bucket: str,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root, profile = clips
    url = f"{s3_bucket}/clips.zarr"
    features(root, url, profile, scheduler)
    monkeypatch.chdir(tmp_path)  # runs/ is written below the working folder
    runner = CliRunner()
    info = runner.invoke(main, ["store", "info", url, "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    assert summary["path"] == url and summary["modalities"]["rgb"]["counts"]["done"] == 4
    trained = runner.invoke(main, ["train", "--dataset", "clips", "--features", url,
                                   "--epochs", "2", "--device", "cpu", "--json",
                                   "--out", str(tmp_path / "run")])
    assert trained.exit_code == 0, trained.output
    checkpoint = tmp_path / "run" / "best.pt"
    assert checkpoint.is_file()
    evaluated = runner.invoke(main, ["evaluate", "--dataset", "clips", "--features", url,
                                     "--checkpoint", str(checkpoint), "--device", "cpu",
                                     "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["n"] >= 1


def spec() -> dict[str, ModalitySpec]:
    return {"rgb": ModalitySpec(2, 4, {"backbone": "x"})}


def test_a_killed_creation_is_cleared_and_foreign_objects_are_kept(s3_bucket: str) -> None:
    url = f"{s3_bucket}/made.zarr"
    creation.begin(url)  # what a creation killed half way leaves: marker, no format
    zarr.open_group(url, mode="a", zarr_format=3).create_array("videos/id", shape=(2,),
                                                                dtype=str)
    assert creation.interrupted(url)
    store = create_store(url, dataset="d", task="single", classes=["a"], ids=["x", "y"],
                         modalities=spec())
    assert store.ids == ["x", "y"] and not creation.interrupted(url)
    assert not objects.exists(f"{url}/{creation.MARKER}")
    other = f"{s3_bucket}/other.zarr"
    objects.create(f"{other}/notes.txt", b"mine")
    with pytest.raises(StoreError, match="already holds objects .*notes.txt"):
        create_store(other, dataset="d", task="single", classes=["a"], ids=["x"],
                     modalities=spec())
    with pytest.raises(StoreError, match="already holds objects .*notes.txt"):
        create_store(other, dataset="d", task="single", classes=["a"], ids=["x"],
                     modalities=spec(), overwrite=True)
    assert objects.read(f"{other}/notes.txt")[0] == b"mine"


def test_the_lock_object_refuses_a_second_run_and_frees_a_dead_ones(s3_bucket: str) -> None:
    url = f"{s3_bucket}/locked.zarr"
    lock = f"{s3_bucket}/.locked.zarr.lock"
    with store_lock(url, command="first run"):
        assert writer_of(url) is not None and writer_of(url).command == "first run"
        with pytest.raises(StoreError, match="in use by `first run` .* expires in"), \
                store_lock(url, command="second run"):
            pass
    assert not objects.exists(lock) and writer_of(url) is None
    record = {"host": "elsewhere", "pid": 1, "started": 0.0, "command": "gone"}
    objects.create(lock, json.dumps({**record, "expires": 10.0}).encode())  # long expired
    assert writer_of(url) is None
    with store_lock(url, command="taker"):
        assert writer_of(url).command == "taker"
    objects.create(lock, json.dumps({**record, "expires": 4e9}).encode())  # alive elsewhere
    with pytest.raises(StoreError, match="in use by `gone` .*on host elsewhere"), \
            store_lock(url):
        pass
    objects.remove(lock)
    with store_lock(url, command="stalled"):  # taken over while this run was frozen
        check_still_held(url)
        objects.replace(lock, json.dumps({**record, "expires": 4e9}).encode(),
                        objects.read(lock)[1])
        with pytest.raises(StoreError, match="this run lost its lock"):
            check_still_held(url)
    assert json.loads(objects.read(lock)[0])["command"] == "gone"  # left to the new holder


def one_line_error(args: list[str], env: dict[str, str], patch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> str:
    """`cli.py ARGS` run in this process with `env` set: exit 1 and one `error:` line."""
    for name, value in env.items():
        patch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a client made earlier keeps its credentials
    patch.setattr(sys, "argv", ["cli.py", *args])
    with pytest.raises(SystemExit) as stopped:
        cli.run()
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def test_user_mistakes_are_one_line(s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(["store", "info", "s3://no-such-bucket-here/x.zarr"], {},
                          monkeypatch, capsys)
    assert line.startswith("error: s3://no-such-bucket-here/x.zarr does not exist"), line
    line = one_line_error(["features", "clips", "--root", "s3://no-such-bucket-here/clips",
                           "--out", f"{s3_bucket}/y.zarr"], {}, monkeypatch, capsys)
    assert "s3://no-such-bucket-here/clips" in line, line
    line = one_line_error(["store", "info", f"{s3_bucket}/x.zarr"],
                          {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"},
                          monkeypatch, capsys)
    assert "cannot be reached" in line, line
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    line = one_line_error(["store", "info", f"{s3_bucket}/x.zarr"],
                          {"AWS_EC2_METADATA_DISABLED": "true"}, monkeypatch, capsys)
    assert "no credentials found" in line, line
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("where", ["s3", "disk"])
def test_leases_have_one_holder_and_dead_ones_are_taken_over(where: str, s3_bucket: str,
                                                            tmp_path: Path) -> None:
    store = f"{s3_bucket}/coop.zarr" if where == "s3" else str(tmp_path / "coop.zarr")
    me = Holder(socket.gethostname(), os.getpid(), psutil.Process().create_time(), "a")
    first, second = (Leases(store, me, 30.0, holder_alive) for _ in range(2))
    assert first.take(0) and not second.take(0)  # a live holder: one at a time
    assert second.live_others() == {0} and first.holds(0)
    first.release(0)
    assert second.take(0) and first.live_others() == {0}
    dead = {"host": "elsewhere", "pid": 1, "started": 0.0, "command": "x", "expires": 1.0}
    objects.create(f"{leases_url(store)}/block-000001", json.dumps(dead).encode())
    assert first.live_others() == {0} and first.take(1)  # expired: taken over
    inside, overlaps = [0], []

    def write(leases: Leases) -> None:
        for _ in range(3):
            with leases.writing(0):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.02)
                inside[0] -= 1

    threads = [threading.Thread(target=write, args=(lease,)) for lease in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1] * 6  # never two writers of one shard
    first.close()
    second.close()
    assert objects.files_under(leases_url(store)) == []


def test_a_run_stalled_past_its_lease_writes_nothing_of_that_block(s3_bucket: str) -> None:
    """The fence: a block taken over while its first holder was frozen is written by the new
    holder only; the stalled run's rows are dropped (left to it), never written over."""
    url = f"{s3_bucket}/stalled.zarr"
    store = create_store(url, dataset="d", task="single", classes=["a"],
                         ids=[f"v{i}" for i in range(8)], modalities=spec())
    me = Holder(socket.gethostname(), os.getpid(), psutil.Process().create_time(), "a")
    stalled, other = Leases(url, me, 0.6, holder_alive), Leases(url, me, 30.0, holder_alive)
    writer = BlockWriter(store, stalled, rows=4, flush_seconds=60.0)
    assert stalled.take(0) and stalled.take(1)
    stalled._held[0].stop()  # frozen: no renewals of block 0 (block 1 is renewed)
    time.sleep(1.0)
    assert other.take(0) and not other.take(1)  # expired vs renewed
    writer.expect(0, 4)
    writer.expect(1, 4)
    row = {"rgb": {"status": 1, "features": np.ones((2, 4), np.float16),
                   "mask": np.ones(2, bool), "time": np.zeros(2, np.float32), "error": ""}}
    for number in range(8):
        writer.add(number, row)
    assert writer.lost == 4
    status = zarr.open_group(url, mode="r")["rgb/status"][:]
    assert status.tolist() == [0] * 4 + [1] * 4  # block 0 left to its new holder
    stalled.close()
    other.close()


def test_ucf101_lists_read_from_a_bucket_give_the_manifest_on_disk(toy_videos: Path,
                                                                  s3_bucket: str) -> None:
    """The official-list adapter through `RemotePath`: list files, case fix-ups, file sizes."""
    s3fs.S3FileSystem().put(str(toy_videos), f"{s3_bucket[5:]}/toy", recursive=True)
    remote = load_manifest("ucf101", f"{s3_bucket}/toy")
    local = load_manifest("ucf101", toy_videos)
    assert str(remote.root) == f"{s3_bucket}/toy" and remote.classes == local.classes
    assert remote.videos == local.videos and remote.split_names == local.split_names
    sizes = {entry.id: info.st_size for entry, info in remote.present_files()}
    assert sizes == {entry.id: info.st_size for entry, info in local.present_files()}
    assert remote.problems.count() == local.problems.count() == 0


def test_cooperate_on_a_local_disk_fills_the_store_of_a_plain_run(
        clips: tuple[Path, dict], scheduler: str, tmp_path: Path) -> None:
    """--cooperate on a path (leases as files, 2-row blocks): the store a plain run makes."""
    root, profile = clips
    plain = features(root, tmp_path / "plain.zarr", profile, scheduler)
    together = run_features(kind="folder", root=root, profile=profile, dataset="clips",
                            out=tmp_path / "coop.zarr", scheduler=scheduler, progress=False,
                            cooperate=True, lease_rows=2)
    assert together.run.completed == plain.run.completed == 4
    expected, found = arrays(tmp_path / "plain.zarr"), arrays(tmp_path / "coop.zarr")
    for key, values in expected.items():
        np.testing.assert_array_equal(found[key], values, err_msg=key)
    assert list((tmp_path / ".coop.zarr.leases").iterdir()) == []
    assert not (tmp_path / ".coop.zarr.lock").exists()


def test_a_reader_on_disk_never_sees_an_object_half_written(tmp_path: Path) -> None:
    """A half-written lock record read as empty passes for a dead lock, which a second run
    then takes over while the first holds it: creates and replaces must look atomic."""
    url, record = str(tmp_path / "leases" / "write-000000"), b'{"pid": 1}' * 400
    seen: set[bytes | None] = set()
    done = threading.Event()

    def read_all_the_time() -> None:
        while not done.is_set():
            found = objects.read(url)
            seen.add(found[0] if found else None)

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    try:
        for _ in range(300):
            etag = objects.create(url, record)
            etag = objects.replace(url, record[::-1], etag)
            objects.remove(url)
    finally:
        done.set()
        reader.join()
    assert seen <= {None, record, record[::-1]}, sorted(len(s or b"") for s in seen)
    assert objects.files_under(str(tmp_path / "leases")) == []  # no staged file left

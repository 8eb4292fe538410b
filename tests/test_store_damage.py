"""A damaged store is found, reported row by row, refused by readers and repaired exactly.

The store is a real `run_features` run over 20 real clips (folder layout, the cheap profile,
an in-process Dask worker), laid out small on purpose (8 rows per shard, 2 rows per feature
chunk) so that a damaged file costs some rows, not all. Each case damages a copy the way a
disk or a careless copy does: a shard file deleted, an inner chunk gone, bytes flipped in
the middle of a shard, a byte flipped in a status chunk, a shard cut short, a mask shard
deleted. Then `cli.py store info --verify` must name exactly the damaged rows (exit 1),
training must stop with one line, and `features` (with --repair where only reading every
chunk finds it) must recompute exactly those rows and give back the clean store bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

import pipeline.store.create as create
from pipeline.features.run import FeaturesRun, run_features
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status, StoreError
from pipeline.store.verify import find_damage, shard_file
from pipeline.train.data import load_split
from tests.hostile import clip_dataset
from tests.processes import ROOT
from tests.profiles import CHEAP_PROFILE

VIDEOS = 20
SHARD_ROWS = 8
FEATURE_CHUNK_ROWS = 2


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, inprocess_scheduler: str
          ) -> tuple[Path, Path, Path]:
    """(dataset root, profile, clean store) with small shards and feature chunks."""
    base = tmp_path_factory.mktemp("damage")
    root = clip_dataset(base / "clips", VIDEOS)
    profile = base / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    store = base / "clean.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(create, "MAX_ROWS_PER_SHARD", SHARD_ROWS)
        patch.setattr(create, "MAX_FEATURE_CHUNK_ROWS", FEATURE_CHUNK_ROWS)
        features(root, profile, store, inprocess_scheduler)
    opened = open_store(store)
    assert opened.rows_per_shard == SHARD_ROWS
    assert opened.chunk_rows("rgb") == FEATURE_CHUNK_ROWS
    assert all((opened.status(m) != Status.PENDING).all() for m in opened.modalities)
    return root, profile, store


def features(root: Path, profile: Path, out: Path, scheduler: str, repair: bool = False
             ) -> FeaturesRun:
    return run_features(kind="folder", root=root, profile=load_profile(profile), out=out,
                        dataset="clips", scheduler=scheduler, device="cpu", progress=False,
                        repair=repair)


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {name: node[:] for name, node in group.members(max_depth=None)
            if isinstance(node, zarr.Array)}


def assert_same_store(path: Path, reference: Path) -> None:
    got, want = arrays(path), arrays(reference)
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        if values.dtype.kind == "f":
            assert np.array_equal(got[name], values, equal_nan=True), name
        else:
            assert (got[name] == values).all(), name


def chunk_byte_ranges(path: Path, chunks: int) -> np.ndarray:
    """(chunks, 2) offset and length of each inner chunk: the shard index at the file's end."""
    data = path.read_bytes()
    return np.frombuffer(data[-(16 * chunks + 4):-4], dtype="<u8").reshape(chunks, 2)


def shard_of(store: Path, name: str, shard: int) -> Path:
    return shard_file(zarr.open_array(store / name, mode="r"), shard)


def delete_feature_shard(store: Path) -> None:
    shard_of(store, "rgb/features", 1).unlink()


def drop_inner_chunk(store: Path) -> None:
    # zarr leaves a chunk out of its shard when it holds only the fill value (NaN here)
    zarr.open_array(store / "rgb/features", mode="r+")[4:6] = np.nan


def flip_bytes_mid_shard(store: Path) -> None:
    path = shard_of(store, "flow/features", 0)
    offset, length = chunk_byte_ranges(path, SHARD_ROWS // FEATURE_CHUNK_ROWS)[3]
    data = bytearray(path.read_bytes())
    data[int(offset + length // 2)] ^= 0x5A
    path.write_bytes(bytes(data))


def flip_status_byte(store: Path) -> None:
    path = shard_of(store, "audio/status", 1)
    data = bytearray(path.read_bytes())
    data[2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate_shard(store: Path) -> None:
    path = shard_of(store, "flow/features", 2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_mask_shard(store: Path) -> None:
    shard_of(store, "rgb/mask", 0).unlink()


# (damage, modality, damaged rows, array and reason in the message, needs --repair)
CASES: dict[str, tuple[Callable[[Path], None], str, range, str, bool]] = {
    "feature shard deleted": (delete_feature_shard, "rgb", range(8, 16),
                              r"'rgb/features' rows 8-15 \(missing chunk\)", False),
    "inner chunk missing": (drop_inner_chunk, "rgb", range(4, 6),
                            r"'rgb/features' rows 4-5 \(missing chunk\)", False),
    "bytes flipped mid-shard": (flip_bytes_mid_shard, "flow", range(6, 8),
                                r"'flow/features' rows 6-7 \(checksum mismatch\)", True),
    "status byte flipped": (flip_status_byte, "audio", range(8, 16),
                            r"'audio/status' rows 8-15 \(checksum mismatch\)", False),
    "shard truncated": (truncate_shard, "flow", range(16, 20),
                        r"'flow/features' rows 16-19 \(shard index unreadable", False),
    "mask shard deleted": (delete_mask_shard, "rgb", range(0, 8),
                           r"'rgb/mask' rows 0-7 \(missing chunk\)", False),
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def damaged_copy(clean_store: Path, tmp_path: Path, case: str) -> Path:
    store = tmp_path / "damaged.zarr"
    shutil.copytree(clean_store, store)
    CASES[case][0](store)
    return store


@pytest.mark.parametrize("case", sorted(CASES))
def test_verify_reports_exactly_the_damaged_rows(clean: tuple[Path, Path, Path],
                                                 tmp_path: Path, case: str) -> None:
    _, modality, rows, _, _ = CASES[case]
    store = damaged_copy(clean[2], tmp_path, case)
    result = cli("store", "info", "--verify", "--json", str(store))
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["damaged"] is True
    found = {name: info["row_numbers"] for name, info in report["modalities"].items()}
    assert found == {name: list(rows) if name == modality else []
                     for name in ("rgb", "flow", "audio", "videos")}
    text = cli("store", "info", "--verify", str(store))
    assert text.returncode == 1
    assert f"{modality}: {len(rows)} damaged rows" in text.stdout
    assert "--repair" in text.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_read_stops_with_one_line(clean: tuple[Path, Path, Path], tmp_path: Path,
                                           case: str) -> None:
    message = CASES[case][3]
    store = damaged_copy(clean[2], tmp_path, case)
    with pytest.raises(StoreError, match=message) as caught:
        load_split(store, split=1, streaming="off")
    assert "\n" not in str(caught.value)
    assert "--repair" in str(caught.value)


def test_train_command_prints_one_line(clean: tuple[Path, Path, Path], tmp_path: Path) -> None:
    store = damaged_copy(clean[2], tmp_path, "bytes flipped mid-shard")
    result = cli("train", "--dataset", "clips", "--features", str(store), "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--device", "cpu", "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'flow/features' rows 6-7 (checksum mismatch)" in errors[0], \
        result.stderr[-2000:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_features_recomputes_exactly_the_damaged_rows(clean: tuple[Path, Path, Path],
                                                      tmp_path: Path, inprocess_scheduler: str,
                                                      case: str) -> None:
    root, profile, clean_store = clean
    _, modality, rows, _, needs_repair = CASES[case]
    store = damaged_copy(clean_store, tmp_path, case)
    result = features(root, profile, store, inprocess_scheduler, repair=needs_repair)
    assert result.run.completed == len(rows)  # one task per damaged row, nothing else
    assert result.damage is not None
    assert {m: r.tolist() for m, r in result.damage.affected.items() if len(r)} == {
        modality: list(rows)}
    assert_same_store(store, clean_store)
    assert not find_damage(open_store(store)).damaged


def test_cheap_check_misses_flipped_bytes_repair_finds_them(
        clean: tuple[Path, Path, Path], tmp_path: Path, inprocess_scheduler: str) -> None:
    """Without --repair only chunk keys are checked: flipped bytes are found by --repair."""
    root, profile, clean_store = clean
    store = damaged_copy(clean_store, tmp_path, "bytes flipped mid-shard")
    plain = features(root, profile, store, inprocess_scheduler)
    assert plain.damage is None and plain.run.completed == 0
    assert find_damage(open_store(store)).damaged
    repaired = features(root, profile, store, inprocess_scheduler, repair=True)
    assert repaired.run.completed == 2
    assert_same_store(store, clean_store)


def test_write_into_a_damaged_chunk_stops_with_one_line(
        clean: tuple[Path, Path, Path], tmp_path: Path, inprocess_scheduler: str) -> None:
    """A row to recompute whose chunk is damaged: the merge cannot decode it, so the run
    stops with the line that says to repair; --repair then recomputes that chunk's rows."""
    root, profile, clean_store = clean
    store = damaged_copy(clean_store, tmp_path, "bytes flipped mid-shard")
    zarr.open_array(store / "flow/status", mode="r+")[6] = Status.PENDING
    with pytest.raises(StoreError, match=r"'flow/features' rows 6-7 \(checksum mismatch\)"):
        features(root, profile, store, inprocess_scheduler)
    assert open_store(store).status("rgb").tolist() == [Status.DONE] * VIDEOS
    assert features(root, profile, store, inprocess_scheduler, repair=True).run.completed == 2
    assert_same_store(store, clean_store)


def test_store_info_stops_on_a_lost_status(clean: tuple[Path, Path, Path],
                                            tmp_path: Path) -> None:
    """Rows whose status is unreadable are neither done nor pending to a reader: one line."""
    store = damaged_copy(clean[2], tmp_path, "status byte flipped")
    result = cli("store", "info", str(store))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {store}: damaged data in 'audio/status' rows 8-15 (checksum mismatch): run "
        f"`cli.py store info --verify {store}` and rerun `cli.py features` with --repair"]


def test_features_repair_command(clean: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The real command with --repair: one note naming the rows, then a clean store."""
    root, profile, clean_store = clean
    store = damaged_copy(clean_store, tmp_path, "bytes flipped mid-shard")
    result = cli("features", "clips", "--root", str(root), "--config", str(profile), "--out",
                 str(store), "--workers", "1", "--device", "cpu", "--repair")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"note: damaged data in {store}: rows marked pending and recomputed: flow 2 (6-7)"
            in result.stderr.splitlines())
    assert cli("store", "info", "--verify", str(store)).returncode == 0


def test_clean_store_verifies(toy_store: Path) -> None:
    """The shared toy store (read-only: the session checks it is unchanged) is clean."""
    result = cli("store", "info", "--verify", str(toy_store))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    for modality in ("rgb", "flow", "audio", "videos"):
        assert f"{modality}: no damage" in result.stdout


def as_format_1(store: Path, out: Path) -> None:
    """The same store as format 1 wrote it: no checksums, zero fills, no v2 arrays."""
    source = zarr.open_group(store, mode="r")
    target = zarr.open_group(out, mode="w-", zarr_format=3)
    fills = {"features": 0, "time": 0.0, "status": 0, "error": ""}
    for name, array in sorted(source.members(max_depth=None)):
        if not isinstance(array, zarr.Array) or name in ("videos/size", "videos/mtime_ns",
                                                          "videos/listed"):
            continue
        fill = fills.get(name.split("/")[-1], array.fill_value)
        copy = target.create_array(name, shape=array.shape, dtype=array.dtype,
                                   chunks=array.chunks, shards=array.shards, fill_value=fill,
                                   dimension_names=array.metadata.dimension_names)
        copy[:] = array[:]
        copy.attrs.update(array.attrs.asdict())
    target.attrs.update({**source.attrs.asdict(), "format_version": 1})


def test_format_1_store_verifies_and_repairs_missing_rows(
        clean: tuple[Path, Path, Path], tmp_path: Path, inprocess_scheduler: str) -> None:
    root, profile, clean_store = clean
    old = tmp_path / "v1.zarr"
    as_format_1(clean_store, old)
    assert not find_damage(open_store(old)).damaged
    shard_of(old, "rgb/features", 1).unlink()
    report = find_damage(open_store(old))
    assert report.affected["rgb"].tolist() == list(range(8, 16))
    assert cli("store", "info", "--verify", str(old)).returncode == 1
    result = features(root, profile, old, inprocess_scheduler)
    assert result.run.completed == 8
    repaired = open_store(old)
    features_now, = repaired.read("rgb", fields=("features",))
    reference, = open_store(clean_store).read("rgb", fields=("features",))
    assert np.array_equal(features_now, reference)
    assert not find_damage(repaired).damaged


def test_resume_repairs_before_it_writes_into_a_damaged_chunk(
        clean: tuple[Path, Path, Path], tmp_path: Path, inprocess_scheduler: str) -> None:
    """A changed file among rows whose status chunk is damaged: resuming resets that row's
    status, which would have to merge into the damaged chunk (and --repair, run after it,
    could never get there). The damage is repaired first, then the row is reset."""
    root, profile, clean_store = clean
    store = damaged_copy(clean_store, tmp_path, "status byte flipped")  # audio rows 8-15
    clips = tmp_path / "clips"
    shutil.copytree(root, clips)
    touched = clips / open_store(clean_store).ids[9]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    result = features(clips, profile, store, inprocess_scheduler)
    assert result.relisting is not None and result.relisting.changed == 1
    assert result.damage is not None
    assert {m: r.tolist() for m, r in result.damage.affected.items() if len(r)} == {
        "audio": list(range(8, 16))}
    assert result.run.completed == 8  # rows 8-15 (row 9 in every modality), nothing else
    got, want = arrays(store), arrays(clean_store)
    for name, values in want.items():
        if name != "videos/mtime_ns":
            assert np.array_equal(got[name], values, equal_nan=values.dtype.kind == "f"), name
    assert not find_damage(open_store(store), full=True).damaged

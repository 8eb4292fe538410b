"""`features` end to end: a toy subset through real decoding, flow, backbones and Dask."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.datasets.generated.toy import factors_of, generate_toy
from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from tests.processes import kill_group_when
from tests.profiles import TINY_PROFILE

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("features", "mask", "time", "status", "error")

PROFILE = TINY_PROFILE


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 toy clips (one per class, 4 without audio) plus one corrupt file in the lists."""
    base = tmp_path_factory.mktemp("features")
    root = generate_toy(base / "toy", seed=3, videos=12, progress=False)
    broken = root / "RedLeftLow" / "v_RedLeftLow_g01_c99.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    lists = root / "ucfTrainTestlist"
    label = next(line.split()[0] for line in (lists / "classInd.txt").read_text().splitlines()
                 if line.split()[1] == "RedLeftLow")
    for split in (1, 2, 3):
        with open(lists / f"trainlist0{split}.txt", "a") as handle:
            handle.write(f"RedLeftLow/{broken.name} {label}\n")
    profile = base / "tiny.yaml"
    profile.write_text(PROFILE)
    return root, profile


def extract(dataset: tuple[Path, Path], out: Path, workers: int = 1) -> None:
    root, profile = dataset
    run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                 dataset="toy", workers=workers, device="cpu", progress=False)


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {f"{m}/{f}": group[f"{m}/{f}"][:] for m in ("rgb", "flow", "audio") for f in FIELDS}


@pytest.fixture(scope="module")
def clean_store(dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "toy.zarr"
    extract(dataset, out, workers=1)
    return out


def test_store_holds_every_video_with_plain_zarr(clean_store: Path) -> None:
    group = zarr.open_group(clean_store, mode="r")
    attrs = group.attrs.asdict()
    assert attrs["format"] == "attention-clusters-features" and attrs["format_version"] == 1
    assert attrs["dataset"] == "toy" and attrs["task"] == "single"
    assert len(attrs["classes"]) == 12
    ids = [str(i) for i in group["videos/id"][:]]
    assert len(ids) == 13 and len(set(ids)) == 13
    assert group["videos/split"].shape == (13, 3)
    assert set(np.unique(group["videos/split"][:])) <= {0, 1, 2}
    for name, (length, dim) in {"rgb": (3, 1280), "flow": (2, 1280), "audio": (3, 128)}.items():
        assert group[f"{name}/features"].shape == (13, length, dim)
        assert group[f"{name}/features"].dtype == np.float16
        assert group[f"{name}/mask"].shape == (13, length)
        assert group[f"{name}/time"].dtype == np.float32
    assert attrs["modalities"]["flow"]["params"]["nscales"] == 2
    assert attrs["modalities"]["rgb"]["backbone"]["sha256"]


def test_statuses_masks_and_times(clean_store: Path) -> None:
    store = open_store(clean_store)
    broken = store.ids.index("RedLeftLow/v_RedLeftLow_g01_c99.mp4")
    for name in ("rgb", "flow", "audio"):
        features, mask, times, status = store.read(name)
        assert status[broken] == 2, f"{name} of the corrupt file is not failed"
        assert "v_RedLeftLow_g01_c99.mp4" in str(store.errors(name)[broken])
        good = [r for r in range(store.n) if r != broken]
        sound = {r: factors_of(store.ids[r].split("/")[0])[2] for r in good}
        for row in good:
            if name == "audio" and sound[row] == "Silent":
                assert status[row] == 3 and not mask[row].any()
                continue
            assert status[row] == 1, f"{name} {store.ids[row]}: {store.errors(name)[row]}"
            assert mask[row].any()
            assert np.isfinite(features[row][mask[row]].astype(np.float32)).all()
            assert np.abs(features[row][mask[row]]).sum() > 0
            used = times[row][mask[row]]
            assert (np.diff(used) > 0).all() and used[0] >= 0 and used[-1] < 4.5


def test_two_workers_give_the_same_store(dataset: tuple[Path, Path], clean_store: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "two.zarr"
    extract(dataset, out, workers=2)
    one, two = arrays(clean_store), arrays(out)
    for key in one:
        if key.endswith("/features"):
            # 1 worker x 2 threads vs 2 workers x 1 thread: float sums may differ in the last bit
            np.testing.assert_allclose(one[key].astype(np.float32), two[key].astype(np.float32),
                                       rtol=1e-2, atol=1e-2, err_msg=key)
        else:
            np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def test_rerun_skips_done_rows(dataset: tuple[Path, Path], clean_store: Path) -> None:
    root, profile = dataset
    started = time.monotonic()
    result = run_features(kind="ucf101", root=root, profile=load_profile(profile),
                          out=clean_store, dataset="toy", workers=1, device="cpu",
                          progress=False)
    assert result.run.total == 1  # only the corrupt video (failed rows are retried)
    assert time.monotonic() - started < 120


def test_killed_run_resumes_to_the_identical_store(dataset: tuple[Path, Path],
                                                  clean_store: Path, tmp_path: Path) -> None:
    root, profile = dataset
    out = tmp_path / "killed.zarr"
    command = [sys.executable, str(ROOT / "cli.py"), "features", "toy", "--root", str(root),
               "--config", str(profile), "--out", str(out), "--workers", "1",
               "--device", "cpu", "--flush-seconds", "0"]
    for _attempt in range(5):  # on a fast machine the last rows can land before the kill
        partial = kill_after_three_rows(command, out)
        if partial < 13:
            break
        shutil.rmtree(out)
    assert 3 <= partial < 13
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    one, two = arrays(clean_store), arrays(out)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def rows_done(out: Path) -> int:
    """Rows with rgb done, read while `features` may be writing the store."""
    try:
        return int((zarr.open_group(out, mode="r")["rgb/status"][:] == 1).sum())
    except (KeyError, FileNotFoundError, RuntimeError, ValueError):
        return 0  # not created yet, or a shard replaced between two reads


def kill_after_three_rows(command: list[str], out: Path) -> int:
    """Run `command`, SIGKILL its whole process group once 3 rows are done; rows done then."""
    kill_group_when(command, ROOT, lambda: rows_done(out) >= 3, timeout_s=180, poll_s=0.1)
    return int((zarr.open_group(out, mode="r")["rgb/status"][:] == 1).sum())

"""`features` end to end, the values: the session's toy store (tests/conftest.py: 12 toy clips
and a corrupt file through real decoding, flow, backbones and a Dask worker), and a rerun.

What needs processes (two workers give the same store as one, kill -9 then resume) is in
tests/system/test_features_processes.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import zarr

from pipeline.datasets.generated.toy import factors_of
from pipeline.features.run import run_features, video_outcome
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status


def test_store_holds_every_video_with_plain_zarr(toy_store: Path) -> None:
    group = zarr.open_group(toy_store, mode="r")
    attrs = group.attrs.asdict()
    assert attrs["format"] == "attention-clusters-features" and attrs["format_version"] == 2
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


def test_statuses_masks_and_times(toy_store: Path) -> None:
    store = open_store(toy_store)
    broken = store.ids.index("RedLeftLow/v_RedLeftLow_g01_c99.mp4")
    for name in ("rgb", "flow", "audio"):
        features, mask, times, status = store.read(name)
        assert status[broken] == Status.FAILED, f"{name} of the corrupt file is not failed"
        assert "v_RedLeftLow_g01_c99.mp4" in str(store.errors(name)[broken])
        good = [r for r in range(store.n) if r != broken]
        sound = {r: factors_of(store.ids[r].split("/")[0])[2] for r in good}
        for row in good:
            if name == "audio" and sound[row] == "Silent":
                assert status[row] == Status.ABSENT and not mask[row].any()
                continue
            assert status[row] == Status.DONE, f"{name} {store.ids[row]}: {store.errors(name)[row]}"
            assert mask[row].any()
            assert np.isfinite(features[row][mask[row]].astype(np.float32)).all()
            assert np.abs(features[row][mask[row]]).sum() > 0
            used = times[row][mask[row]]
            assert (np.diff(used) > 0).all() and used[0] >= 0 and used[-1] < 4.5


def test_rerun_skips_done_rows(toy_dataset: tuple[Path, Path], toy_store: Path,
                               inprocess_scheduler: str, tmp_path: Path) -> None:
    root, profile = toy_dataset
    out = tmp_path / "toy.zarr"
    shutil.copytree(toy_store, out)  # the rerun writes the retried row: not the shared store
    started = time.monotonic()
    result = run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                          dataset="toy", scheduler=inprocess_scheduler, device="cpu",
                          progress=False)
    assert result.run.total == 1  # only the corrupt video (failed rows are retried)
    assert time.monotonic() - started < 120


def test_each_video_is_counted_by_what_its_modalities_got() -> None:
    """The run summary's label per video: a failed modality beside a done one is 'partly
    failed', absent audio is normal, and the runner's whole-task failure is 'failed'."""
    done, failed, absent = ({"status": s} for s in (Status.DONE, Status.FAILED, Status.ABSENT))
    assert video_outcome({"rgb": done, "flow": done, "audio": absent}) == "done"
    assert video_outcome({"rgb": done, "flow": failed, "audio": done}) == "partly failed"
    assert video_outcome({"rgb": failed, "flow": failed, "audio": absent}) == "failed"
    assert video_outcome({"status": Status.FAILED, "error": "KilledWorker: …"}) == "failed"

"""Features do not depend on how many workers computed them, nor on the caller's threads.

The toy store (one worker process: 2 torch threads per worker on this 2-core machine before
the fix) against two worker processes (1 thread each before) and the in-process extractor as
`classify` builds it, with this process set to 2 torch threads: bit for bit, every array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.features.extractor import EXTRACTION_THREADS, VideoFeatureExtractor
from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from pipeline.store.rows import pad_row
from tests.conftest import TOY_MODALITIES

FIELDS = ("features", "mask", "time", "status", "error")


def test_two_workers_give_the_features_of_one(toy_dataset: tuple[Path, Path], toy_store: Path,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, profile = toy_dataset
    monkeypatch.setenv("AC_FLOW_COMPILE", "0")  # as toy_store was made
    out = tmp_path / "two.zarr"
    run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                 dataset="toy", workers=2, device="cpu", progress=False)
    one, two = zarr.open_group(toy_store, mode="r"), zarr.open_group(out, mode="r")
    for name in TOY_MODALITIES:
        assert (one[f"{name}/status"][:] == Status.DONE).sum() >= 8  # real features compared
        for field in FIELDS:
            np.testing.assert_array_equal(two[f"{name}/{field}"][:], one[f"{name}/{field}"][:],
                                          err_msg=f"{name}/{field}")


def test_the_in_process_extractor_gives_the_store_features(toy_dataset: tuple[Path, Path],
                                                          toy_store: Path) -> None:
    """As `classify` extracts: in this process, whatever torch threads it was set to."""
    root, _ = toy_dataset
    store = open_store(toy_store)
    extractor = VideoFeatureExtractor.from_record(
        {name: spec.config for name, spec in store.modalities.items()}, "cpu")
    group = zarr.open_group(toy_store, mode="r")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.get_num_threads() != EXTRACTION_THREADS  # the case that used to differ
        compared = 0
        for row, video_id in enumerate(store.ids):
            result = extractor.extract(root / video_id)
            assert torch.get_num_threads() == 2  # the caller's setting is given back
            for name, spec in store.modalities.items():
                if store.status(name)[row] != Status.DONE:
                    continue
                padded = pad_row(result[name], spec.positions, spec.dim)
                np.testing.assert_array_equal(padded.features, group[f"{name}/features"][row],
                                              err_msg=f"{video_id} {name}")
                compared += 1
    finally:
        torch.set_num_threads(before)
    assert compared >= 30

"""`cli.py finetune` as a process: kill -9 mid-run, rerun, and the result is the uninterrupted
one; then `features` with its weights records their sha256 and classify's rebuild matches.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from tests.processes import ROOT, kill_group_when

EPOCHS = 2


def finetune_command(root: Path, profile: Path, out: Path) -> list[str]:
    return [sys.executable, "cli.py", "finetune", "toy", "--root", str(root), "--config",
            str(profile), "--modality", "flow", "--epochs", str(EPOCHS), "--batch-size", "4",
            "--out", str(out), "--device", "cpu", "--json"]


def finished(out: Path) -> dict:
    record = json.loads((out / "finetune.json").read_text())
    assert not (out / "last.pt").exists()
    return record


@pytest.mark.slow
def test_killed_finetune_resumes_to_the_same_weights(toy_dataset: tuple[Path, Path],
                                                     tmp_path: Path, inprocess_scheduler: str):
    root, profile = toy_dataset
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(finetune_command(root, profile, clean), cwd=ROOT, check=True,
                   capture_output=True)
    reference = finished(clean)
    assert reference["epochs"] == EPOCHS and len(reference["val_top1"]) == EPOCHS
    assert reference["base"]["spec"]["name"] == "efficientnet_lite0"
    assert reference["skipped_videos"] and "c99" in reference["skipped_videos"][0]  # corrupt
    assert reference["train_videos"] == 8 and reference["val_videos"] == 4

    # killed once while building the snippet cache, once after the first epoch
    cache_done = killed / "snippets.zarr" / "done"
    kill_group_when(finetune_command(root, profile, killed), ROOT,
                    lambda: cache_done.exists() and 0 < int(
                        (zarr.open_array(cache_done, mode="r")[:] != 0).sum()) < 12,
                    timeout_s=300, poll_s=0.05)
    kill_group_when(finetune_command(root, profile, killed), ROOT,
                    lambda: (killed / "last.pt").exists(), timeout_s=300, poll_s=0.05)
    saved = torch.load(killed / "last.pt", weights_only=True)["progress"]
    assert 1 <= len(saved["history"]) < EPOCHS
    result = subprocess.run(finetune_command(root, profile, killed), cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resumed = finished(killed)
    assert resumed["val_top1"] == reference["val_top1"]
    assert [e["train_loss"] for e in resumed["history"]] == [
        e["train_loss"] for e in reference["history"]]
    assert resumed["sha256"] == reference["sha256"]

    # features with the fine-tuned flow network: the store records its sha256, and the
    # extraction classify rebuilds from the store's record gives the stored features
    settings = load_profile(profile)
    settings["modalities"]["flow"]["backbone"] = reference["profile_backbone"]
    out = tmp_path / "finetuned.zarr"
    run_features(kind="ucf101", root=root, profile=settings, out=out, dataset="toy",
                 device="cpu", progress=False, scheduler=inprocess_scheduler)
    store = open_store(out)
    recorded = {name: spec.config for name, spec in store.modalities.items()}
    assert recorded["flow"]["backbone"]["sha256"] == reference["sha256"]
    rebuilt = VideoFeatureExtractor.from_record(recorded, "cpu")
    row = next(i for i, vid in enumerate(store.ids) if "c99" not in vid)
    features = rebuilt.extract(root / store.ids[row], ["flow"])["flow"]["features"]
    stored = store.read("flow", [row], fields=("features",))[0][0][: len(features)]
    np.testing.assert_array_equal(features, stored)

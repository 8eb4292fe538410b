"""A checkpoint is only used on features extracted the way its training features were (issue 11
item 5): `evaluate` refuses a store made with other weights or other positions although its
classes, modality names and widths match, `classify` refuses to rebuild an extraction that
differs from the record, and what never changes a feature (the decode timeout, batch sizes,
where a weights file lies) does not block."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import zarr

from extract.errors import UserError
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.features.run import run_features
from pipeline.inference.classify import classify_videos, load_classifier
from pipeline.profiles import load_profile
from pipeline.train.checkpoint import extraction_difference, load_checkpoint
from pipeline.train.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
OTHER_SHA256 = "0" * 64


@pytest.fixture(scope="module", autouse=True)
def eager_flow() -> Iterator[None]:
    """Eager TV-L1 in this process, like the shared store's worker."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AC_FLOW_COMPILE", "0")
        yield


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def edited_copy(store: Path, folder: Path, edit: dict[str, object]) -> Path:
    """A copy of `store` whose rgb backbone record has `edit` applied (what a store extracted
    with another weights file, or on another machine, records)."""
    copy = folder / "copy.zarr"
    shutil.copytree(store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    modalities = group.attrs.asdict()["modalities"]
    modalities["rgb"]["backbone"].update(edit)
    group.attrs["modalities"] = modalities
    return copy


def profile_variant(profile: Path, folder: Path, old: str, new: str) -> Path:
    text = profile.read_text()
    assert old in text
    path = folder / "variant.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_evaluate_refuses_a_store_made_with_other_weights(toy_store: Path, toy_checkpoint: Path,
                                                         tmp_path: Path) -> None:
    recorded = load_checkpoint(toy_checkpoint)["modalities"]["rgb"]["backbone"]["sha256"]
    other = edited_copy(toy_store, tmp_path, {"sha256": OTHER_SHA256,
                                              "weights": "user weights_file"})
    line = one_line_error(cli("evaluate", "--checkpoint", str(toy_checkpoint), "--features",
                              str(other), "--device", "cpu"))
    assert f"{toy_checkpoint} was trained on features extracted differently" in line
    assert f"rgb.backbone.sha256 {recorded} vs {OTHER_SHA256} (checkpoint vs store)" in line
    assert "extract the store with the checkpoint's profile or retrain" in line


def test_evaluate_refuses_a_store_extracted_with_other_positions(
        toy_dataset: tuple[Path, Path], toy_checkpoint: Path, inprocess_scheduler: str,
        tmp_path: Path) -> None:
    root, profile = toy_dataset
    variant = profile_variant(profile, tmp_path, "rgb: {positions: 3,", "rgb: {positions: 4,")
    store = tmp_path / "four.zarr"
    run_features(kind="ucf101", root=root, profile=load_profile(variant), out=store,
                 dataset="toy", scheduler=inprocess_scheduler, device="cpu", limit=3,
                 progress=False)
    line = one_line_error(cli("evaluate", "--checkpoint", str(toy_checkpoint), "--features",
                              str(store), "--device", "cpu"))
    assert f"{store}: rgb.positions 3 vs 4 (checkpoint vs store)" in line
    with pytest.raises(UserError, match="rgb.positions 3 vs 4"):
        evaluate(toy_checkpoint, store, device="cpu")


def test_matching_stores_still_evaluate(toy_store: Path, toy_checkpoint: Path,
                                        tmp_path: Path) -> None:
    """Same extraction: the store itself, and a copy whose weights file was elsewhere (another
    machine: the sha256 is the same, only the path differs)."""
    metrics = evaluate(toy_checkpoint, toy_store, device="cpu")
    moved = edited_copy(toy_store, tmp_path, {"weights_file": "/elsewhere/lite0.pth"})
    assert evaluate(toy_checkpoint, moved, device="cpu")["top1"] == metrics["top1"]
    assert metrics["n"] > 0


def test_settings_that_never_change_a_feature_do_not_block(
        toy_dataset: tuple[Path, Path], toy_checkpoint: Path, tmp_path: Path) -> None:
    """The decode timeout and the backbone batch size are not recorded, so an extraction that
    differs only in them matches; a flow setting is recorded and does not."""
    _, profile = toy_dataset
    content = load_checkpoint(toy_checkpoint)
    harmless = load_profile(profile_variant(profile, tmp_path, "timeout_s: 60",
                                            "timeout_s: 999"))
    harmless["modalities"]["rgb"]["batch_size"] = 3
    extractor = VideoFeatureExtractor(harmless["modalities"], harmless["limits"], "cpu")
    configs = {name: extractor.config(name) for name in extractor.settings}
    assert extraction_difference(content, configs, "ckpt") == ""
    configs["flow"]["params"]["warps"] = 3
    assert extraction_difference(content, configs, "ckpt") == "flow.params.warps 2 vs 3"


def tampered(checkpoint: Path, folder: Path, modality: str, path: tuple[str, ...],
             value: object) -> Path:
    """A copy of `checkpoint` whose record of `modality` has `path` set to `value`."""
    content = torch.load(checkpoint, weights_only=True)
    node = content["modalities"][modality]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    copy = folder / f"{modality}-{path[-1]}.pt"
    torch.save(content, copy)
    return copy


def test_classify_refuses_an_extraction_it_cannot_rebuild(toy_videos: Path, toy_checkpoint: Path,
                                                          tmp_path: Path) -> None:
    clip = sorted(toy_videos.glob("*/*.mp4"))[0]
    assert classify_videos([clip], toy_checkpoint, device="cpu", progress=False)[0]["top"]
    other_weights = tampered(toy_checkpoint, tmp_path, "flow", ("backbone", "sha256"),
                             OTHER_SHA256)
    with pytest.raises(UserError, match=f"has sha256 [0-9a-f]{{64}}, but the features were "
                                        f"extracted with {OTHER_SHA256}"):
        load_classifier(other_weights, device="cpu")
    # A record this software would not reproduce (features made by another version): the
    # rebuild itself succeeds, so only the comparison of the records can catch it.
    other_mel = tampered(toy_checkpoint, tmp_path, "audio", ("backbone", "log_mel", "fmax_hz"),
                         7000.0)
    with pytest.raises(UserError, match=r"audio-fmax_hz.pt: this installation would extract "
                       r"features differently .*: audio\.backbone\.log_mel\.fmax_hz 7000\.0 vs "
                       r"7500\.0 \(checkpoint vs here\)"):
        classify_videos([clip], other_mel, device="cpu", progress=False)

"""`classify` end to end: a tiny real store and checkpoint (the session's, tests/conftest.py),
then videos through the recorded extraction and the model; bad videos and bad checkpoints as
one clear UserError each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.features.extractor as extraction
import pipeline.inference.classify as classify
from extract.errors import UserError
from model.network import probabilities
from pipeline.features.extractor import settings_from_record
from pipeline.profiles import load_profile
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from pipeline.train.checkpoint import load_checkpoint, model_from_checkpoint
from tests.synth_video import make_clip

MODALITIES = ("rgb", "flow", "audio")


@pytest.fixture(scope="module", autouse=True)
def eager_flow() -> Iterator[None]:
    """Eager TV-L1 (no compile time for tiny inputs) in classify, like the shared store's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AC_FLOW_COMPILE", "0")
        yield


@pytest.fixture(scope="module")
def trained(toy_dataset: tuple[Path, Path], toy_store: Path,
            toy_checkpoint: Path) -> tuple[Path, Path, Path]:
    """(toy root, store, checkpoint): tests/conftest.py's 12 toy clips (4 silent) plus a
    corrupt one, their features, 2 epochs."""
    return toy_dataset[0], toy_store, toy_checkpoint


@pytest.fixture(scope="module")
def classifier(trained: tuple[Path, Path, Path]) -> classify.Classifier:
    return classify.load_classifier(trained[2], device="cpu")


def video(root: Path, sound: str) -> Path:
    return sorted(root.glob(f"*/*{sound}_*.mp4"))[0]


def test_features_equal_the_store(trained, classifier: classify.Classifier) -> None:
    root, store_path, _ = trained
    store = open_store(store_path)
    for path in (video(root, "High"), video(root, "Silent")):
        row = store.ids.index(str(path.relative_to(root)))
        features = classify.extract_video(classifier, path)
        assert features.error is None
        for name in MODALITIES:
            stored, mask, times, status = (a[row] for a in store.read(name))
            result = features.results[name]
            assert result["status"] == status, name
            if result["status"] != Status.DONE:
                continue
            count = len(result["features"])
            assert mask[:count].all() and not mask[count:].any()
            np.testing.assert_allclose(result["features"].astype(np.float32),
                                       stored[:count].astype(np.float32), rtol=1e-3, atol=1e-3)
            np.testing.assert_array_equal(result["time"], times[:count])


def test_recorded_settings_rebuild_the_profile(trained, toy_dataset) -> None:
    content = load_checkpoint(trained[2])
    settings, limits = settings_from_record(content["modalities"])
    profile = load_profile(toy_dataset[1])
    assert limits == {k: profile["limits"][k] for k in ("max_seconds", "max_pixels")}
    for name in MODALITIES:
        for key, value in profile["modalities"][name].items():
            if key not in ("backbone", "params"):
                assert settings[name][key] == value, (name, key)
    assert settings["flow"]["params"]["nscales"] == 2
    del content["modalities"]["flow"]["backbone"]
    with pytest.raises(UserError, match="flow"):
        settings_from_record(content["modalities"])


def test_probabilities_match_the_model_on_the_store_row(trained) -> None:
    root, store_path, checkpoint = trained
    path = video(root, "Low")
    [result] = classify.classify_videos([path], checkpoint, top_k=12, device="cpu",
                                        progress=False)
    store = open_store(store_path)
    row = store.ids.index(str(path.relative_to(root)))
    content = load_checkpoint(checkpoint)
    inputs = {}
    for name in MODALITIES:
        features, mask, _, status = store.read(name, [row])
        inputs[name] = (torch.from_numpy(features.astype(np.float32)), torch.from_numpy(mask),
                        torch.from_numpy(status == Status.DONE))
    with torch.inference_mode():
        logits, _ = model_from_checkpoint(content, torch.device("cpu"))(inputs)
    expected = probabilities(logits, "single")[0].numpy()
    got = {entry["label"]: entry["prob"] for entry in result["top"]}
    assert len(got) == 12
    for index, label in enumerate(content["classes"]):
        assert got[label] == pytest.approx(float(expected[index]), abs=1e-4)


def test_several_videos_share_one_model_load(trained, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    root, _, checkpoint = trained
    built: list[str] = []
    original = extraction.rebuild_backbone
    monkeypatch.setattr(extraction, "rebuild_backbone",
                        lambda config, device: built.append(config["modality"])
                        or original(config, device))
    videos = [video(root, "High"), video(root, "Silent"), video(root, "Low")]
    results = classify.classify_videos(videos, checkpoint, top_k=3, device="cpu",
                                       explain=tmp_path / "why.png", progress=False)
    assert sorted(built) == sorted(MODALITIES)
    assert [r["video"] for r in results] == [str(v) for v in videos]
    classes = load_checkpoint(checkpoint)["classes"]
    for result in results:
        probs = [entry["prob"] for entry in result["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert all(entry["label"] in classes for entry in result["top"])
    assert [r["modalities"]["audio"] for r in results] == ["done", "absent", "done"]
    assert all(r["modalities"]["rgb"] == r["modalities"]["flow"] == "done" for r in results)
    decoded = json.loads(json.dumps(results))
    assert decoded[1]["top"][0].keys() == {"label", "prob"} and "error" not in decoded[1]
    for index, result in enumerate(results, start=1):
        picture = tmp_path / f"why-{index}.png"
        assert result["explanation"] == str(picture)
        assert picture.stat().st_size > 20_000
    table = classify.format_table(results)
    assert all(v.name in table for v in videos)
    assert f"{results[0]['top'][0]['prob']:6.1%}" in table and "audio absent" in table


def test_explanation_picture(trained, tmp_path: Path) -> None:
    root, _, checkpoint = trained
    out = tmp_path / "pictures" / "silent.png"
    [result] = classify.classify_videos([video(root, "Silent")], checkpoint, device="cpu",
                                        explain=out, progress=False)
    with Image.open(out) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert result["explanation"] == str(out)
    assert width >= 1000 and height >= 600
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # thumbnails, heatmaps, text


def test_one_frame_video_classified_without_flow(trained, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "one.mp4", n_frames=1, size=(64, 48), tone_hz=440)
    [result] = classify.classify_videos([clip], trained[2], device="cpu", progress=False)
    assert result["modalities"] == {"rgb": "done", "flow": "failed", "audio": "done"}
    assert "too short for optical flow" in result["modality_errors"]["flow"]
    assert len(result["top"]) == 5


def bad_videos(folder: Path) -> dict[str, Path]:
    """Each kind of unusable file the issue names."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.mp4"
    text.write_text("this is not a video\n")
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(4000))
    whole = make_clip(folder / "whole.mp4", n_frames=60, size=(64, 48), faststart=True)
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 5])
    return {"missing": folder / "missing.mp4", "text": text, "empty": empty,
            "corrupt": corrupt, "truncated": truncated}


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "corrupt", "truncated"])
def test_one_bad_video_is_a_user_error(trained, tmp_path: Path, kind: str) -> None:
    path = bad_videos(tmp_path)[kind]
    with pytest.raises(UserError) as caught:
        classify.classify_videos([path], trained[2], device="cpu", progress=False)
    message = str(caught.value)
    assert path.name in message and "\n" not in message


def test_bad_videos_among_several_are_reported_and_skipped(trained, tmp_path: Path) -> None:
    root, _, checkpoint = trained
    bad = bad_videos(tmp_path)
    reported: list[str] = []
    videos = [bad["text"], video(root, "High"), bad["truncated"]]
    results = classify.classify_videos(videos, checkpoint, device="cpu", progress=False,
                                       on_error=reported.append)
    assert [("error" in r) for r in results] == [True, False, True]
    assert results[1]["top"] and not results[0]["top"]
    assert len(reported) == 2 and "notes.mp4" in reported[0] and "truncated.mp4" in reported[1]
    assert "error: " in classify.format_table(results)


def test_checkpoint_errors(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = video(trained[0], "High")
    not_checkpoint = tmp_path / "model.pt"
    not_checkpoint.write_text("weights? no")
    with pytest.raises(UserError, match="model.pt is not a valid checkpoint"):
        classify.classify_videos([clip], not_checkpoint, device="cpu", progress=False)
    content = torch.load(trained[2], weights_only=True)
    content["format_version"] = 99
    newer = tmp_path / "newer.pt"
    torch.save(content, newer)
    with pytest.raises(UserError, match="newer.pt has checkpoint format version 99"):
        classify.classify_videos([clip], newer, device="cpu", progress=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="run `make train DATASET=ucf101` first"):
        classify.classify_videos([clip], None, dataset="ucf101", device="cpu", progress=False)
    with pytest.raises(UserError, match="top-k"):
        classify.classify_videos([clip], trained[2], top_k=0, progress=False)

"""Profiles: every shipped profile loads, defaults fill in, mistakes give one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from extract.errors import UserError
from pipeline.profiles import CONFIG_DIR, default_profile_for, load_profile
from pipeline.train.config import TrainConfig

SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile["name"] == name
    assert set(profile["modalities"]) <= {"rgb", "flow", "audio"}
    for settings in profile["modalities"].values():
        assert settings["positions"] >= 1
        assert "name" in settings["backbone"]


def test_toy_profile_is_offline_and_has_three_modalities() -> None:
    profile = load_profile("toy")
    assert list(profile["modalities"]) == ["rgb", "flow", "audio"]
    assert profile["modalities"]["rgb"]["backbone"]["name"] == "efficientnet_lite0"
    assert profile["modalities"]["audio"]["backbone"]["name"] == "logmel"
    assert profile["modalities"]["flow"]["backend"] == "torch"


def test_defaults_fill_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("modalities:\n  rgb: {positions: 4}\n")
    profile = load_profile(path)
    assert profile["modalities"]["rgb"]["positions"] == 4
    assert profile["modalities"]["rgb"]["crop"] == 224
    assert profile["train"]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modalities:\n  rgb: {positons: 4}\n", "modalities.rgb.positons: unknown key"),
        ("modalities:\n  depth: {}\n", "modalities.depth: unknown modality"),
        ("modalities: {}\n", "at least one"),
        ("modalities:\n  rgb: {positions: 0}\n", "positive integer"),
        ("modalities: [\n", "not valid YAML"),
        ("train: {lr: 1}\nmodalities:\n  rgb: {}\ntrian: {}\n", "trian: unknown key"),
    ],
)
def test_bad_profiles_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_profile(path)


def test_train_section_accepts_every_training_option(tmp_path: Path) -> None:
    """Training defaults live in TrainConfig alone: a profile may set any of its fields."""
    path = tmp_path / "mine.yaml"
    path.write_text("modalities:\n  rgb: {}\ntrain: {hidden: 64, default_clusters: 4}\n")
    train = load_profile(path)["train"]
    assert (train["hidden"], train["default_clusters"], train["epochs"]) == (
        64, 4, TrainConfig().epochs)
    assert TrainConfig.from_dict(train).hidden == 64


@pytest.mark.parametrize(
    ("train", "message"),
    [("{hiden: 64}", "train.hiden: unknown key"), ("{epochs: ten}", "must be an integer"),
     ("{unit: conv}", "unit must be one of"), ("[1, 2]", "train: must be a mapping")],
)
def test_bad_train_sections_are_clear_errors(tmp_path: Path, train: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"modalities:\n  rgb: {{}}\ntrain: {train}\n")
    with pytest.raises(UserError, match=message):
        load_profile(path)


def test_unknown_profile_name_lists_known_ones() -> None:
    with pytest.raises(UserError, match="known: .*toy"):
        load_profile("no-such-profile")


def test_dataset_without_profile_uses_default() -> None:
    assert default_profile_for("my_videos").name == "default.yaml"
    assert default_profile_for("toy").name == "toy.yaml"

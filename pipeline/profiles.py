"""Dataset profiles (configs/<name>.yaml): how to sample, which flow backend and which backbones.

A profile is plain YAML so users can copy and edit one. Loading fills in defaults and rejects
unknown keys with one clear line, because a typo in a profile would otherwise silently change
what gets extracted for hours.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from extract.errors import UserError
from pipeline.train.config import TrainConfig

# Sections whose content belongs to another component (backbone specs, flow parameters, cluster
# sizes per modality, training settings): taken as given here and checked by that component.
FREE_FORM_KEYS = frozenset({"modalities", "backbone", "params", "clusters", "train"})

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "rgb": {
        "positions": 16,
        "resize_short": 256,
        "crop": 224,
        "backbone": {"name": "efficientnet_lite0"},
        "batch_size": 32,
    },
    "flow": {
        "positions": 8,
        "frames_per_stack": 6,
        "size": [340, 256],
        "backend": "torch",
        "params": {},
        "bound": 20.0,
        "backbone": {"name": "efficientnet_lite0"},
        "batch_size": 16,
    },
    "audio": {
        "positions": 16,
        "backbone": {"name": "logmel"},
        "batch_size": 64,
    },
}

PROFILE_DEFAULTS: dict[str, Any] = {
    "dataset": {"kind": "folder"},
    "limits": {"max_seconds": 600.0, "max_pixels": 3840 * 2160, "timeout_s": 600.0},
    "modalities": {},
    "train": {},  # checked and completed by TrainConfig, where every default is declared
}


def profile_path(name_or_path: str | Path) -> Path:
    """A profile given as a file path, or by name from configs/ (`toy` -> configs/toy.yaml)."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise UserError(f"profile not found: {candidate}")
        return candidate
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if not named.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise UserError(f"no profile named '{name_or_path}' (known: {known}; or give a YAML path)")
    return named


def default_profile_for(dataset: str) -> Path:
    """The dataset's own profile when configs/ has one, else the generic offline `default`."""
    named = CONFIG_DIR / f"{dataset}.yaml"
    return named if named.is_file() else CONFIG_DIR / "default.yaml"


def load_profile(name_or_path: str | Path) -> dict[str, Any]:
    """Read a profile, fill in defaults and check every key."""
    path = profile_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a profile must be a YAML mapping")
    profile = _merge(PROFILE_DEFAULTS, raw, where=str(path))
    modalities = raw.get("modalities") or {}
    if not isinstance(modalities, dict) or not modalities:
        raise UserError(f"{path}: 'modalities' must name at least one of rgb, flow, audio")
    profile["modalities"] = {}
    for name, settings in modalities.items():
        if name not in MODALITY_DEFAULTS:
            raise UserError(f"{path}: unknown modality '{name}' (known: rgb, flow, audio)")
        profile["modalities"][name] = _merge(
            MODALITY_DEFAULTS[name], settings or {}, where=f"{path}: modalities.{name}"
        )
        _check_positive(profile["modalities"][name], ("positions", "batch_size"), path, name)
    profile["train"] = _train_settings(profile["train"], path)
    profile["name"] = path.stem
    return profile


def _train_settings(given: Any, path: Path) -> dict[str, Any]:
    """The `train:` section completed with TrainConfig's defaults, checked the way `train` will."""
    given = {} if given is None else given  # an empty `train:` section
    if not isinstance(given, dict):
        raise UserError(f"{path}: train: expected a mapping, got {type(given).__name__}")
    try:
        return dataclasses.asdict(TrainConfig.from_dict(given))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _check_positive(settings: dict[str, Any], keys: tuple[str, ...], path: Path, name: str) -> None:
    for key in keys:
        value = settings[key]
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{path}: modalities.{name}.{key} must be a positive integer")


def _merge(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    """Defaults overlaid with `given`; keys in FREE_FORM_KEYS are taken whole, others checked."""
    if not isinstance(given, dict):
        raise UserError(f"{where}: expected a mapping, got {type(given).__name__}")
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise UserError(f"{where}: unknown key '{key}' (known: {known})")
        if key in FREE_FORM_KEYS or not isinstance(defaults[key], dict):
            merged[key] = copy.deepcopy(value)
        else:
            merged[key] = _merge(defaults[key], value or {}, f"{where}.{key}")
    return merged

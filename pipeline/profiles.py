"""Dataset profiles (configs/<name>.yaml): how to sample, which flow backend and which backbones.

A profile is plain YAML so users can copy and edit one. Loading fills in defaults and checks
the whole profile (pipeline/profile_checks.py) before any work, because a typo or an
impossible value would otherwise fail or silently change hours of extraction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extract.errors import UserError
from pipeline.profile_checks import check_profile, format_problems
from pipeline.profile_yaml import read_profile_yaml

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
    """Read a profile, fill in defaults and check it whole: every problem in one UserError."""
    path = profile_path(name_or_path)
    profile, problems = check_profile(read_profile_yaml(path), PROFILE_DEFAULTS,
                                      MODALITY_DEFAULTS)
    if problems:
        raise UserError(format_problems(str(path), problems))
    profile["name"] = path.stem
    return profile

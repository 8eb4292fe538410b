"""Checkpoints: one file, written atomically, read without ever running code from it.

The file is `torch.save` of a dict holding only tensors and plain data (str, int, float,
bool, None, lists, dicts), so `torch.load(weights_only=True)` reads it; anything else in the
file (a pickled object, a truncated archive, a newer format) is refused with a UserError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.errors import UserError
from model.network import AttentionClusterNet
from pipeline.atomic import write_atomic
from pipeline.store.resume import first_difference
from pipeline.versions import CHECKPOINT_PACKAGES, software_versions

CHECKPOINT_FORMAT = "attention-clusters-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("model_config", "state_dict", "classes", "task", "modalities")
# Keys of an extraction record that say where a file was, not what it held: the sha256 beside
# each names the content, so a store or checkpoint moved to another machine still matches.
LOCATION_KEYS = frozenset({"weights_file", "pca_file"})


def to_plain(value: Any) -> Any:
    """Plain data that weights_only loading accepts: str/int/float/bool/None, lists, dicts with
    string keys, tensors. Subclasses (TorchVersion, numpy scalars, Path) become their base."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, str | Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (+ format name, version, software) to `path` atomically.

    A temp file in the same directory then os.replace: a reader never sees half a file, and
    a crash mid-write leaves the previous checkpoint intact.
    """
    content = to_plain(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "software": software_versions(CHECKPOINT_PACKAGES),
            **payload,
            "state_dict": {k: v.detach().cpu() for k, v in payload["state_dict"].items()},
        }
    )
    return write_atomic(path, lambda stream: torch.save(content, stream))


def short_reason(exc: Exception) -> str:
    """The informative line of a torch.load failure, without its advice and colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    detail = next((line for line in lines if "Unpickler error" in line), lines[0] if lines else "")
    return f"{type(exc).__name__}: {detail[:160]}" if detail else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on CPU with weights_only=True and check its format and version."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise UserError(
            f"{path} is not a valid checkpoint (unreadable or unsafe content: {short_reason(exc)})"
        ) from None
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an attention-clusters checkpoint")
    version = content.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise UserError(
            f"{path} has checkpoint format version {version}; this software reads up to "
            f"{CHECKPOINT_VERSION} (upgrade it)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise UserError(f"{path} is an incomplete checkpoint (missing {', '.join(missing)})")
    return content


def without_locations(record: Any) -> Any:
    """An extraction record as plain data (tuples as lists), minus its LOCATION_KEYS."""
    if isinstance(record, Mapping):
        return {str(k): without_locations(v) for k, v in record.items()
                if k not in LOCATION_KEYS}
    if isinstance(record, list | tuple):
        return [without_locations(v) for v in record]
    return to_plain(record)


def extraction_difference(content: dict[str, Any], found: Mapping[str, Mapping[str, Any]],
                          source: str) -> str:
    """The first feature-defining setting in which `found` (modality -> extraction record: a
    store's, or the one classify rebuilt) differs from what the checkpoint's features were
    made with, as 'rgb.backbone.sha256 <checkpoint's> vs <found>'; '' when all agree.

    Why: classes, modality names and widths can all match while the features mean something
    else (other weights, other positions, other flow settings), and the model's scores are
    then silently wrong. Every recorded key counts (settings that never change a feature,
    such as the decode timeout or batch size, are not recorded), except file locations.
    """
    for name in content["model_config"]["modalities"]:
        recorded = (content.get("modalities") or {}).get(name)
        if not recorded or "backbone" not in recorded:
            raise UserError(
                f"{source} does not record how its {name} features were extracted (retrain it "
                "from a feature store made by this software)"
            )
        difference = first_difference(without_locations(recorded),
                                      without_locations(found.get(name) or {}), name)
        if difference:
            return difference
    return ""


def model_from_checkpoint(content: dict[str, Any], device: torch.device | str = "cpu"
                          ) -> AttentionClusterNet:
    """The network a loaded checkpoint describes, with its weights, on `device`, in eval mode.

    The one place a checkpoint becomes a model: evaluation, classify and the study use it.
    """
    model = AttentionClusterNet.from_config(content["model_config"])
    model.load_state_dict(content["state_dict"])
    return model.to(device).eval()

"""Backbone CNNs that turn frames, flow stacks or audio patches into one feature vector each.

`build_backbone(spec, modality, device)` reads a profile's `backbone:` dict and returns a callable
that takes a uint8 batch (images / flow stacks) or float32 log-mel patches (audio), does its own
normalisation on the device and returns (B, dim) float32 features on the CPU. `config()` records
everything needed to rebuild it identically (spec, weights source, sha256, preprocessing).

Spec names: `efficientnet_lite0` (offline default), `random` (Lite0 architecture, seeded random
weights, for tests), `torchvision:<model>`, `timm:<model>`, `mmaction2:tsn_r50` (a TSN checkpoint
file), and for audio `logmel` and `vggish`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from extract.backbones.audio import build_audio_backbone
from extract.backbones.families import IMAGE_BUILDERS, IMAGE_SPEC_KEYS
from extract.backbones.image import Modality
from extract.errors import UserError


class Backbone(Protocol):
    """What the pipeline needs from any feature extractor (image, flow or audio)."""

    name: str
    dim: int
    in_channels: int
    input_size: tuple[int, int]

    def config(self) -> dict[str, Any]: ...

    def __call__(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor: ...



def extract_batched(backbone: Backbone, items: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run a backbone over many inputs in fixed-size batches -> (N, dim) float32 numpy."""
    chunks = [backbone(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if not chunks:
        return np.zeros((0, backbone.dim), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


def build_backbone(
    spec: dict[str, Any], modality: Modality, device: torch.device | str = "cpu"
) -> Backbone:
    """Build the feature extractor a profile's `backbone:` dict names, for one modality."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UserError(f"{modality} backbone: expected a mapping with a 'name', got {spec!r}")
    device = torch.device(device)
    if modality == "audio":
        return build_audio_backbone(spec, device)
    if modality not in ("rgb", "flow"):
        raise UserError(f"backbone: unknown modality {modality!r} (rgb, flow, audio)")
    unknown = set(spec) - IMAGE_SPEC_KEYS
    if unknown:
        raise UserError(
            f"{modality} backbone {spec['name']!r}: unknown option(s) {sorted(unknown)} "
            f"(known: {sorted(IMAGE_SPEC_KEYS)})"
        )
    family = spec["name"].split(":", 1)[0] if ":" in spec["name"] else spec["name"]
    builder = IMAGE_BUILDERS.get(family)
    if builder is None:
        raise UserError(
            f"{modality} backbone {spec['name']!r}: unknown name (use efficientnet_lite0, "
            "random, torchvision:<model>, timm:<model>)"
        )
    return builder(dict(spec), modality, device)


def rebuild_backbone(config: dict[str, Any], device: torch.device | str = "cpu") -> Backbone:
    """Rebuild the backbone a recorded `config()` describes, refusing different weights.

    `classify` must see features computed exactly like the training store's, so a weights file
    whose sha256 differs from the recorded one is an error, not a silent mismatch.
    """
    try:
        spec, modality = config["spec"], config["modality"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"recorded backbone config lacks 'spec'/'modality': {config!r}") from exc
    backbone = build_backbone(spec, modality, device)
    recorded, found = config.get("sha256"), backbone.config().get("sha256")
    if recorded != found:
        raise UserError(
            f"{modality} backbone {spec.get('name')!r}: weights file "
            f"{backbone.config().get('weights_file')} has sha256 {found}, but the features were "
            f"extracted with {recorded}; use the same weights file"
        )
    return backbone

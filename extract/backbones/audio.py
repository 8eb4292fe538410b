"""Audio backbones: the offline `logmel` statistics and VGGish, by name.

Both take the log-mel patches of extract/logmel.py, so the audio pipeline up to the network
is the same whichever is chosen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from extract.backbones.vggish import VGGISH_SPEC_KEYS, build_vggish
from extract.errors import UserError
from extract.logmel import LOG_MEL_CONFIG, N_MELS, PATCH_FRAMES, as_patch_tensor


class LogMelStats:
    """Offline audio features: per-band mean and std over each patch's 96 frames (128-d)."""

    name = "logmel"
    dim = 2 * N_MELS
    in_channels = 1
    input_size = (PATCH_FRAMES, N_MELS)

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def config(self) -> dict[str, Any]:
        return {
            "spec": {"name": self.name},
            "modality": "audio",
            "dim": self.dim,
            "features": "per-band mean then std over the 96 frames of each patch",
            "log_mel": dict(LOG_MEL_CONFIG),
        }

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = as_patch_tensor(patches, self.device)
        std, mean = torch.std_mean(x, dim=1, correction=0)
        return torch.cat([mean, std], dim=1).float().cpu()


AUDIO_SPEC_KEYS = {"logmel": frozenset({"name"}), "vggish": VGGISH_SPEC_KEYS}  # name -> options


def build_audio_backbone(spec: dict[str, Any], device: torch.device):
    """`{name: logmel}` (offline) or `{name: vggish, ...}` (released weights, see vggish.py)."""
    if spec["name"] not in AUDIO_SPEC_KEYS:
        raise UserError(f"audio backbone {spec['name']!r}: unknown name "
                        f"(use {' or '.join(AUDIO_SPEC_KEYS)})")
    if spec["name"] == "logmel":
        if set(spec) != {"name"}:
            raise UserError(f"audio backbone 'logmel' takes no options, got {sorted(spec)}")
        return LogMelStats(device)
    return build_vggish(spec, device)

"""Pick the torch device from the user's `--device auto|cpu|cuda[:N]` choice."""

from __future__ import annotations

import torch

from extract.errors import UserError


def resolve_device(choice: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else CPU; asking for CUDA without one is a user error."""
    choice = choice.strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as exc:
        raise UserError(f"--device {choice!r}: not a device (use auto, cpu or cuda[:N])") from exc
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {choice!r}: only auto, cpu and cuda[:N] are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {choice}: no CUDA device is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {choice}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return device

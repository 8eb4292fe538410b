"""Weights files: checksums, safe loading, strict matching to an architecture.

A leaf shared by every backbone family (image CNNs, VGGish) and by anything that records which
weights made a feature: one sha256, one safe loader (`weights_only` or safetensors), one set of
mismatch messages.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from extract.errors import UserError


@lru_cache(maxsize=32)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file, cached per (path, mtime, size) so rebuilding a model is cheap."""
    stat = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict safely (`weights_only`, or safetensors); unwrap {'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is the file's fault, reported as one line
        raise UserError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return state


def load_weights_into(
    module: nn.Module,
    path: str | os.PathLike[str],
    ignorable_prefixes: Iterable[str] = (),
    assign: bool = False,
) -> None:
    """Load a weights file strictly; extra keys are tolerated only under a removed head.

    `assign=True` adopts the file's tensors, for modules built on the meta device (no init cost).
    """
    load_state_into(module, read_state_dict(path), path, ignorable_prefixes, assign)


def load_state_into(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str | os.PathLike[str],
    ignorable_prefixes: Iterable[str] = (),
    assign: bool = False,
) -> None:
    """The strict match of `load_weights_into` for a state dict already read (and perhaps
    renamed, as an MMAction2 checkpoint is); `source` names the file in the messages."""
    path = source
    expected = module.state_dict()
    prefixes = tuple(ignorable_prefixes)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.startswith(prefixes)]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if wrong:
        problems.append(f"wrong shapes {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
    if problems:
        raise UserError(
            f"{path}: does not match the {type(module).__name__} architecture: "
            + "; ".join(problems)
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=assign)

"""Continue a killed training run from its last saved epoch, bit for bit.

Why: a Flash-MNIST configuration or a large store trains for an hour or more, and a session
or a job can end at any moment. `last.pt` holds everything the next epoch depends on: model
and optimiser state, the history, the best epoch so far, the optimiser steps and torch's
random state (dropout). Batches are drawn from a seed derived from the epoch number, so the
resumed run makes exactly the updates the uninterrupted one would have made.

The file is written atomically beside best.pt (pipeline/train/checkpoint.py) and read with
weights_only=True; one written by other settings is refused rather than continued.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from extract.errors import UserError
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from pipeline.train.config import TrainConfig

LAST_NAME = "last.pt"
# Settings that change how a run looks, not what it computes.
PRESENTATION_KEYS = ("progress", "device", "num_workers", "streaming", "memory_budget_gb")


def resumable_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings a continued run must share with the one that wrote last.pt."""
    values = dataclasses.asdict(config)
    return {k: v for k, v in values.items() if k not in PRESENTATION_KEYS}


@dataclass
class SavedProgress:
    """What `load_progress` returns: the epoch to continue after and the loop's state."""

    epoch: int
    steps: int
    history: list[dict[str, Any]]
    best: dict[str, Any]  # epoch, value, loss of the best epoch so far


def save_progress(out_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler | None, config: TrainConfig,
                  epoch: int, steps: int, history: list[dict[str, Any]],
                  best: dict[str, Any], model_config: dict[str, Any]) -> Path:
    """Write last.pt: the state after `epoch` finished."""
    return save_checkpoint(out_dir / LAST_NAME, {
        "model_config": model_config,
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": torch.get_rng_state(),
        "settings": resumable_settings(config),
        "epoch": epoch,
        "steps": steps,
        "history": history,
        "best": best,
        # load_checkpoint's required keys: this file is a checkpoint of the epoch too.
        "classes": [], "task": "", "modalities": {},
    })


def discard_other_progress(out_dir: Path, config: TrainConfig) -> bool:
    """Delete a last.pt written with other settings (True when one was deleted): for callers
    that own the folder and would rather start over than stop, such as the study's grid."""
    path = out_dir / LAST_NAME
    if not path.exists():
        return False
    try:
        same = load_checkpoint(path).get("settings") == resumable_settings(config)
    except UserError:  # unreadable: as good as absent
        same = False
    if not same:
        path.unlink()
    return not same


def load_progress(out_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                  config: TrainConfig) -> SavedProgress | None:
    """Restore the state last.pt holds into model, optimiser and scheduler (None: no file)."""
    path = out_dir / LAST_NAME
    if not path.exists():
        return None
    saved = load_checkpoint(path)
    if saved.get("settings") != resumable_settings(config):
        raise UserError(
            f"{path} was written by a run with other settings; delete it (or the folder) "
            "to start over"
        )
    model.load_state_dict(saved["state_dict"])
    optimizer_state = dict(saved["optimizer"])  # plain data has string keys; torch wants ids
    optimizer_state["state"] = {int(k): v for k, v in optimizer_state["state"].items()}
    optimizer.load_state_dict(optimizer_state)
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return SavedProgress(int(saved["epoch"]), int(saved["steps"]), list(saved["history"]),
                         dict(saved["best"]))

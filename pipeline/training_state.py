"""last.pt: what a killed training loop needs to continue bit for bit, for `train` (the
attention clusters, the Flash-MNIST grid) and `finetune` (TSN backbones) alike.

Why: a grid configuration or a fine-tuning run takes an hour or more on a CPU and a session
or a job can end at any moment. The file holds the model, optimiser and scheduler state,
torch's random state (dropout) and the loop's own progress (history, steps, best epoch); the
loops draw their batches from generators seeded by the epoch, so the continued run makes
exactly the updates the uninterrupted one would have made. The run's identity (its settings,
its base network) is stored with it: a file written by other settings is refused, never
continued. Written atomically, read with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from extract.errors import UserError
from pipeline.atomic import write_atomic

LAST_NAME = "last.pt"


def save_training_state(out_dir: Path, *, identity: dict[str, Any], model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                        progress: dict[str, Any]) -> Path:
    """Write out_dir/last.pt: the state after the epoch that `progress` describes."""
    payload = {
        "identity": identity,
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": torch.get_rng_state(),
        "progress": progress,
    }
    return write_atomic(out_dir / LAST_NAME, lambda stream: torch.save(payload, stream))


def _read(path: Path) -> dict[str, Any]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file is the user's to delete, said in one line
        raise UserError(f"{path}: unreadable ({type(exc).__name__}); delete it to start "
                        "over") from exc
    if not isinstance(saved, dict) or "identity" not in saved:
        raise UserError(f"{path} is not a saved training state; delete it to start over")
    return saved


def restore_training_state(out_dir: Path, *, identity: dict[str, Any], model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.LRScheduler | None
                           ) -> dict[str, Any] | None:
    """Load last.pt into model, optimiser, scheduler and torch's random state; its progress,
    or None when there is no file. Other settings: one-line refusal."""
    path = out_dir / LAST_NAME
    if not path.exists():
        return None
    saved = _read(path)
    if saved["identity"] != identity:
        raise UserError(f"{path} was written by a run with other settings; delete it (or the "
                        "folder, or give another --out) to start over")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return dict(saved["progress"])


def saved_progress(out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(identity, progress) of out_dir/last.pt; None when there is none or it is unreadable."""
    path = out_dir / LAST_NAME
    if not path.exists():
        return None
    try:
        saved = _read(path)
    except UserError:  # unreadable: as good as absent
        return None
    return saved["identity"], dict(saved.get("progress") or {})


def discard_other_state(out_dir: Path, identity: dict[str, Any]) -> bool:
    """Delete a last.pt written with other settings (True when one was deleted): for callers
    that own the folder and would rather start over than stop, such as the study's grid."""
    path = out_dir / LAST_NAME
    if not path.exists():
        return False
    saved = saved_progress(out_dir)
    same = saved is not None and saved[0] == identity
    if not same:
        path.unlink()
    return not same

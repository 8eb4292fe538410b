"""The TSN training loop over cached snippets, resumable from its last finished epoch.

Why resumable: fine-tuning on a CPU takes minutes per epoch and a session can end at any
moment. After every epoch `last.pt` holds the network, optimiser and scheduler state, the
history and torch's random state (dropout) (pipeline/training_state.py); snippets and crops
are drawn from a generator seeded by (seed, epoch), so a resumed run makes the updates the
uninterrupted one would have. A last.pt of other settings or another base network is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.finetune.augment import centre_view, resized, train_view
from pipeline.finetune.settings import FinetuneSettings
from pipeline.finetune.tsn import TSN
from pipeline.training_state import restore_training_state, save_training_state

Normalise = Callable[[torch.Tensor], torch.Tensor]  # uint8 NCHW -> float on the device


@dataclass
class Inputs:
    """What the loop reads: the cache, rows and labels of each part, how to feed the network."""

    data: Any  # zarr array (N, P, C, H, W) uint8
    train_rows: np.ndarray
    train_labels: np.ndarray
    val_rows: np.ndarray
    val_labels: np.ndarray
    normalise: Normalise
    train_size: tuple[int, int]  # (H, W) the network is trained at
    val_crop: tuple[int, int] | None  # the centre crop `features` takes (None: whole snippet)
    modality: str


def segment_choices(rng: np.random.Generator, positions: int, segments: int) -> list[int]:
    """One snippet index per segment: TSN's random position inside each of K equal parts."""
    bounds = np.linspace(0, positions, segments + 1)
    return [int(rng.integers(int(lo), max(int(lo) + 1, int(hi)))) for lo, hi in
            zip(bounds[:-1], bounds[1:], strict=True)]


def train_batch(inputs: Inputs, rows: Sequence[int], rng: np.random.Generator,
                segments: int, device: torch.device, flips: bool = True) -> torch.Tensor:
    """(B, K, C, H, W) augmented, normalised snippets of the videos `rows`."""
    views = []
    for row in rows:
        snippets = inputs.data[int(row)]
        for index in segment_choices(rng, len(snippets), segments):
            view = train_view(rng, snippets[index], inputs.modality, flips)
            normalised = inputs.normalise(torch.from_numpy(view)[None])
            views.append(resized(normalised, inputs.train_size))
    batch = torch.cat(views).to(device)
    return batch.view(len(rows), segments, *batch.shape[1:])


@torch.no_grad()
def predict(model: TSN, inputs: Inputs, device: torch.device) -> np.ndarray:
    """(N, classes) scores of the validation videos, every cached position averaged."""
    model.eval()
    scores = []
    for row in inputs.val_rows:
        snippets = np.stack([centre_view(s, inputs.val_crop) for s in inputs.data[int(row)]])
        batch = inputs.normalise(torch.from_numpy(np.ascontiguousarray(snippets)))
        scores.append(model(batch[None].to(device)).float().cpu().numpy()[0])
    return np.stack(scores) if scores else np.zeros((0, model.head.out_features))


def run_epochs(model: TSN, inputs: Inputs, settings: FinetuneSettings, out_dir: Path,
               identity: dict[str, Any], device: torch.device,
               evaluate: Callable[[np.ndarray, np.ndarray], dict[str, float]],
               progress: bool = True) -> list[dict[str, Any]]:
    """Train to `settings.epochs`, continuing last.pt; the per-epoch history (validation
    metrics from `evaluate(scores, labels)`, loss, seconds)."""
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(trainable, lr=settings.learning_rate,
                                momentum=settings.momentum, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, settings.decay_epoch, gamma=0.1)
    history: list[dict[str, Any]] = []
    if saved := restore_training_state(out_dir, identity=identity, model=model,
                                       optimizer=optimiser, scheduler=scheduler):
        history = list(saved["history"])
    for epoch in range(len(history) + 1, settings.epochs + 1):
        started = time.perf_counter()
        rng = np.random.default_rng([settings.seed, epoch])
        order = rng.permutation(len(inputs.train_rows))
        batches = [order[i : i + settings.batch_size]
                   for i in range(0, len(order), settings.batch_size)]
        model.train()
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="batch",
                   disable=not progress)
        for picked in bar:
            snippets = train_batch(inputs, inputs.train_rows[picked], rng, settings.segments,
                                   device, settings.flip)
            labels = torch.as_tensor(inputs.train_labels[picked], device=device)
            loss = F.cross_entropy(model(snippets), labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, settings.clip_grad)
            optimiser.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        scheduler.step()
        train_s = time.perf_counter() - started
        metrics = evaluate(predict(model, inputs, device), inputs.val_labels)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **metrics,
                        "train_s": train_s, "seconds": time.perf_counter() - started})
        if progress:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            tqdm.write(f"epoch {epoch}: loss {np.mean(losses):.3f}, validation {shown}")
        save_training_state(out_dir, identity=identity, model=model, optimizer=optimiser,
                            scheduler=scheduler, progress={"history": history})
    return history

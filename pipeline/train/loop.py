"""Train the Attention Clusters network on a feature store.

One call, `train(store, out_dir, config)`, writes into out_dir:
  best.pt         the checkpoint of the epoch with the best validation top-1 (single-label)
                  or GAP (multi-label); see pipeline/train/checkpoint.py
  metrics.json    one entry per epoch (train loss/accuracy, validation metrics), rewritten
                  after every epoch so a crashed run keeps its history
  curves.png      training curves (loss; accuracy or GAP)
  confusion.png   single-label only: the best epoch's validation confusion matrix
  per_class.csv   single-label only: the best epoch's per-class validation accuracy
Validation uses the split's test rows (UCF101/HMDB51 have no separate validation set).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from extract.device import resolve_device
from extract.errors import UserError
from model.network import AttentionClusterNet, loss_fn
from pipeline.atomic import write_json_atomic
from pipeline.store.format import Split
from pipeline.train.checkpoint import save_checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.data import SplitData, load_split
from pipeline.train.evaluate import predict, to_device
from pipeline.train.metrics import (
    confusion_matrix,
    headline_metric,
    task_metrics,
    write_per_class_csv,
)
from pipeline.train.plots import plot_confusion, plot_curves


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite: the weights are no longer usable."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"epoch {epoch}: loss {loss}")
        self.epoch, self.loss = epoch, loss


@dataclass
class TrainResult:
    """What a run produced: where, which epoch won, and its validation metrics."""

    out_dir: Path
    checkpoint: Path
    split: int
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    excluded: dict[str, dict[str, int]]
    streamed: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "checkpoint": str(self.checkpoint),
            "split": self.split,
            "best_epoch": self.best_epoch,
            "best": self.best_metrics,
            "excluded": self.excluded,
            "streamed": self.streamed,
            "seconds": round(self.seconds, 3),
        }


def build_model(data: SplitData, config: TrainConfig) -> AttentionClusterNet:
    """The network for the chosen modalities of this store."""
    return AttentionClusterNet(
        modalities={
            name: (data.store.modalities[name].dim, config.units_for(name))
            for name in data.modalities
        },
        num_classes=len(data.store.classes),
        unit=config.unit,
        shifting=config.shifting,
        dropout=config.dropout,
        head=config.head,
        task=data.store.task,
        hidden=config.hidden,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule, or None for a constant rate (the paper)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        milestones = sorted({max(1, config.epochs // 2), max(1, (3 * config.epochs) // 4)})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return None


def batch_hits(logits: torch.Tensor, labels: torch.Tensor, task: str) -> int:
    """Correct top-1 predictions: the label (single) or any positive (multi, Hit@1)."""
    top = logits.argmax(dim=1)
    if task == "single":
        return int((top == labels).sum())
    return int((labels.gather(1, top[:, None]) > 0).sum())


def train_epoch(
    model: AttentionClusterNet,
    data: SplitData,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
) -> tuple[float, float]:
    """One pass over the training rows; returns mean loss and top-1 (or Hit@1) accuracy."""
    model.train()
    criterion = loss_fn(data.store.task)
    loss_sum, hits, seen = 0.0, 0, 0
    bar = tqdm(
        total=len(data.train),
        desc=f"epoch {epoch}/{config.epochs}",
        unit="video",
        disable=not config.progress,
        leave=False,
    )
    for inputs, labels in data.train.batches(
        config.batch_size, shuffle=True, seed=config.seed * 1_000_003 + epoch
    ):
        labels = labels.to(device, non_blocking=True)
        logits, _ = model(to_device(inputs, device))
        loss = criterion(logits, labels)
        value = float(loss.detach())
        if not math.isfinite(value):  # stop before the weights become NaN
            raise TrainingDiverged(epoch, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += value * len(labels)
        hits += batch_hits(logits.detach(), labels, data.store.task)
        seen += len(labels)
        bar.update(len(labels))
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.3f}")
    bar.close()
    return loss_sum / max(seen, 1), hits / max(seen, 1)


def train(store: str | Path, out_dir: str | Path, config: TrainConfig) -> TrainResult:
    """Train on `store` (split `config.split`), validating every epoch; see module doc."""
    config.validate()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    data = load_split(
        store,
        split=config.split,
        modalities=config.modalities,
        memory_budget_gb=config.memory_budget_gb,
        streaming=config.streaming,
        num_workers=config.num_workers,
    )
    task, classes = data.store.task, data.store.classes
    if data.classes_present[Split.TRAIN] < 2:
        raise UserError(
            f"split {config.split} of {data.store.path} has training rows of "
            f"{data.classes_present[Split.TRAIN]} class only: a classifier needs at least two"
        )
    model = build_model(data, config).to(device)
    # fused: one kernel per step instead of ~10 passes over the wide head's weights.
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
    )
    scheduler = make_scheduler(optimizer, config)
    headline = headline_metric(task)
    history: list[dict[str, Any]] = []
    best_value, best_epoch, best_scores = -math.inf, 0, None
    checkpoint_path = out_dir / "best.pt"
    for epoch in range(1, config.epochs + 1):
        try:
            train_loss, train_accuracy = train_epoch(model, data, optimizer, config, device,
                                                     epoch)
        except TrainingDiverged as exc:
            checkpoint_path.unlink(missing_ok=True)  # a diverged run leaves no model to use
            raise UserError(
                f"training diverged in epoch {exc.epoch}: the loss became {exc.loss} (try a "
                f"lower --lr than {config.lr:g}); no checkpoint kept, the epochs before are in "
                f"{out_dir / 'metrics.json'}"
            ) from None
        scores, labels, val_loss = predict(
            model, data.test.batches(max(config.batch_size, 256)), device, task
        )
        val = {"loss": val_loss, **task_metrics(scores, labels, task)}
        history.append(
            {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "val": val,
            }
        )
        if scheduler is not None:
            scheduler.step()
        if val[headline] > best_value:
            best_value, best_epoch, best_scores = val[headline], epoch, (scores, labels)
            save_checkpoint(
                checkpoint_path,
                {
                    "model_config": model.config,
                    "state_dict": model.state_dict(),
                    "classes": classes,
                    "task": task,
                    "modalities": {
                        m: dict(data.store.modalities[m].config) for m in data.modalities
                    },
                    "feature_shapes": {
                        m: [data.store.modalities[m].positions, data.store.modalities[m].dim]
                        for m in data.modalities
                    },
                    "dataset": data.store.dataset,
                    "split": config.split,
                    "epoch": epoch,
                    "metrics": val,
                    "train_config": dataclasses.asdict(config),
                },
            )
        write_json_atomic(
            out_dir / "metrics.json",
            {
                "task": task,
                "split": config.split,
                "modalities": data.modalities,
                "best_epoch": best_epoch,
                "epochs": history,
            },
        )
        if config.progress:
            tqdm.write(
                f"epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.3f} | "
                f"val loss {val_loss:.4f} {headline} {val[headline]:.3f}"
            )
    plot_curves(out_dir / "curves.png", history, task)
    if task == "single" and best_scores is not None:
        scores, labels = best_scores
        plot_confusion(
            out_dir / "confusion.png", confusion_matrix(scores, labels, len(classes)), classes
        )
        write_per_class_csv(out_dir / "per_class.csv", scores, labels, classes)
    return TrainResult(
        out_dir=out_dir,
        checkpoint=checkpoint_path,
        split=config.split,
        best_epoch=best_epoch,
        best_metrics=history[best_epoch - 1]["val"],
        history=history,
        excluded={part: dataclasses.asdict(c) for part, c in data.counts.items()},
        streamed=data.streamed,
        seconds=time.perf_counter() - started,
    )

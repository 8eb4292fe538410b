"""Train the Attention Clusters network on a feature store.

One call, `train(store, out_dir, config)`, writes into out_dir:
  best.pt         the checkpoint of the epoch with the best validation top-1 (single-label)
                  or GAP (multi-label), ties going to the lower validation loss; see
                  pipeline/train/checkpoint.py
  last.pt         with resume=True only, while the run is unfinished: the state after the last
                  saved epoch, from which a rerun continues (pipeline/training_state.py)
  metrics.json    one entry per epoch (train loss/accuracy, optimiser steps so far,
                  validation metrics) and the total steps, rewritten with best.pt (after an
                  epoch that raised the headline metric, at least every SAVE_INTERVAL_S, after
                  the last epoch) so a crashed run keeps its history
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
from pipeline.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.train.config import TrainConfig, torch_threads
from pipeline.train.data import SplitData, load_split
from pipeline.train.evaluate import predict, to_device
from pipeline.train.metrics import (
    confusion_matrix,
    headline_metric,
    task_metrics,
    write_per_class_csv,
)
from pipeline.train.plots import plot_confusion, plot_curves
from pipeline.train.precision import denormals_flushed, forward_in
from pipeline.training_state import LAST_NAME, restore_training_state, save_training_state


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
    # Wall seconds of each epoch (training and test pass), beside the history, which stays
    # what the run learned (equal across machines and resumes); None for an epoch a last.pt
    # from before these were kept holds.
    epoch_seconds: list[float | None]
    excluded: dict[str, dict[str, int]]
    streamed: bool
    seconds: float
    epochs: int  # planned: TrainConfig.epochs_for the training rows
    steps: int  # optimiser steps made

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
            "epochs": self.epochs,
            "steps": self.steps,
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
    optimizer: torch.optim.Optimizer, config: TrainConfig, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule over `epochs`, or None for a constant rate (the paper)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if config.schedule == "step":
        milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
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
) -> tuple[float, float, int]:
    """One pass over the training rows; returns mean loss, top-1 (or Hit@1) accuracy and the
    number of optimiser steps made."""
    model.train()
    criterion = loss_fn(data.store.task)
    loss_sum, hits, seen, steps = 0.0, 0, 0, 0
    bar = tqdm(
        total=len(data.train),
        desc=f"epoch {epoch}/{config.epochs_for(len(data.train))}",
        unit="video",
        disable=not config.progress,
        leave=False,
    )
    for inputs, labels in data.train.batches(
        config.batch_size, shuffle=True, seed=config.seed * 1_000_003 + epoch
    ):
        labels = labels.to(device, non_blocking=True)
        logits, _ = forward_in(model, to_device(inputs, device), config.precision, device)
        loss = criterion(logits.float(), labels)
        value = float(loss.detach())
        if not math.isfinite(value):  # stop before the weights become NaN
            raise TrainingDiverged(epoch, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        loss_sum += value * len(labels)
        hits += batch_hits(logits.detach(), labels, data.store.task)
        seen += len(labels)
        bar.update(len(labels))
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.3f}")
    bar.close()
    return loss_sum / max(seen, 1), hits / max(seen, 1), steps


# At most this many "epoch N: ..." lines: a small set may run hundreds of one-step epochs.
MAX_EPOCH_LINES = 60
# best.pt and metrics.json are written at most this often (and after the last epoch, and at
# once when the headline metric rises): a small set runs hundreds of one-step epochs that
# nearly all lower the loss, and writing a large model and the growing history after each
# would cost more than the training.
SAVE_INTERVAL_S = 30.0


@dataclass
class BestEpoch:
    """The best epoch so far and its checkpoint: the highest headline metric, ties going to the
    lower validation loss. On a small set top-1 saturates within a few epochs while the
    probabilities are still near uniform; the first epoch at that top-1 is the least trained."""

    path: Path
    epoch: int = 0
    value: float = -math.inf
    loss: float = math.inf
    scores: tuple[Any, Any] | None = None
    pending: dict[str, Any] | None = None  # the checkpoint not yet written
    raised: bool = False  # the pending one raised the headline metric: write it now

    def improves(self, value: float, loss: float) -> bool:
        return value > self.value or (value == self.value and loss < self.loss)

    def keep(self, epoch: int, value: float, loss: float, scores: tuple[Any, Any],
             payload: dict[str, Any]) -> None:
        self.raised = self.raised or value > self.value
        self.epoch, self.value, self.loss, self.scores = epoch, value, loss, scores
        self.pending = payload

    def save(self) -> None:
        if self.pending is not None:
            save_checkpoint(self.path, self.pending)
        self.pending, self.raised = None, False


def budget_line(config: TrainConfig, train_rows: int, epochs: int) -> str:
    """How long the run will train, and why when the data decided it."""
    steps_per_epoch = config.steps_per_epoch(train_rows)
    line = (f"training on {train_rows} videos: {epochs} epochs x {steps_per_epoch} "
            f"optimiser steps (batch {config.batch_size}) = {epochs * steps_per_epoch} steps")
    if config.epochs is None and epochs > config.min_epochs:
        line += (f" (epochs not set: raised from min_epochs {config.min_epochs} to reach "
                 f"min_steps {config.min_steps} on this small set)")
    return line


def best_epoch_scores(path: Path, data: SplitData, config: TrainConfig, device: torch.device
                      ) -> tuple[Any, Any]:
    """Validation scores and labels of the model in best.pt (a resumed run did not keep them
    in memory)."""
    model = model_from_checkpoint(load_checkpoint(path), device)
    scores, labels, _ = predict(model, data.test.batches(max(config.batch_size, 256)), device,
                                data.store.task)
    return scores, labels


@torch_threads()  # AC_TORCH_THREADS, else one thread: holds up on a shared machine
@denormals_flushed()
def train(store: str | Path, out_dir: str | Path, config: TrainConfig,
          resume: bool = False, stop_by: float | None = None) -> TrainResult:
    """Train on `store` (split `config.split`), validating every epoch; see module doc.

    resume: keep last.pt while training and, when out_dir already holds one written with
    the same settings, continue after its epoch instead of starting over.
    stop_by: a time.time() by which to stop: after any epoch that leaves less than another
    epoch's time, everything is saved as after the last one (history then holds fewer than
    the planned epochs; with resume, last.pt stays for a later run to continue)."""
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
    epochs = config.epochs_for(len(data.train))
    scheduler = make_scheduler(optimizer, config, epochs)
    headline = headline_metric(task)
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float | None] = []
    best = BestEpoch(out_dir / "best.pt")
    steps, written_at, first_epoch = 0, time.monotonic(), 1
    saved = restore_training_state(
        out_dir, identity=config.resumable_settings(), model=model, optimizer=optimizer,
        scheduler=scheduler) if resume else None
    if saved is not None:
        history, steps, first_epoch = saved["history"], saved["steps"], saved["epoch"] + 1
        timed = saved.get("epoch_seconds")  # absent in a last.pt from before they were kept
        epoch_seconds = (list(timed) if isinstance(timed, list) and len(timed) == len(history)
                         else [None] * len(history))
        best.epoch, best.value, best.loss = (saved["best"]["epoch"], saved["best"]["value"],
                                             saved["best"]["loss"])
        if config.progress:
            tqdm.write(f"resuming {out_dir} after epoch {saved['epoch']} ({steps} steps)")

    def write_history(best_epoch: int, steps: int) -> None:
        write_json_atomic(out_dir / "metrics.json", {
            "task": task, "split": config.split, "modalities": data.modalities,
            "best_epoch": best_epoch, "planned_epochs": epochs, "steps": steps,
            "epochs": history, "epoch_seconds": epoch_seconds,
        })

    if config.progress:
        tqdm.write(budget_line(config, len(data.train), epochs))
    for epoch in range(first_epoch, epochs + 1):
        epoch_started = time.time()
        try:
            train_loss, train_accuracy, made = train_epoch(model, data, optimizer, config,
                                                           device, epoch)
        except TrainingDiverged as exc:
            best.path.unlink(missing_ok=True)  # a diverged run leaves no model to use
            write_history(0, steps)
            raise UserError(
                f"training diverged in epoch {exc.epoch}: the loss became {exc.loss} (try a "
                f"lower --lr than {config.lr:g}); no checkpoint kept, the epochs before are in "
                f"{out_dir / 'metrics.json'}"
            ) from None
        steps += made
        scores, labels, val_loss = predict(
            model, data.test.batches(max(config.batch_size, 256)), device, task
        )
        val = {"loss": val_loss, **task_metrics(scores, labels, task)}
        history.append(
            {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "steps": steps,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "val": val,
            }
        )
        if scheduler is not None:
            scheduler.step()
        if best.improves(val[headline], val_loss):
            best.keep(epoch, val[headline], val_loss, (scores, labels), {
                "model_config": model.config,
                "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in
                               model.state_dict().items()},
                "classes": classes,
                "task": task,
                "modalities": {m: dict(data.store.modalities[m].config) for m in data.modalities},
                "feature_shapes": {
                    m: [data.store.modalities[m].positions, data.store.modalities[m].dim]
                    for m in data.modalities
                },
                "dataset": data.store.dataset,
                "split": config.split,
                "epoch": epoch,
                "steps": steps,
                "metrics": val,
                "train_config": dataclasses.asdict(config),
            })
        now = time.time()
        epoch_seconds.append(round(now - epoch_started, 3))
        stopping = stop_by is not None and now + (now - epoch_started) > stop_by
        if (best.raised or epoch == epochs or stopping
                or time.monotonic() - written_at >= SAVE_INTERVAL_S):
            best.save()
            write_history(best.epoch, steps)
            if resume:
                save_training_state(
                    out_dir, identity=config.resumable_settings(), model=model,
                    optimizer=optimizer, scheduler=scheduler, progress={
                        "epoch": epoch, "steps": steps, "history": history,
                        "epoch_seconds": epoch_seconds,
                        "best": {"epoch": best.epoch, "value": best.value, "loss": best.loss}})
            written_at = time.monotonic()
        if config.progress and (epoch % math.ceil(epochs / MAX_EPOCH_LINES) == 0
                                or epoch == epochs or stopping):
            tqdm.write(
                f"epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.3f} | "
                f"val loss {val_loss:.4f} {headline} {val[headline]:.3f} | {steps} steps"
            )
        if stopping and epoch < epochs:
            if config.progress:
                tqdm.write(f"stopping after epoch {epoch} of {epochs}: another would end "
                           "after the time given")
            break
    if resume and len(history) == epochs:  # finished: best.pt and metrics.json remain
        (out_dir / LAST_NAME).unlink(missing_ok=True)
    plot_curves(out_dir / "curves.png", history, task)
    if task == "single" and best.epoch > 0:
        scores, labels = best.scores or best_epoch_scores(best.path, data, config, device)
        plot_confusion(
            out_dir / "confusion.png", confusion_matrix(scores, labels, len(classes)), classes
        )
        write_per_class_csv(out_dir / "per_class.csv", scores, labels, classes)
    return TrainResult(
        out_dir=out_dir,
        checkpoint=best.path,
        split=config.split,
        best_epoch=best.epoch,
        best_metrics=history[best.epoch - 1]["val"],
        history=history,
        epoch_seconds=epoch_seconds,
        excluded={part: dataclasses.asdict(c) for part, c in data.counts.items()},
        streamed=data.streamed,
        seconds=time.perf_counter() - started,
        epochs=epochs,
        steps=steps,
    )

"""Evaluate a checkpoint on a store's test rows; average over the official splits.

UCF101 and HMDB51 report the mean over their three splits, each split with its own model.
`evaluate_splits` takes one checkpoint per split (each records the split it was trained on),
evaluates each on its own split's test rows and returns per-split and mean metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.device import resolve_device
from extract.errors import UserError
from model.network import AttentionClusterNet, loss_fn, probabilities
from pipeline.store.feature_store import FeatureStore
from pipeline.store.format import Split
from pipeline.train.checkpoint import (
    extraction_difference,
    load_checkpoint,
    model_from_checkpoint,
)
from pipeline.train.data import Batch, check_split, load_part, open_for_training
from pipeline.train.metrics import task_metrics, write_per_class_csv


def to_device(inputs: dict, device: torch.device) -> dict:
    """Move a batch to the device; float16 features become float32 there (half the copy)."""
    return {
        name: (
            features.to(device, non_blocking=True).float(),
            mask.to(device, non_blocking=True),
            present.to(device, non_blocking=True),
        )
        for name, (features, mask, present) in inputs.items()
    }


@torch.inference_mode()
def predict(
    model: AttentionClusterNet, batches: Iterable[Batch], device: torch.device, task: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities (V, C), labels and the mean loss over all batches (eval mode)."""
    model.eval()
    criterion = loss_fn(task)
    scores, labels, loss_sum, count = [], [], 0.0, 0
    for inputs, target in batches:
        logits, _ = model(to_device(inputs, device))
        target = target.to(device)
        loss_sum += float(criterion(logits, target)) * len(target)
        count += len(target)
        scores.append(probabilities(logits, task).float().cpu().numpy())
        labels.append(target.cpu().numpy())
    return np.concatenate(scores), np.concatenate(labels), loss_sum / max(count, 1)


def check_compatible(checkpoint: dict[str, Any], store: FeatureStore, source: str) -> list[str]:
    """The checkpoint's modalities, after checking the store can feed this model: same task,
    classes, modalities and widths, and features extracted the same way."""
    if checkpoint["task"] != store.task:
        raise UserError(
            f"{source} was trained for a {checkpoint['task']}-label task; {store.path} is "
            f"{store.task}-label"
        )
    if list(checkpoint["classes"]) != store.classes:
        raise UserError(
            f"{source} has {len(checkpoint['classes'])} classes that differ from the "
            f"{len(store.classes)} classes of {store.path} (trained on another dataset?)"
        )
    modalities = list(checkpoint["model_config"]["modalities"])
    for name in modalities:
        width = checkpoint["model_config"]["modalities"][name][0]
        if name not in store.modalities:
            known = ", ".join(store.modalities) or "none"
            raise UserError(
                f"{source} needs modality '{name}', which {store.path} lacks (it has: {known})"
            )
        if store.modalities[name].dim != width:
            raise UserError(
                f"{source} expects {name} features of width {width}; {store.path} has "
                f"{store.modalities[name].dim} (extracted with another backbone?)"
            )
    difference = extraction_difference(
        checkpoint, {name: store.modalities[name].config for name in modalities}, source)
    if difference:
        raise UserError(
            f"{source} was trained on features extracted differently from those in "
            f"{store.path}: {difference} (checkpoint vs store); extract the store with the "
            "checkpoint's profile or retrain on this store"
        )
    return modalities


def evaluate(
    checkpoint: str | Path,
    store: str | Path,
    split: int | None = None,
    device: str = "auto",
    batch_size: int = 256,
    per_class_csv: str | Path | None = None,
    memory_budget_gb: float | None = None,
    streaming: str = "auto",
) -> dict[str, Any]:
    """Metrics of a checkpoint on the test rows of `split` (default: the split it trained on).

    Returns top1, top5, mean_class_accuracy, n (single-label) or map, gap, hit1, perr, n
    (multi-label), plus split, checkpoint, store and the number of excluded test rows.
    """
    content = load_checkpoint(checkpoint)
    split = int(content.get("split", 1)) if split is None else int(split)
    opened = open_for_training(store)
    modalities = check_compatible(content, opened, str(checkpoint))
    check_split(opened, split)
    _, source, counts = load_part(
        opened, split, modalities, Split.TEST, memory_budget_gb=memory_budget_gb,
        streaming=streaming,
    )
    torch_device = resolve_device(device)
    model = model_from_checkpoint(content, torch_device)
    scores, labels, loss = predict(model, source.batches(batch_size), torch_device, content["task"])
    metrics: dict[str, Any] = task_metrics(scores, labels, content["task"])
    if per_class_csv is not None and content["task"] == "single":
        write_per_class_csv(Path(per_class_csv), scores, labels, content["classes"])
    metrics.update(
        {
            "loss": loss,
            "split": split,
            "checkpoint": str(checkpoint),
            "store": str(store),
            "excluded": counts.pending + counts.failed + counts.all_absent + counts.unlabelled,
        }
    )
    return metrics


def evaluate_splits(
    checkpoints: Sequence[str | Path], store: str | Path, device: str = "auto"
) -> dict[str, Any]:
    """Each checkpoint on the split it was trained on; per-split metrics and their mean.

    The mean of each metric is unweighted over splits (the UCF101/HMDB51 convention); `n` is
    the total number of test videos.
    """
    if not checkpoints:
        raise UserError("give one checkpoint per split to average over splits")
    results: dict[str, dict[str, Any]] = {}
    for checkpoint in checkpoints:
        split = int(load_checkpoint(checkpoint).get("split", 1))
        if str(split) in results:
            raise UserError(
                f"{checkpoint} and {results[str(split)]['checkpoint']} were both trained on "
                f"split {split}; give one checkpoint per split"
            )
        results[str(split)] = evaluate(checkpoint, store, split=split, device=device)
    keys = [k for k, v in next(iter(results.values())).items() if isinstance(v, float)]
    mean = {key: float(np.mean([r[key] for r in results.values()])) for key in keys}
    mean["n"] = int(sum(r["n"] for r in results.values()))
    return {"splits": dict(sorted(results.items())), "mean": mean}

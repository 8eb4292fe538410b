"""Classification metrics: single-label accuracies and the YouTube-8M multi-label metrics.

Inputs are numpy arrays: `scores` (V, C) class scores (probabilities or logits), `labels` (V,)
class ids for single-label or (V, C) 0/1 for multi-label. The multi-label metrics follow the
YouTube-8M starter code (eval_util.py, average_precision_calculator.py); where that code breaks
ties at random, ties here are broken by a stable sort (first video/class first) so results
are reproducible.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of videos whose label is among the k highest scores (k capped at C)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def per_class_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class over its own videos; NaN for a class with no video."""
    predicted = scores.argmax(axis=1)
    totals = np.bincount(labels, minlength=num_classes).astype(float)
    hits = np.bincount(labels[predicted == labels], minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / totals, np.nan)


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (true class, predicted class)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, scores.argmax(axis=1)), 1)
    return matrix


def single_label_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1, top5, mean_class_accuracy (mean over classes that have test videos), n."""
    per_class = per_class_accuracy(scores, labels, scores.shape[1])
    return {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "mean_class_accuracy": float(np.nanmean(per_class)),
        "n": int(len(labels)),
    }


def write_per_class_csv(
    path: Path, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> None:
    """One row per class: index, name, number of test videos, top-1 accuracy (blank if none)."""
    per_class = per_class_accuracy(scores, labels, len(class_names))
    counts = np.bincount(labels, minlength=len(class_names))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class_index", "class_name", "videos", "accuracy"])
        for index, name in enumerate(class_names):
            accuracy = "" if np.isnan(per_class[index]) else f"{per_class[index]:.6f}"
            writer.writerow([index, name, int(counts[index]), accuracy])


def average_precision(
    scores: np.ndarray, positives: np.ndarray, num_positives: int | None = None
) -> float:
    """Non-interpolated AP of a ranked list: sum of precision at each hit / num_positives.

    `num_positives` defaults to the positives in the list; GAP passes the total over all
    videos, including positives that fell outside the pooled top-k predictions.
    """
    positives = np.asarray(positives, dtype=bool)
    total = int(positives.sum()) if num_positives is None else int(num_positives)
    if total <= 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked = positives[order]
    hits = np.cumsum(ranked)
    precision_at_hits = hits[ranked] / (np.flatnonzero(ranked) + 1)
    return float(precision_at_hits.sum() / total)


def mean_average_precision(
    scores: np.ndarray, labels: np.ndarray, skip_empty_classes: bool = True
) -> float:
    """Mean over classes of AP over all videos (MeanAveragePrecisionCalculator).

    Classes with no positive video are skipped, as the starter code's
    `filter_empty_classes=True`; with `skip_empty_classes=False` they count as AP 0 (the
    original 2017 release divided by the number of classes).
    """
    labels = labels.astype(bool)
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    if skip_empty_classes:
        aps = [ap for ap, has in zip(aps, labels.any(axis=0), strict=True) if has]
    return float(np.mean(aps)) if aps else 0.0


def global_average_precision(scores: np.ndarray, labels: np.ndarray, top_k: int = 20) -> float:
    """GAP@k: each video's top-k predictions pooled, ranked globally, AP over the pool
    normalised by the total number of positive labels."""
    labels = labels.astype(bool)
    k = min(top_k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    pooled_scores = np.take_along_axis(scores, top, axis=1).ravel()
    pooled_positives = np.take_along_axis(labels, top, axis=1).ravel()
    return average_precision(pooled_scores, pooled_positives, int(labels.sum()))


def hit_at_one(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of videos whose highest-scoring class is a positive."""
    top = scores.argmax(axis=1)
    return float(np.mean(labels[np.arange(len(labels)), top] > 0))


def precision_at_equal_recall_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """PERR: per video, precision of its top-m predictions where m = its number of labels;
    averaged over all videos (a video with no label contributes 0, as in the starter code).

    The starter code counts a top prediction only when its score is > 0 (it expects
    probabilities); that rule is kept so the numbers match.
    """
    total = 0.0
    for row_scores, row_labels in zip(scores, labels.astype(bool), strict=True):
        count = int(row_labels.sum())
        if count == 0:
            continue
        top = np.argsort(-row_scores, kind="stable")[:count]
        total += float(np.sum(row_labels[top] & (row_scores[top] > 0))) / count
    return total / len(scores)


def multi_label_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """map, gap (GAP@20), hit1, perr, n."""
    return {
        "map": mean_average_precision(scores, labels),
        "gap": global_average_precision(scores, labels, top_k=20),
        "hit1": hit_at_one(scores, labels),
        "perr": precision_at_equal_recall_rate(scores, labels),
        "n": int(len(labels)),
    }


def task_metrics(scores: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """The metric set of a task ('single' or 'multi')."""
    if task == "single":
        return single_label_metrics(scores, labels)
    return multi_label_metrics(scores, labels)


def headline_metric(task: str) -> str:
    """The metric that picks the best checkpoint: top-1 (single) or GAP (multi)."""
    return "top1" if task == "single" else "gap"

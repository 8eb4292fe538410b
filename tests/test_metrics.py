"""Metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pipeline.train.metrics import (
    average_precision,
    confusion_matrix,
    global_average_precision,
    hit_at_one,
    mean_average_precision,
    multi_label_metrics,
    per_class_accuracy,
    precision_at_equal_recall_rate,
    single_label_metrics,
    top_k_accuracy,
    write_per_class_csv,
)

# Six classes, four videos; labels 0, 1, 1, 5.
SCORES = np.array(
    [
        [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],  # label 0: rank 1
        [0.30, 0.20, 0.10, 0.15, 0.15, 0.10],  # label 1: rank 2
        [0.05, 0.00, 0.30, 0.25, 0.20, 0.15],  # label 1: rank 6 (last)
        [0.10, 0.20, 0.30, 0.40, 0.50, 0.45],  # label 5: rank 2
    ]
)
LABELS = np.array([0, 1, 1, 5])


def test_single_label_hand_computed() -> None:
    assert top_k_accuracy(SCORES, LABELS, 1) == 0.25
    assert top_k_accuracy(SCORES, LABELS, 2) == 0.75
    assert top_k_accuracy(SCORES, LABELS, 5) == 0.75
    assert top_k_accuracy(SCORES, LABELS, 10) == 1.0  # k capped at the number of classes
    per_class = per_class_accuracy(SCORES, LABELS, 6)
    np.testing.assert_array_equal(per_class[[0, 1, 5]], [1.0, 0.0, 0.0])
    assert np.isnan(per_class[2:5]).all()
    metrics = single_label_metrics(SCORES, LABELS)
    assert metrics == {"top1": 0.25, "top5": 0.75, "mean_class_accuracy": 1 / 3, "n": 4}
    matrix = confusion_matrix(SCORES, LABELS, 6)
    assert matrix.sum() == 4
    assert matrix[0, 0] == 1 and matrix[1, 0] == 1 and matrix[1, 2] == 1 and matrix[5, 4] == 1


def test_per_class_csv(tmp_path: Path) -> None:
    path = tmp_path / "per_class.csv"
    write_per_class_csv(path, SCORES, LABELS, ["a", "b", "c", "d", "e", "f"])
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class_name"] for row in rows] == ["a", "b", "c", "d", "e", "f"]
    assert [row["videos"] for row in rows] == ["1", "2", "0", "0", "0", "1"]
    assert rows[0]["accuracy"] == "1.000000" and rows[1]["accuracy"] == "0.000000"
    assert rows[2]["accuracy"] == ""


# Two videos, three classes.
MULTI_SCORES = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]])
MULTI_LABELS = np.array([[1, 0, 1], [0, 1, 0]])


def test_multi_label_hand_computed() -> None:
    # Pool of top-2: 0.9 hit, 0.8 miss, 0.7 hit, 0.5 miss; 3 positives in total.
    assert global_average_precision(MULTI_SCORES, MULTI_LABELS, top_k=2) == pytest.approx(
        (1 / 1 + 2 / 3) / 3
    )
    assert hit_at_one(MULTI_SCORES, MULTI_LABELS) == 0.5
    # Video 0: 2 labels, top-2 = classes 0, 1 -> 1/2; video 1: top-1 = class 0 -> 0.
    assert precision_at_equal_recall_rate(MULTI_SCORES, MULTI_LABELS) == 0.25
    # Per-class AP: 1, 1, 1/2.
    assert mean_average_precision(MULTI_SCORES, MULTI_LABELS) == pytest.approx(2.5 / 3)
    metrics = multi_label_metrics(MULTI_SCORES, MULTI_LABELS)
    assert metrics["n"] == 2 and metrics["hit1"] == 0.5
    # top-20 covers all classes: hits at ranks 1, 3, 6 of all six (video, class) pairs.
    assert metrics["gap"] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)


def test_empty_class_and_unlabelled_video_rules() -> None:
    labels = np.array([[1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.2, 0.9, 0.1], [0.3, 0.1, 0.8]])
    # Class 0: ranked 0.3 miss, 0.2 hit -> 1/2; classes 1, 2 have no positive.
    assert mean_average_precision(scores, labels) == 0.5
    assert mean_average_precision(scores, labels, skip_empty_classes=False) == pytest.approx(
        0.5 / 3
    )
    # The unlabelled video counts as 0 in the mean: video 0 top-1 is class 1 -> 0 as well.
    assert precision_at_equal_recall_rate(scores, labels) == 0.0
    assert precision_at_equal_recall_rate(np.array([[0.9, 0.1]]), np.array([[1, 0]])) == 1.0
    assert average_precision(np.array([0.3, 0.2]), np.array([0, 0])) == 0.0


def test_average_precision_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((200, 12))
    labels = rng.random((200, 12)) < 0.15
    labels[:, 3] = False  # an empty class
    for c in range(12):
        if labels[:, c].any():
            assert average_precision(scores[:, c], labels[:, c]) == pytest.approx(
                average_precision_score(labels[:, c], scores[:, c])
            )
    expected = np.mean(
        [average_precision_score(labels[:, c], scores[:, c]) for c in range(12) if c != 3]
    )
    assert mean_average_precision(scores, labels) == pytest.approx(expected)
    # With k >= C the GAP pool is every pair: plain AP over the flattened arrays.
    assert global_average_precision(scores, labels, top_k=12) == pytest.approx(
        average_precision_score(labels.ravel(), scores.ravel())
    )
    # With a smaller k, positives outside the pool still count in the denominator.
    assert global_average_precision(scores, labels, top_k=2) < global_average_precision(
        scores, labels, top_k=12
    )

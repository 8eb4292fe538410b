"""Accuracy on the toy set's factors (colour, motion, sound), read off class predictions.

Why: a toy class is colour x motion direction x sound, and one modality sees one factor, so
class top-1 of flow alone is capped near 1/6 whatever the network; whether a flow network got
better shows in how often its predicted class has the right motion direction (and RGB's the
right colour). Only datasets whose class names all parse as toy classes get these numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.datasets.generated.toy import factors_of

FACTORS = ("appearance", "motion", "sound")


def toy_factors(classes: Sequence[str]) -> list[tuple[str, str, str]] | None:
    """Each class's (appearance, motion, sound), or None when these are not toy classes."""
    try:
        return [factors_of(name) for name in classes]
    except KeyError:
        return None


def factor_accuracy(scores: np.ndarray, labels: np.ndarray,
                    classes: Sequence[str]) -> dict[str, float]:
    """{'<factor>_acc': share of videos whose top class has the true factor}; {} if not toy."""
    factors = toy_factors(classes)
    if factors is None or len(labels) == 0:
        return {}
    predicted = np.asarray(scores).argmax(axis=1)
    table = np.array(factors)
    return {f"{name}_acc": float(np.mean(table[predicted, i] == table[labels, i]))
            for i, name in enumerate(FACTORS)}


def checkpoint_factor_accuracy(checkpoint: str | Path, store: str | Path) -> dict[str, float]:
    """Class top-1 and factor accuracies of an attention-cluster checkpoint on its test split
    (the predictions `cli.py evaluate` scores), for docs/toy-results.md."""
    from extract.device import resolve_device
    from pipeline.store.format import Split
    from pipeline.train.checkpoint import load_checkpoint, model_from_checkpoint
    from pipeline.train.data import load_part, open_for_training
    from pipeline.train.evaluate import check_compatible, predict

    content = load_checkpoint(checkpoint)
    opened = open_for_training(store)
    modalities = check_compatible(content, opened, str(checkpoint))
    _, source, _ = load_part(opened, int(content.get("split", 1)), modalities, Split.TEST)
    device = resolve_device("cpu")
    model = model_from_checkpoint(content, device)
    scores, labels, _ = predict(model, source.batches(256), device, content["task"])
    top1 = float(np.mean(np.asarray(scores).argmax(axis=1) == labels))
    return {"top1": top1, "n": int(len(labels)),
            **factor_accuracy(scores, labels, content["classes"])}

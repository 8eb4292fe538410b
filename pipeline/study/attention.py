"""Where a trained grid model's attention goes on the Flash-MNIST test videos.

Store row `n_train + i` is test video i of `flash-mnist.zarr` (pipeline/study/flash_features.py),
whose `frame_digit` says which frames hold a digit; the features are read through the one
feature-store reader, `open_store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from model.network import AttentionClusterNet
from pipeline.datasets.generated.flash_mnist import NOISE
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from pipeline.study.flash_features import MODALITY, split_sizes
from pipeline.train.evaluate import to_device

BATCH = 1024  # test videos per forward pass


def pick_attention_run(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The model whose attention the figure shows: the most accurate attention cluster (fewer
    units first on a tie; even 128 rows of one unit each read well at the figure's height)."""
    attentive = [r for r in results if r["unit"] != "avg"]
    return max(attentive, key=lambda r: (r["top1"], r["shifting"], -r["units"]))


def untrained_like(model: AttentionClusterNet, seed: int) -> AttentionClusterNet:
    """The same architecture freshly initialised: how much attention digit frames get before
    any training (the LeNet features alone make digit frames stand out)."""
    torch.manual_seed(seed)
    return AttentionClusterNet.from_config(model.config)


@torch.inference_mode()
def test_attention(model: AttentionClusterNet, store: Path, dataset: Path,
                   device: torch.device) -> dict[str, np.ndarray]:
    """Attention (V, N, 25), predictions and frame digits of every Flash-MNIST test video."""
    model.to(device).eval()
    flash = zarr.open_group(str(dataset), mode="r")
    n_train, n_test = split_sizes(flash)
    features = open_store(store)
    attention, predicted = [], []
    for start in range(0, n_test, BATCH):
        stop = min(start + BATCH, n_test)
        rows = slice(n_train + start, n_train + stop)
        block, mask, status = features.read(MODALITY, rows, fields=("features", "mask", "status"))
        inputs = {MODALITY: (torch.from_numpy(block), torch.from_numpy(mask.astype(bool)),
                             torch.from_numpy(status == Status.DONE))}
        logits, weights = model(to_device(inputs, device))
        attention.append(weights[MODALITY].float().cpu().numpy())
        predicted.append(logits.argmax(1).cpu().numpy())
    return {
        "attention": np.concatenate(attention),
        "predicted": np.concatenate(predicted),
        "label": flash["test/label"][:],
        "frame_digit": flash["test/frame_digit"][:],
    }


def feature_norms(features: np.ndarray, frame_digit: np.ndarray) -> dict[str, float]:
    """Mean L2 norm of the test videos' LeNet features on digit frames and on noise frames."""
    norms = np.linalg.norm(features.astype(np.float32), axis=-1)
    is_digit = frame_digit != NOISE
    return {"digit": float(norms[is_digit].mean()), "noise": float(norms[~is_digit].mean())}


def attention_mass(attention: np.ndarray, frame_digit: np.ndarray) -> dict[str, float]:
    """Share of frames that hold a digit vs share of attention they get (mean over units and
    over test videos that show at least one digit)."""
    is_digit = frame_digit != NOISE
    shown = is_digit.any(axis=1)
    per_frame = attention.mean(axis=1)  # (V, L): the cluster's mean attention per frame
    mass = (per_frame * is_digit).sum(axis=1)[shown]
    unit_mass = (attention * is_digit[:, None, :]).sum(axis=2)[shown]  # (V', N)
    return {
        "digit_frame_share": float(is_digit[shown].mean()),
        "digit_attention_mass": float(mass.mean()),
        "units_with_majority_on_digits": float((unit_mass.mean(axis=0) > 0.5).mean()),
        "videos": int(shown.sum()),
    }

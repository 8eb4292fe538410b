"""Run (or resume) the paper's Flash-MNIST study: the cluster-size / unit / shifting grid.

    python cli.py reproduce                      # the reduced schedule sized for a 2-core CPU
    python cli.py reproduce --full --device cuda # the paper's schedule (100/10 videos per
                                                 # class, 100 epochs), for a GPU

Steps, each skipped when its output already exists for the same settings, so an interrupted
run continues where it stopped: generate Flash-MNIST (pipeline/datasets/generated/
flash_mnist.py), pre-train the LeNet (pipeline/study/lenet.py), write the 50-d frame features
as a normal store (pipeline/study/flash_features.py), train every grid configuration with the
normal training code (one result JSON each), then measure where the attention goes
(pipeline/study/attention.py) and write docs/reproduction.md, docs/reproduction.json
(pipeline/study/report.py) and docs/figures/flash_mnist_attention.png
(pipeline/study/figure.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import zarr

from extract.device import resolve_device
from pipeline.atomic import write_json_atomic
from pipeline.datasets.generated.digits import load_digit_pools
from pipeline.datasets.generated.flash_mnist import STORE_NAME, generate_flash_mnist
from pipeline.store.feature_store import open_store
from pipeline.study.attention import (
    attention_mass,
    feature_norms,
    pick_attention_run,
    test_attention,
    untrained_like,
)
from pipeline.study.figure import FIGURE_NAME, draw_attention_figure
from pipeline.study.flash_features import MODALITY, write_flash_features
from pipeline.study.lenet import LeNetConfig, load_lenet, pretrain_lenet, save_lenet, state_sha256
from pipeline.study.report import machine_description, write_report
from pipeline.study.settings import BATCH_SIZE, DROPOUT, PUBLIC, Settings, grid
from pipeline.train.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_dataset(settings: Settings) -> tuple[Path, str]:
    """Generate Flash-MNIST unless the same seed/counts/source already lie on disk."""
    path = settings.data_dir / STORE_NAME
    wanted = {"train": settings.schedule.per_class_train, "test": settings.schedule.per_class_test}
    if path.exists():
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
        source_ok = settings.source == "auto" or attrs.get("source", "").startswith(
            settings.source)
        if attrs.get("seed") == settings.seed and attrs.get("per_class") == wanted and source_ok:
            log(f"Flash-MNIST: reusing {path}")
            return path, str(attrs["source"])
    log(f"Flash-MNIST: generating {wanted} videos per class into {path}")
    generate_flash_mnist(settings.data_dir, seed=settings.seed, per_class_train=wanted["train"],
                         per_class_test=wanted["test"], mnist_dir=settings.mnist_dir,
                         source=settings.source, progress=settings.progress)
    return path, str(zarr.open_group(str(path), mode="r").attrs["source"])


def prepare_lenet(settings: Settings, device: torch.device):
    """Pre-train the LeNet (or reload the one pre-trained with the same settings)."""
    config = LeNetConfig(steps=settings.schedule.lenet_steps,
                         batch_size=settings.schedule.lenet_batch, seed=settings.seed)
    path = settings.runs_dir / "lenet.pt"
    pools = load_digit_pools(mnist_dir=settings.mnist_dir, source=settings.source)
    if path.exists():
        result = load_lenet(path)
        if result.config == config and result.source == pools.source:
            log(f"LeNet: reusing {path} (11-class test accuracy {result.test_accuracy:.3f})")
            return result
    log(f"LeNet: pre-training {config.steps} steps of {config.batch_size} noisy digits")
    result = pretrain_lenet(pools, config, device=device, progress=settings.progress)
    save_lenet(path, result)
    log(f"LeNet: 11-class accuracy on noisy test-pool digits {result.test_accuracy:.3f} "
        f"({result.seconds:.0f} s)")
    return result


def prepare_features(settings: Settings, dataset: Path, lenet, device: torch.device
                     ) -> tuple[Path, str]:
    """The feature store; rebuilt when the LeNet or the dataset changed."""
    attrs = zarr.open_group(str(dataset), mode="r").attrs.asdict()
    extraction = {
        "extractor": "lenet-50d",
        "lenet_sha256": state_sha256(lenet.model),
        "lenet": dataclasses.asdict(lenet.config),
        "dataset": {k: attrs[k] for k in ("source", "seed", "per_class")},
    }
    fingerprint = json.dumps(extraction, sort_keys=True)
    store_path = settings.data_dir / "features.zarr"
    overwrite = False
    if store_path.exists():
        recorded = open_store(store_path).modalities.get(MODALITY)
        overwrite = recorded is None or json.dumps(recorded.config, sort_keys=True) != fingerprint
    log(f"features: LeNet 50-d features of every frame into {store_path}")
    started = time.perf_counter()
    write_flash_features(dataset, store_path, lenet.model, extraction, device=device,
                         overwrite=overwrite, progress=settings.progress)
    log(f"features: done ({time.perf_counter() - started:.0f} s)")
    return store_path, fingerprint


def run_grid(settings: Settings, store: Path, fingerprint: str) -> list[dict[str, Any]]:
    """Train every configuration whose result JSON is missing or stale; return all results."""
    results_dir = settings.runs_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    cells = grid(settings.sizes, settings.units)
    schedule = settings.schedule
    key = {"features": fingerprint, "epochs": schedule.epochs, "lr": schedule.lr,
           "hidden": schedule.hidden, "seed": settings.seed}
    results, spent, trained = [], 0.0, 0
    for index, cell in enumerate(cells, start=1):
        path = results_dir / f"{cell.name}.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("key") == key:
                results.append(old)
                continue
        config = TrainConfig.from_dict({
            "split": 1, "modalities": [MODALITY], "epochs": schedule.epochs,
            "batch_size": BATCH_SIZE, "lr": schedule.lr, "hidden": schedule.hidden,
            "clusters": {MODALITY: cell.units}, "unit": cell.unit,
            "shifting": cell.shifting, "dropout": DROPOUT, "head": "linear",
            "seed": settings.seed, "device": settings.device, "streaming": "off",
            "progress": False,
        })
        outcome = train(store, settings.runs_dir / cell.name, config)
        epochs = [h["val"]["top1"] for h in outcome.history]
        result = {
            "name": cell.name, "unit": cell.unit, "units": cell.units,
            "shifting": cell.shifting, "top1": epochs[-1], "best_top1": max(epochs),
            "best_epoch": outcome.best_epoch, "val_top1_per_epoch": epochs,
            "train_top1_final": outcome.history[-1]["train_accuracy"],
            "seconds": round(outcome.seconds, 1), "checkpoint": str(outcome.checkpoint),
            "key": key,
        }
        write_json_atomic(path, result)
        results.append(result)
        spent += outcome.seconds
        trained += 1
        remaining = sum(1 for c in cells[index:]
                        if not (results_dir / f"{c.name}.json").exists())
        log(f"[{index}/{len(cells)}] {cell.name}: top-1 {100 * result['top1']:.1f}% "
            f"({outcome.seconds:.0f} s; {remaining} to go, ~{spent / trained * remaining / 60:.0f}"
            f" min if alike)")
    return results


def digit_pool_size(dataset: Path, split: str) -> int:
    """How many distinct digit images a split's videos draw from."""
    return int(zarr.open_group(str(dataset), mode="r")[split].attrs["digit_pool_size"])


def reproduce(settings: Settings) -> dict[str, Any]:
    """Run (or resume) the whole study and write the docs; returns the report dict."""
    device = resolve_device(settings.device)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    dataset, source = prepare_dataset(settings)
    lenet = prepare_lenet(settings, device)
    store, fingerprint = prepare_features(settings, dataset, lenet, device)
    results = run_grid(settings, store, fingerprint)
    chosen = pick_attention_run(results)
    trained = model_from_checkpoint(load_checkpoint(chosen["checkpoint"]), device)
    analysis = test_attention(trained, store, dataset, device)
    untrained = test_attention(untrained_like(trained, settings.seed), store, dataset, device)
    figure = settings.docs_dir / "figures" / FIGURE_NAME
    shown = draw_attention_figure(figure, dataset, analysis, chosen["name"])
    flash_attrs = zarr.open_group(str(dataset), mode="r").attrs.asdict()
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "schedule": dataclasses.asdict(settings.schedule),
        "seed": settings.seed,
        "source": source,
        "videos": flash_attrs["counts"],
        "digit_pool": {split: digit_pool_size(dataset, split) for split in ("train", "test")},
        "machine": machine_description(device),
        "lenet": {"config": dataclasses.asdict(lenet.config),
                  "test_accuracy": lenet.test_accuracy, "train_accuracy": lenet.train_accuracy,
                  "seconds": round(lenet.seconds, 1)},
        "attention": {"run": chosen["name"], "figure_videos": shown,
                      **attention_mass(analysis["attention"], analysis["frame_digit"]),
                      "untrained": attention_mass(untrained["attention"],
                                                  untrained["frame_digit"])},
        "feature_norms": feature_norms(store, dataset),
        "results": [{k: v for k, v in r.items() if k not in ("checkpoint", "key")}
                    for r in results],
        "public_reproduction": {u: {str(n): v for n, v in c.items()} for u, c in PUBLIC.items()},
    }
    settings.docs_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings.docs_dir / "reproduction.json", report)
    markdown = write_report(settings, report)
    log(f"wrote {markdown}, {settings.docs_dir / 'reproduction.json'} and {figure}")
    return report

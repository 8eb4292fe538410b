"""Run (or continue) the paper's Flash-MNIST study: the cluster-size / unit / shifting grid.

    python cli.py reproduce               # the authors' setup; continues the committed grid
    python cli.py reproduce --jobs 2      # two training processes (one per core)
    python cli.py reproduce --quick       # the whole chain in about a minute

Steps, each skipped when its output already exists for the same settings: generate
Flash-MNIST (pipeline/datasets/generated/flash_mnist.py), pre-train the authors' LeNet
(pipeline/study/lenet.py; kept beside the docs, so the committed results stay the results of
those features), write the 50-d frame features as a normal store (flash_features.py), train
every grid configuration with the normal training code (pipeline/train/loop.py, resumable by
epoch), recording each result in docs/reproduction.json as it finishes (ledger.py), then
measure where the attention goes (attention.py) and write docs/reproduction.md and the
figures (report.py, figure.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import zarr

from extract.device import resolve_device
from extract.errors import UserError
from pipeline.datasets.generated.digits import load_digit_pools
from pipeline.datasets.generated.flash_mnist import STORE_NAME, generate_flash_mnist
from pipeline.store.feature_store import open_store
from pipeline.store.format import Split
from pipeline.study.attention import (
    attention_mass,
    feature_norms,
    pick_attention_run,
    test_attention,
    untrained_like,
)
from pipeline.study.figure import FIGURE_NAME, draw_attention_figure, draw_curves
from pipeline.study.flash_features import MODALITY, write_flash_features
from pipeline.study.ledger import (
    claim,
    current_results,
    exclusive,
    finished,
    read_ledger,
    update_ledger,
)
from pipeline.study.lenet import (
    LeNetConfig,
    load_lenet,
    parameter_count,
    pretrain_lenet,
    save_lenet,
    state_sha256,
)
from pipeline.study.report import machine_description, write_report
from pipeline.study.settings import (
    BATCH_SIZE,
    DROPOUT,
    PUBLIC,
    GridConfig,
    Settings,
    allowed_precisions,
    grid,
)
from pipeline.study.step_cost import StepCost, measure_step_cost
from pipeline.train.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.train.config import THREADS_ENV, TrainConfig, threads_wanted, torch_threads
from pipeline.train.loop import train
from pipeline.training_state import discard_other_state, saved_progress

DATA_SEED = 0  # the dataset and the LeNet; the grid's seeds are the schedule's
LENET_NAME = "reproduction-lenet.pt"
# Training time over the optimiser steps alone: the test pass after every epoch (10,240 videos
# forward only, against 1,600 training steps of 64) and the checkpoint writes.
EVAL_OVERHEAD = 1.1


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_dataset(settings: Settings) -> tuple[Path, str]:
    """Generate Flash-MNIST unless the same counts/source already lie on disk."""
    path = settings.data_dir / STORE_NAME
    wanted = {"train": settings.schedule.per_class_train, "test": settings.schedule.per_class_test}
    if path.exists():
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
        source_ok = settings.source == "auto" or attrs.get("source", "").startswith(
            settings.source)
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


def train_config(settings: Settings, cell: GridConfig, precision: str) -> TrainConfig:
    schedule = settings.schedule
    return TrainConfig.from_dict({
        "split": 1, "modalities": [MODALITY], "epochs": schedule.epochs,
        "batch_size": BATCH_SIZE, "lr": schedule.lr, "hidden": schedule.hidden,
        "clusters": {MODALITY: cell.units}, "unit": cell.unit, "shifting": cell.shifting,
        "dropout": DROPOUT, "head": "linear", "seed": cell.seed, "device": settings.device,
        "streaming": "off", "precision": precision, "progress": settings.progress,
    })


def cell_key(settings: Settings, fingerprint: str, cell: GridConfig) -> str:
    """What a configuration's result depends on, except the epochs (recorded beside it). The
    precision is the schedule's policy: with "auto" the machine picks among precisions of
    equal accuracy (step_cost.py), as it picks the device."""
    settings_used = dataclasses.asdict(train_config(settings, cell, "fp32"))
    for presentation in ("device", "progress", "epochs"):
        settings_used.pop(presentation)
    settings_used["precision"] = settings.schedule.precision  # the policy, not its outcome
    text = json.dumps({"features": fingerprint, "train": settings_used}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def saved_epochs(settings: Settings, cell: GridConfig) -> dict[str, int]:
    """{precision: epochs done} for a last.pt this configuration can continue (at most one)."""
    saved = saved_progress(settings.runs_dir / cell.name)
    if saved is None:
        return {}
    identity, progress = saved
    return {p: int(progress.get("epoch", 0))
            for p in allowed_precisions(settings.schedule, cell.unit)
            if identity == train_config(settings, cell, p).resumable_settings()}


def cell_cost(settings: Settings, store: Path, cell: GridConfig) -> tuple[StepCost, float]:
    """The precision the configuration trains in (a last.pt keeps the one it started in), its
    step time here, and the seconds its training still needs at that rate (EVAL_OVERHEAD for
    the test pass after every epoch)."""
    started = saved_epochs(settings, cell)
    features = open_store(store)
    modality = features.modalities[MODALITY]
    network = {"num_classes": len(features.classes), "unit": cell.unit,
               "shifting": cell.shifting, "dropout": DROPOUT, "head": "linear",
               "hidden": settings.schedule.hidden}
    cost = measure_step_cost(cell.units, network, (modality.positions, modality.dim),
                             BATCH_SIZE,
                             tuple(started) or allowed_precisions(settings.schedule, cell.unit),
                             resolve_device(settings.device))
    train_rows = int((features.splits[:, 0] == Split.TRAIN).sum())
    epochs_left = max(settings.schedule.epochs - started.get(cost.precision, 0), 0)
    steps = epochs_left * train_config(settings, cell, cost.precision).steps_per_epoch(train_rows)
    return cost, steps * cost.step_ms / 1000 * EVAL_OVERHEAD


def train_cell(settings: Settings, store: Path, cell: GridConfig, key: str,
               cost: StepCost) -> dict[str, Any]:
    """Train one configuration (continuing its last saved epoch) and return its entry."""
    config = train_config(settings, cell, cost.precision)
    out_dir = settings.runs_dir / cell.name
    if discard_other_state(out_dir, config.resumable_settings()):
        log(f"{cell.name}: its last.pt was written with other settings; starting over")
    outcome = train(store, out_dir, config, resume=True)
    epochs = [h["val"]["top1"] for h in outcome.history]
    return {
        "name": cell.name, "unit": cell.unit, "units": cell.units, "shifting": cell.shifting,
        "seed": cell.seed, "epochs": len(epochs), "top1": epochs[-1],
        "best_top1": max(epochs), "best_epoch": outcome.best_epoch,
        "val_top1_per_epoch": epochs,
        "train_top1_final": outcome.history[-1]["train_accuracy"],
        "seconds": round(outcome.seconds, 1), "steps": outcome.steps,
        "precision": cost.precision, "step_ms": cost.milliseconds,
        "machine": f"{machine_description(resolve_device(settings.device))}, "
                   f"{threads_wanted() or torch.get_num_threads()} thread(s)",
        "key": key,
    }


def grid_worker(settings: Settings, store: Path, fingerprint: str, threads: int | None) -> int:
    """Train every configuration nobody finished or holds, in grid order; returns how many
    this process trained. Any number of these may run at once, on one machine or several
    sharing runs/ and docs/."""
    if not threads:
        return _train_cells(settings, store, fingerprint)
    before = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(threads)  # what train's torch_threads() reads
    try:
        return _train_cells(settings, store, fingerprint)
    finally:
        if before is None:
            os.environ.pop(THREADS_ENV)
        else:
            os.environ[THREADS_ENV] = before


def _train_cells(settings: Settings, store: Path, fingerprint: str) -> int:
    cells = grid(settings.sizes, settings.units, settings.schedule)
    keys = {c.name: cell_key(settings, fingerprint, c) for c in cells}
    epochs = settings.schedule.epochs
    trained = 0
    for index, cell in enumerate(cells, start=1):
        if finished(read_ledger(settings.docs_dir), cell.name, keys[cell.name], epochs):
            continue
        with claim(settings.runs_dir, cell.name) as mine:
            if not mine or finished(read_ledger(settings.docs_dir), cell.name,
                                    keys[cell.name], epochs):
                continue  # another process trains it, or just finished it
            with torch_threads():
                cost, needs = cell_cost(settings, store, cell)
            if settings.deadline is not None and time.time() + needs > settings.deadline:
                log(f"[{index}/{len(cells)}] {cell.name}: skipped, it needs about "
                    f"{needs / 60:.0f} min ({cost.step_ms:.1f} ms per step) and the deadline "
                    f"is in {(settings.deadline - time.time()) / 60:.0f} min")
                continue
            log(f"[{index}/{len(cells)}] {cell.name}: training {epochs} epochs in "
                f"{cost.precision} ({cost.milliseconds} ms per step; about {needs / 60:.0f} min)")
            result = train_cell(settings, store, cell, keys[cell.name], cost)
            ledger = update_ledger(settings.docs_dir, {}, result, keys)
        refresh_docs(settings, keys, store)
        trained += 1
        done = len(current_results(ledger, keys))
        log(f"[{index}/{len(cells)}] {cell.name}: test top-1 last {100 * result['top1']:.1f}%"
            f", best {100 * result['best_top1']:.1f}% (epoch {result['best_epoch']}); "
            f"{result['seconds'] / 60:.0f} min; {done} of {len(cells)} finished")
    return trained


def run_workers(settings: Settings, store: Path, fingerprint: str, jobs: int) -> None:
    """`jobs` grid workers: this process and jobs - 1 children, one share of the cores each."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=grid_worker, args=(settings, store, fingerprint, threads))
                for _ in range(jobs - 1)]
    for child in children:
        child.start()
    try:
        grid_worker(settings, store, fingerprint, threads)
    finally:
        for child in children:
            child.join()
    failed = [c.exitcode for c in children if c.exitcode]
    if failed:
        raise UserError(f"{len(failed)} grid worker(s) failed (exit codes {failed}); rerun "
                        "to continue where they stopped")


def attention_analysis(settings: Settings, results: list[dict[str, Any]],
                       previous: dict[str, Any] | None, store: Path, dataset: Path,
                       device: torch.device) -> dict[str, Any] | None:
    """Where the attention goes, for the best legible model trained here; the previous
    analysis is kept when its model is still the better one (checkpoints stay in runs/)."""
    local = [r for r in results if r["unit"] != "avg"
             and (settings.runs_dir / r["name"] / "best.pt").exists()]
    by_name = {r["name"]: r for r in results}
    kept = previous if previous and previous.get("run") in by_name else None
    if not local:
        return kept
    chosen = pick_attention_run(local)
    if kept and (by_name[kept["run"]]["top1"] >= chosen["top1"] or kept["run"] == chosen["name"]):
        return kept
    checkpoint = load_checkpoint(settings.runs_dir / chosen["name"] / "best.pt")
    trained = model_from_checkpoint(checkpoint, device)
    analysis = test_attention(trained, store, dataset, device)
    untrained = test_attention(untrained_like(trained, DATA_SEED), store, dataset, device)
    shown = draw_attention_figure(settings.docs_dir / "figures" / FIGURE_NAME, dataset, analysis,
                                  chosen["name"])
    return {"run": chosen["name"], "figure_videos": shown,
            **attention_mass(analysis["attention"], analysis["frame_digit"]),
            "untrained": attention_mass(untrained["attention"], untrained["frame_digit"])}


def reproduce(settings: Settings, jobs: int = 1, train_grid: bool = True) -> dict[str, Any]:
    """Run (or continue) the whole study and write the docs; returns the report dict.

    train_grid=False only rewrites the docs from the ledger (and what runs/ holds)."""
    device = resolve_device(settings.device)
    for folder in (settings.data_dir, settings.runs_dir, settings.docs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    dataset, source = prepare_dataset(settings)
    lenet = prepare_lenet(settings, device)
    store, fingerprint = prepare_features(settings, dataset, lenet, device)
    cells = grid(settings.sizes, settings.units, settings.schedule)
    keys = {c.name: cell_key(settings, fingerprint, c) for c in cells}
    flash = zarr.open_group(str(dataset), mode="r")
    fields = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "schedule": dataclasses.asdict(settings.schedule),
        "sizes": list(settings.sizes),
        "units": list(settings.units),
        "configurations": len(cells),
        "source": source,
        "videos": flash.attrs["counts"],
        "digit_pool": {split: int(flash[split].attrs["digit_pool_size"])
                       for split in ("train", "test")},
        "lenet": {"config": dataclasses.asdict(lenet.config),
                  "parameters": parameter_count(lenet.model),
                  "test_accuracy": lenet.test_accuracy, "train_accuracy": lenet.train_accuracy,
                  "seconds": round(lenet.seconds, 1)},
        "feature_norms": feature_norms(store, dataset),
        "public_reproduction": {u: {str(n): v for n, v in c.items()} for u, c in PUBLIC.items()},
    }
    update_ledger(settings.docs_dir, fields, None, keys)
    if train_grid:
        run_workers(settings, store, fingerprint, jobs)
    report = refresh_docs(settings, keys, store)
    log(f"{len(report['results'])} of {len(cells)} configurations finished; wrote "
        f"{settings.docs_dir / 'reproduction.md'}, {settings.docs_dir / 'reproduction.json'} "
        f"and the figures in {settings.docs_dir / 'figures'}")
    return report


def refresh_docs(settings: Settings, keys: dict[str, str], store: Path) -> dict[str, Any]:
    """Figures, the attention analysis and docs/reproduction.md from the ledger as it stands
    (after every finished configuration, so an unfinished grid's docs are always current)."""
    with exclusive(settings.docs_dir / ".reproduction.md.lock", wait=True):
        ledger = read_ledger(settings.docs_dir)
        results = current_results(ledger, keys)
        attention = attention_analysis(settings, results, ledger.get("attention"), store,
                                       settings.data_dir / STORE_NAME,
                                       resolve_device(settings.device))
        draw_curves(settings.docs_dir / "figures", results, settings.units)
        report = update_ledger(settings.docs_dir, {"attention": attention}, None, keys)
        write_report(settings, report)
    return report

"""Run (or continue) the paper's Flash-MNIST study: the cluster-size / unit / shifting grid.

    python cli.py reproduce               # the authors' setup; continues the committed grid
    python cli.py reproduce --jobs 2      # two training processes (one per core)
    python cli.py reproduce --quick       # the whole chain in about a minute

Steps: the data, the LeNet and its feature store (prepare.py, each skipped when it exists for
the same settings), then every grid configuration with the normal training code
(pipeline/train/loop.py, resumable by epoch; with `--hours`, only what ends in time:
epochs_in_time, skip_reason), recording each result in docs/reproduction.json as it finishes
(ledger.py), then where the attention goes (attention.py), docs/reproduction.md and the
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
from pipeline.datasets.generated.flash_mnist import STORE_NAME
from pipeline.processes import die_with_parent
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
from pipeline.study.flash_features import MODALITY, test_videos
from pipeline.study.frame_reading import frame_reading
from pipeline.study.ledger import (
    claim,
    current_results,
    exclusive,
    finished,
    read_ledger,
    recorded,
    update_ledger,
)
from pipeline.study.lenet import (
    parameter_count,
)
from pipeline.study.prepare import (
    DATA_SEED,
    log,
    prepare_dataset,
    prepare_features,
    prepare_lenet,
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

# Training time over the optimiser steps alone: the test pass after every epoch (10,240 videos
# forward only, against 1,600 training steps of 64) and the checkpoint writes.
EVAL_OVERHEAD = 1.1
# What the fit estimate allows for the probe's error: over the grid's 29 timed results a real
# step (test pass included) took 0.45-1.9x the probed one times EVAL_OVERHEAD, 8 of them over
# 1.4x: machines that slowed after the probe (other work started beside the grid), and small
# clusters, whose 3-6 ms step leaves a tenth to the loop's own work the probe skips (gathering
# and converting the batch, counting hits: 0.3 ms); without it, a run estimated at 30 epochs
# in time stopped at 28.
SLOWDOWN_MARGIN = 1.4


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


def cell_cost(settings: Settings, store: Path, cell: GridConfig,
              probed: dict[tuple, StepCost] | None = None) -> tuple[StepCost, float, int]:
    """The precision the configuration trains in (a last.pt keeps the one it started in), its
    step time here, the seconds one epoch takes at that rate (EVAL_OVERHEAD for the test pass
    after it) and the epochs a last.pt already holds. `probed` keeps the step costs a worker
    measured, so the seeds of one model are timed once."""
    started = saved_epochs(settings, cell)
    features = open_store(store)
    modality = features.modalities[MODALITY]
    network = {"num_classes": len(features.classes), "unit": cell.unit,
               "shifting": cell.shifting, "dropout": DROPOUT, "head": "linear",
               "hidden": settings.schedule.hidden}
    precisions = tuple(started) or allowed_precisions(settings.schedule, cell.unit)
    model = (cell.units, cell.unit, cell.shifting, precisions)
    probed = {} if probed is None else probed
    if model not in probed:
        probed[model] = measure_step_cost(cell.units, network,
                                          (modality.positions, modality.dim), BATCH_SIZE,
                                          precisions, resolve_device(settings.device))
    cost = probed[model]
    train_rows = int((features.splits[:, 0] == Split.TRAIN).sum())
    steps = train_config(settings, cell, cost.precision).steps_per_epoch(train_rows)
    return cost, steps * cost.step_ms / 1000 * EVAL_OVERHEAD, started.get(cost.precision, 0)


def epochs_in_time(settings: Settings, epoch_seconds: float, done: int) -> int:
    """How many of the schedule's epochs (counting the `done` ones) end before the deadline,
    with SLOWDOWN_MARGIN to spare."""
    epochs = settings.schedule.epochs
    if settings.deadline is None:
        return epochs
    left = max(settings.deadline - time.time(), 0)
    fit = done + int(left / (epoch_seconds * SLOWDOWN_MARGIN))
    return min(epochs, fit)


def train_cell(settings: Settings, store: Path, cell: GridConfig, key: str,
               cost: StepCost) -> dict[str, Any]:
    """Train one configuration (continuing its last saved epoch) and return its entry; with a
    deadline it stops after the last epoch that ends in time, and the entry's `epochs` says
    how many of the schedule's it ran (its last.pt stays, for a later run to continue)."""
    config = train_config(settings, cell, cost.precision)
    out_dir = settings.runs_dir / cell.name
    if discard_other_state(out_dir, config.resumable_settings()):
        log(f"{cell.name}: its last.pt was written with other settings; starting over")
    outcome = train(store, out_dir, config, resume=True, stop_by=settings.deadline)
    epochs = [h["val"]["top1"] for h in outcome.history]
    return {
        "name": cell.name, "unit": cell.unit, "units": cell.units, "shifting": cell.shifting,
        "seed": cell.seed, "epochs": len(epochs), "top1": epochs[-1],
        "best_top1": max(epochs), "best_epoch": outcome.best_epoch,
        "val_top1_per_epoch": epochs,
        "train_top1_final": outcome.history[-1]["train_accuracy"],
        # Training time over every run that made its epochs (a resumed configuration's
        # `outcome.seconds` is the last run's only); None: an epoch timed before these were kept.
        "seconds": round(sum(filter(None, outcome.epoch_seconds)), 1),
        "seconds_per_epoch": outcome.epoch_seconds, "steps": outcome.steps,
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


def child_grid_worker(parent_pid: int, settings: Settings, store: Path, fingerprint: str,
                      threads: int | None) -> int:
    """A grid worker in a child process, stopped when the run that started it dies."""
    die_with_parent(parent_pid)
    return grid_worker(settings, store, fingerprint, threads)


def _train_cells(settings: Settings, store: Path, fingerprint: str) -> int:
    cells = grid(settings.sizes, settings.units, settings.schedule)
    keys = {c.name: cell_key(settings, fingerprint, c) for c in cells}
    epochs = settings.schedule.epochs
    trained = 0
    probed: dict[tuple, StepCost] = {}
    for index, cell in enumerate(cells, start=1):
        if finished(read_ledger(settings.docs_dir), cell.name, keys[cell.name], epochs):
            continue
        if settings.deadline is not None and time.time() >= settings.deadline:
            log(f"[{index}/{len(cells)}] {cell.name} and the rest: skipped, the deadline has "
                "passed")
            break
        with claim(settings.runs_dir, cell.name) as mine:
            shortened = recorded(read_ledger(settings.docs_dir), cell.name, keys[cell.name])
            if not mine or (shortened is not None and shortened["epochs"] == epochs):
                continue  # another process trains it, or just finished it
            with torch_threads():
                cost, epoch_seconds, done = cell_cost(settings, store, cell, probed)
            reach = epochs_in_time(settings, epoch_seconds, done)
            why_not = skip_reason(settings.schedule.min_epochs, epochs, done, reach, shortened)
            if why_not:
                log(f"[{index}/{len(cells)}] {cell.name}: skipped, {why_not} (its {epochs - done}"
                    f" epochs need about {(epochs - done) * epoch_seconds / 60:.0f} min at "
                    f"{cost.step_ms:.1f} ms per step)")
                continue
            log(f"[{index}/{len(cells)}] {cell.name}: training epochs {done + 1}-{reach}"
                f"{'' if reach == epochs else f' of {epochs} (as many as end in time)'} in "
                f"{cost.precision} ({cost.milliseconds} ms per step; about "
                f"{(reach - done) * epoch_seconds / 60:.0f} min)")
            result = train_cell(settings, store, cell, keys[cell.name], cost)
            ledger = update_ledger(settings.docs_dir, {}, result, keys)
        refresh_docs(settings, keys, store)
        trained += 1
        log(f"[{index}/{len(cells)}] {cell.name}: test top-1 last {100 * result['top1']:.1f}%"
            f", best {100 * result['best_top1']:.1f}% (epoch {result['best_epoch']}) after "
            f"{result['epochs']} epochs; {result['seconds'] / 60:.0f} min; "
            f"{len(current_results(ledger, keys))} of {len(cells)} recorded")
    return trained


def skip_reason(min_epochs: int, epochs: int, done: int, reach: int,
                shortened: dict[str, Any] | None) -> str | None:
    """Why a configuration that cannot run all `epochs` before the deadline waits for a later
    run (None: train it): fewer than `min_epochs` (or no more than the `done` ones) would end
    in time, or a shortened result of it is recorded (redone only when all its epochs fit)."""
    if reach == epochs:
        return None
    if shortened is not None:
        return (f"its {shortened['epochs']}-epoch result stands until a run has time for all "
                f"{epochs}")
    needed = min(min_epochs, epochs)  # a schedule shorter than min_epochs runs whole or not
    if reach < max(needed, done + 1):
        return (f"only {reach} of its epochs would end before the deadline (it trains when "
                f"at least {needed} do)")
    return None


def run_workers(settings: Settings, store: Path, fingerprint: str, jobs: int) -> None:
    """`jobs` grid workers: this process and jobs - 1 children, one share of the cores each."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=child_grid_worker,
                                args=(os.getpid(), settings, store, fingerprint, threads))
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
    """Where the attention goes, for the most accurate model trained here; the previous
    analysis is kept when its model is still the better one and its result has not moved on
    since (a run continued to more epochs under the same name is analysed again; checkpoints
    stay in runs/, so a machine without them keeps the previous analysis)."""
    local = [r for r in results if r["unit"] != "avg"
             and (settings.runs_dir / r["name"] / "best.pt").exists()]
    by_name = {r["name"]: r for r in results}
    kept = previous if previous and previous.get("run") in by_name else None
    if not local:
        return kept
    chosen = pick_attention_run(local)
    analysed = by_name[kept["run"]] if kept else None
    up_to_date = analysed is not None and kept.get("epochs") == analysed["epochs"]
    if up_to_date and (analysed["top1"] >= chosen["top1"] or kept["run"] == chosen["name"]):
        return kept
    checkpoint = load_checkpoint(settings.runs_dir / chosen["name"] / "best.pt")
    trained = model_from_checkpoint(checkpoint, device)
    analysis = test_attention(trained, store, dataset, device)
    untrained = test_attention(untrained_like(trained, DATA_SEED), store, dataset, device)
    shown = draw_attention_figure(settings.docs_dir / "figures" / FIGURE_NAME, dataset, analysis,
                                  chosen["name"])
    return {"run": chosen["name"], "epochs": chosen["epochs"], "figure_videos": shown,
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
    features, frame_digit, labels = test_videos(store, dataset)
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
                  "seconds": round(lenet.seconds, 1),
                  **frame_reading(lenet.model, features, frame_digit, labels)},
        "feature_norms": feature_norms(features, frame_digit),
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

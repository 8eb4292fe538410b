"""`features`: every video of a dataset -> one Zarr feature store, computed by Dask workers.

The client lists the dataset, creates (or reopens) the store, and writes every result itself;
workers only decode and run models, each building its extractor once. Rerunning the same
command resumes: rows already done are skipped, also when the list of videos changed (rows are
matched to videos by id, with each file's size and mtime to notice a replaced file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.device import resolve_device
from extract.errors import UserError
from pipeline.datasets.manifest import Manifest, load_manifest
from pipeline.features.cooperate import block_rows, fill_together
from pipeline.features.dask_runner import (
    RunSummary,
    config_key,
    default_outcome,
    run_tasks,
    worker_cached,
)
from pipeline.features.extractor import VideoFeatureExtractor, pick_evenly
from pipeline.features.gpu_pool import VIDEOS_PER_GPU_TASK, SplitTask, drive_auto
from pipeline.profiles import default_profile_for, load_profile
from pipeline.remote.leases import Leases
from pipeline.remote.object_lock import LEASE_SECONDS
from pipeline.remote.urls import Location, as_location, is_url
from pipeline.remote.videos import UnreadableVideo, open_video
from pipeline.store.create import create_store
from pipeline.store.feature_store import FeatureStore, open_store
from pipeline.store.format import ModalitySpec, Status, StoreError
from pipeline.store.lock import (
    check_still_held,
    cooperating,
    holder_alive,
    refuse_while_cooperating,
    store_lock,
    waiting_store_lock,
)
from pipeline.store.resume import Relisting, check_resumable
from pipeline.store.verify import DamageReport


@dataclass(frozen=True)
class FeaturesRun:
    """What one `features` call did: the store, the run's counts, and dataset problems."""

    store: FeatureStore
    run: RunSummary
    skipped_missing: int
    skipped_unsafe: int = 0  # list entries (or symlinks) leading outside the root: never read
    relisting: Relisting | None = None  # rows kept, added, vanished, reset: None if new store
    skipped_unreadable: int = 0  # entries that cannot be read (a symlink loop, a FIFO, non-UTF-8)
    damage: DamageReport | None = None  # damaged rows found, marked pending and recomputed
    left_to_others: int = 0  # --cooperate: rows computed here whose block another run took over

    def written(self) -> tuple[int, int]:
        """(listed videos with every modality in the store: done, absent or failed; listed)."""
        pending = np.zeros(self.store.n, dtype=bool)
        for name in self.store.modalities:
            pending |= self.store.status(name) == Status.PENDING
        return int((self.store.listed & ~pending).sum()), int(self.store.listed.sum())


def video_outcome(result: Mapping[str, Any]) -> str:
    """The run summary's label for one video: 'failed' when none of its modalities got
    features and one failed, 'partly failed' when some did, else 'done' (absent is normal)."""
    if "status" in result:  # the runner's failure of the whole task
        return default_outcome(result)
    statuses = {int(part["status"]) for part in result.values()}
    if Status.FAILED not in statuses:
        return Status.DONE.label
    return "partly failed" if Status.DONE in statuses else Status.FAILED.label


def extract_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Dask task: features of one video. The extractor is built once per worker process."""
    extractor = _extractor(payload["extractor"])
    path = payload["path"]
    if not is_url(path):
        return extractor.extract(path, payload["modalities"])
    try:
        with open_video(path) as video:  # on object storage: one file object per video
            return extractor.extract(video, payload["modalities"])
    except UnreadableVideo as exc:
        return {name: {"status": Status.FAILED, "error": str(exc)}
                for name in payload["modalities"]}


def _extractor(settings: Mapping[str, Any], device: str | None = None, models: bool = True
               ) -> VideoFeatureExtractor:
    """This worker process's extractor for `settings` (on `device` instead, if given; without
    networks for a worker that only decodes)."""
    device = device or settings["device"]
    return worker_cached(
        config_key("extractor", {**settings, "device": device, "models": models}),
        lambda: VideoFeatureExtractor(settings["modalities"], settings["limits"], device,
                                      models=models),
    )


def decode_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Dask task on a CPU worker: the decoded model inputs of one video (gpu_pool). Decoding
    uses neither the device nor the networks, so the worker builds neither."""
    extractor = _extractor(payload["extractor"], "cpu", models=False)
    path = payload["path"]
    if not is_url(path):
        return extractor.decode(path, payload["modalities"])
    try:
        with open_video(path) as video:
            return extractor.decode(video, payload["modalities"])
    except UnreadableVideo as exc:
        return {name: {"status": Status.FAILED, "error": str(exc)}
                for name in payload["modalities"]}


def compute_rows(settings: Mapping[str, Any], decoded: list[Any]) -> list[dict[str, Any]]:
    """Dask task on a GPU worker: the features of several decoded videos, batched together."""
    return _extractor(settings).compute(decoded)


def gpu_worker_count(gpu_workers: int | None, scheduler: str | None, device: str) -> int:
    """Local GPU workers to start: as asked, else one per visible GPU when extracting on
    CUDA without --scheduler (that cluster's workers declare their own resources)."""
    if gpu_workers is not None or scheduler:
        return gpu_workers or 0
    return torch.cuda.device_count() if resolve_device(device).type == "cuda" else 0


def _work(settings: Mapping[str, Any], scheduler: str | None, gpu_workers: int | None,
          gpu_batch: int) -> tuple[Any, dict[str, Any]]:
    """(task, run_tasks options): per video as always, or split stages where GPU workers may
    be (local ones to start, or an existing cluster's, found when the run starts)."""
    count = gpu_worker_count(gpu_workers, scheduler, settings["device"])
    if not count and not scheduler:
        return extract_row, {}
    if gpu_batch < 1:
        raise UserError(f"--gpu-batch {gpu_batch}: must be at least 1 video")
    task = SplitTask(decode_row, compute_rows, extract_row, dict(settings), gpu_batch)
    return task, {"driver": drive_auto, "gpu_workers": count}


def select_videos(manifest: Manifest, limit: int | None
                  ) -> tuple[list[Any], np.ndarray, int]:
    """Existing videos (missing ones are counted, not fatal), spread evenly when limited,
    with (N, 2) int64 size and mtime_ns of each from the stat that found it."""
    present = manifest.present_files()
    missing = len(manifest.videos) - len(present)
    if not present:
        raise UserError(f"{manifest.root}: no video files found for {manifest.dataset}")
    if limit is not None:
        present = [present[i] for i in pick_evenly(len(present), limit)]
    files = np.array([(info.st_size, info.st_mtime_ns) for _, info in present], dtype=np.int64)
    return [video for video, _ in present], files, missing


def _specs(extractor: VideoFeatureExtractor) -> dict[str, ModalitySpec]:
    return {name: ModalitySpec(int(settings["positions"]), extractor.dim(name),
                               extractor.config(name))
            for name, settings in extractor.settings.items()}


def open_or_create_store(out: Location, manifest: Manifest, videos: list[Any], files: np.ndarray,
                         extractor: VideoFeatureExtractor, overwrite: bool, repair: bool,
                         progress: bool) -> FeatureStore:
    specs = _specs(extractor)
    if manifest.task == "single":
        labels: Any = np.array([v.label for v in videos], dtype=np.int32)
    else:
        labels = np.zeros((len(videos), len(manifest.classes)), dtype=bool)
        for row, video in enumerate(videos):
            labels[row, list(video.labels)] = True
    return create_store(
        out, dataset=manifest.dataset, task=manifest.task, classes=manifest.classes,
        ids=[v.id for v in videos], labels=labels,
        splits=np.array([v.splits for v in videos], dtype=np.uint8),
        split_names=manifest.split_names, modalities=specs, overwrite=overwrite,
        files=files, repair=repair,
        progress=progress and repair,
    )


def run_features(
    *, root: Location, out: Location, dataset: str,
    profile: Mapping[str, Any] | str | Path | None = None,
    kind: str | None = None,
    splits_dir: Path | None = None, workers: int | None = None, scheduler: str | None = None,
    device: str = "auto", limit: int | None = None, overwrite: bool = False,
    progress: bool = True, flush_seconds: float = 30.0, repair: bool = False,
    cooperate: bool = False, lease_s: float = LEASE_SECONDS, lease_rows: int | None = None,
    gpu_workers: int | None = None, gpu_batch: int = VIDEOS_PER_GPU_TASK,
) -> FeaturesRun:
    """Extract the features of every video of a dataset into `out`, resuming where it stopped.

    `profile` is a loaded profile, a profile name or path, or None for the dataset's own
    (configs/<dataset>.yaml, else the default); `kind` defaults to the profile's dataset.kind.
    Before resuming, the store is checked for damage (chunk keys; every chunk's checksum with
    `repair`) and the damaged rows are marked pending, so they are recomputed with the rest.
    With `cooperate`, other runs may fill the same store at the same time (blocks of
    `lease_rows` rows claimed with leases of `lease_s` seconds: pipeline/features/cooperate.py).
    Workers declaring the resource GPU (`gpu_workers` local ones; by default one per GPU when
    extracting on CUDA) run flow and the CNNs for `gpu_batch` videos at once, decoded by the
    other workers (pipeline/features/gpu_pool.py); the store is the same.
    """
    out = as_location(out)
    if cooperate and (overwrite or repair):
        raise UserError("--cooperate joins other runs on the store as it is: run --overwrite or "
                        "--repair alone first")
    if cooperate:
        return _run_cooperating(
            root=root, out=out, dataset=dataset, profile=profile, kind=kind,
            splits_dir=splits_dir, workers=workers, scheduler=scheduler, device=device,
            limit=limit, progress=progress, flush_seconds=flush_seconds, lease_s=lease_s,
            lease_rows=lease_rows, gpu_workers=gpu_workers, gpu_batch=gpu_batch)
    with store_lock(out, lease_s=lease_s):  # one run per store, refused before any work
        refuse_while_cooperating(out)
        setup = _prepare(root, dataset, profile, kind, splits_dir, device, limit)
        store = open_or_create_store(out, setup.manifest, setup.videos, setup.files,
                                     setup.probe, overwrite, repair, progress)
        setup.probe = None  # its models are not needed in this process any more
        store.fence = lambda: check_still_held(out)
        todo = store.todo_rows(overwrite=overwrite)
        items = [(int(row), setup.payload(store, int(row), overwrite)) for row in todo]
        task, split = _work(setup.settings, scheduler, gpu_workers, gpu_batch)
        with store.writer(expected_rows=todo, flush_seconds=flush_seconds) as writer:
            summary = run_tasks(items, task, on_result=writer.add, scheduler=scheduler,
                                workers=workers, progress=progress, description="videos",
                                outcome=video_outcome, **split)
        return setup.result(store, summary)


@dataclass
class _Setup:
    """What a run knows before it touches the store: the videos and the extraction."""

    manifest: Manifest
    videos: list[Any]
    files: np.ndarray
    missing: int
    settings: dict[str, Any]
    probe: VideoFeatureExtractor | None
    specs: dict[str, ModalitySpec]

    def payload(self, store: FeatureStore, row: int, overwrite: bool = False) -> dict[str, Any]:
        return {"path": str(self.manifest.root / store.ids[row]), "extractor": self.settings,
                "modalities": store.todo_modalities(row, overwrite)}

    def result(self, store: FeatureStore, summary: RunSummary) -> FeaturesRun:
        return FeaturesRun(store=store, run=summary, skipped_missing=self.missing,
                           skipped_unsafe=len(self.manifest.problems.unsafe),
                           skipped_unreadable=len(self.manifest.problems.unreadable),
                           relisting=store.relisting, damage=store.repaired)


def _prepare(root: Location, dataset: str, profile: Mapping[str, Any] | str | Path | None,
             kind: str | None, splits_dir: Path | None, device: str,
             limit: int | None) -> _Setup:
    if not isinstance(profile, Mapping):
        profile = load_profile(profile or default_profile_for(dataset))
    manifest = load_manifest(kind or profile["dataset"]["kind"], root, splits_dir)
    manifest.dataset = dataset
    videos, files, missing = select_videos(manifest, limit)
    settings = {"modalities": profile["modalities"], "limits": profile["limits"],
                "device": device}
    # Built here too: it checks weights are available before any worker starts, and gives
    # the feature widths and full configs the store records.
    probe = VideoFeatureExtractor(settings["modalities"], settings["limits"], device)
    return _Setup(manifest, videos, files, missing, settings, probe, _specs(probe))


def _run_cooperating(*, root: Location, out: Location, dataset: str,
                     profile: Mapping[str, Any] | str | Path | None, kind: str | None,
                     splits_dir: Path | None, workers: int | None, scheduler: str | None,
                     device: str, limit: int | None, progress: bool, flush_seconds: float,
                     lease_s: float, lease_rows: int | None, gpu_workers: int | None,
                     gpu_batch: int) -> FeaturesRun:
    """Create or join the store under the single-run lock, then fill it with the others."""
    setup = _prepare(root, dataset, profile, kind, splits_dir, device, limit)
    with waiting_store_lock(out, lease_s) as holder:
        if cooperating(out):
            store = join_store(out, setup)
        else:
            store = open_or_create_store(out, setup.manifest, setup.videos, setup.files,
                                         setup.probe, False, False, False)
        setup.probe = None
        leases = Leases(out, holder, lease_s, holder_alive)
    summary, lost = fill_together(
        store, leases, rows=block_rows(lease_rows, store.rows_per_shard),
        payload=lambda row: setup.payload(store, row), outcome=video_outcome,
        scheduler=scheduler, workers=workers, progress=progress, flush_seconds=flush_seconds,
        split=_work(setup.settings, scheduler, gpu_workers, gpu_batch))
    fresh = open_store(out)
    fresh.relisting, fresh.repaired = store.relisting, store.repaired
    return replace(setup.result(fresh, summary), left_to_others=lost)


def join_store(out: Location, setup: _Setup) -> FeatureStore:
    """The store other runs are filling, opened without a write: this run must list the same
    videos with the same extraction, or it would have to relist rows others are writing."""
    store = open_store(out, writable=True)
    manifest = setup.manifest
    check_resumable(store, dataset=manifest.dataset, task=manifest.task,
                    classes=manifest.classes, modalities=setup.specs)
    listed = {store.ids[row] for row in np.flatnonzero(store.listed)}
    wanted = {video.id for video in setup.videos}
    if listed != wanted:
        raise StoreError(f"{out} is being filled by cooperating runs that list other videos "
                         f"({len(listed)} in the store, {len(wanted)} here, "
                         f"{len(wanted - listed)} new): cooperating runs need the same --root "
                         f"and --limit; add videos once they have finished")
    return store

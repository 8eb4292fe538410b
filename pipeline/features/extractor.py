"""One video -> local features for every modality of a profile.

This is the unit of work of `features` (one per Dask task) and of `classify` (one per video),
so both compute features exactly alike. Each modality succeeds or fails on its own: a video
with a broken audio track still gets RGB and flow features, and a video with no audio track
gets audio status "absent" (normal for about half of UCF101), not "failed".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from extract.backbones.registry import Backbone, build_backbone, extract_batched, rebuild_backbone
from extract.device import resolve_device
from extract.errors import UserError
from extract.flow.stacks import FlowParams, flow_stacks
from extract.logmel import SAMPLE_RATE, log_mel_patches
from extract.video.audio import read_audio
from extract.video.frames import DecodeLimits, read_gray_stacks, read_rgb
from pipeline.profiles import MODALITY_DEFAULTS
from pipeline.store.format import Status

EXTRACTION_THREADS = 1  # torch threads while extracting, in every process (extraction_threads)


@contextlib.contextmanager
def extraction_threads() -> Iterator[None]:
    """Torch math on EXTRACTION_THREADS threads while extracting, whatever the caller had.

    How a sum is split between threads changes its rounding: the rgb and flow features of the
    toy clips differed in the last float16 bit between 1 and 2 threads. A fixed count makes
    features the same for any `--workers`, in a worker or in `classify`; parallelism comes
    from worker processes. DIS flow (1, 2, 4 OpenCV threads) and log-mel (1, 2 BLAS threads)
    gave the same bits, and FFmpeg's decoders are bit-exact at any thread count, so their
    threads are left as they are.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(EXTRACTION_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decode_limits(limits: Mapping[str, Any]) -> DecodeLimits:
    """The profile's `limits:` section as the decoder's bounds.

    Decoder threads follow the per-worker thread budget the Dask runner sets (OMP_NUM_THREADS),
    so several workers on one machine do not each start one decoding thread per core.
    `timeout_s` bounds each modality's decode of one video; it never changes a feature, so it
    is not recorded in stores or checkpoints (which is why it may be missing here).
    """
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    timeout = limits.get("timeout_s")
    return DecodeLimits(max_seconds=float(limits["max_seconds"]),
                        max_pixels=int(limits["max_pixels"]), threads=threads,
                        timeout_s=None if timeout is None else float(timeout))


def pick_evenly(count: int, wanted: int) -> np.ndarray:
    """Indices of `wanted` items spread evenly over `count` (segment centres), all if fewer."""
    if count <= wanted:
        return np.arange(count)
    return ((np.arange(wanted) + 0.5) * count / wanted).astype(np.int64)


def settings_from_record(recorded: Mapping[str, Mapping[str, Any]]
                         ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The constructor's (modality settings, limits) from configs written by `config`.

    Batch size is not recorded (it never changes a feature), so the profile default is used.
    Every modality records the same profile limits; differing ones mean a hand-edited file.
    """
    modalities: dict[str, dict[str, Any]] = {}
    limits: dict[str, Any] | None = None
    for name, config in recorded.items():
        if "backbone" not in config or "limits" not in config:
            raise UserError(
                f"the checkpoint does not record how its {name} features were extracted "
                "(retrain it from a feature store made by this software)"
            )
        if name not in MODALITY_DEFAULTS:
            raise UserError(f"the checkpoint uses an unknown modality '{name}'")
        settings = {k: v for k, v in config.items() if k != "limits"}
        settings["batch_size"] = MODALITY_DEFAULTS[name]["batch_size"]
        modalities[name] = settings
        if limits is not None and config["limits"] != limits:
            raise UserError(f"the checkpoint records different decode limits for {name}")
        limits = dict(config["limits"])
    if limits is None:
        raise UserError("the checkpoint records no modality to extract")
    return modalities, limits


class VideoFeatureExtractor:
    """Decoding, flow and backbones for one profile, built once and reused for many videos.

    `recorded` modality configs (from a store or checkpoint) rebuild the exact same backbones,
    refusing weights files whose checksum differs. `models=False` builds no network: the
    decode workers of a split run (gpu_pool) only call `decode`.
    """

    def __init__(self, modalities: Mapping[str, Mapping[str, Any]], limits: Mapping[str, Any],
                 device: str = "auto", recorded: Mapping[str, Mapping[str, Any]] | None = None,
                 models: bool = True):
        self.settings = {name: dict(settings) for name, settings in modalities.items()}
        self.limits = dict(limits)
        self.device = resolve_device(device)
        self._decode_limits = decode_limits(self.limits)
        self.backbones: dict[str, Backbone] = {}
        for name, settings in self.settings.items() if models else ():
            if recorded is not None:
                self.backbones[name] = rebuild_backbone(recorded[name]["backbone"], self.device)
                continue
            spec = dict(settings["backbone"])
            if name == "flow":  # one x and one y plane per consecutive frame pair
                spec["channels"] = 2 * (int(settings["frames_per_stack"]) - 1)
            self.backbones[name] = build_backbone(spec, name, self.device)
        self.flow_params = (
            FlowParams(**self.settings["flow"]["params"]) if "flow" in self.settings else None
        )

    def config(self, name: str) -> dict[str, Any]:
        """Everything that determines modality `name`'s features, as stored in the store attrs."""
        settings = {k: v for k, v in self.settings[name].items() if k != "batch_size"}
        settings["backbone"] = self.backbones[name].config()
        settings["limits"] = {k: self.limits[k] for k in ("max_seconds", "max_pixels")}
        if name == "flow":
            assert self.flow_params is not None
            settings["params"] = self.flow_params.to_dict()
        return settings

    @classmethod
    def from_record(cls, recorded: Mapping[str, Mapping[str, Any]], device: str | torch.device
                    ) -> VideoFeatureExtractor:
        """The inverse of `config`: the extraction that recorded configs (a store's or a
        checkpoint's) describe, with the same backbones (weights checksums checked)."""
        modalities, limits = settings_from_record(recorded)
        return cls(modalities, limits, str(device), recorded=recorded)

    def dim(self, name: str) -> int:
        return int(self.backbones[name].dim)

    def extract(self, path: str | Path | BinaryIO, modalities: Iterable[str] | None = None
                ) -> dict[str, dict[str, Any]]:
        """{modality: {status, features (l, D) float16, mask (l,), time (l,), error}}; rgb and
        flow add `stream`, the index of the video stream decoded (see choose_stream). `path`
        may be an open binary file (a video on object storage, opened by the caller)."""
        return self.compute([self.decode(path, modalities)])[0]

    def decode(self, path: str | Path | BinaryIO, modalities: Iterable[str] | None = None
               ) -> dict[str, dict[str, Any]]:
        """The CPU half of `extract`: per modality, the model inputs ({items, times, stream})
        or already the final result (failed, or absent audio). `compute` finishes it."""
        decoded = {}
        with extraction_threads():
            for name in modalities or self.settings:
                decoded[name] = _guarded(lambda name=name: getattr(self, f"_read_{name}")(
                    path if hasattr(path, "read") else Path(path)))
        return decoded

    def compute(self, videos: list[Mapping[str, Mapping[str, Any]]]
                ) -> list[dict[str, dict[str, Any]]]:
        """The model half of `extract` for many decoded videos at once: flow and backbones
        see the inputs of all of them together (batches across videos on a GPU). A modality
        whose batch fails is retried video by video, so one odd video fails alone."""
        results: list[dict[str, dict[str, Any]]] = [dict(video) for video in videos]
        with extraction_threads():
            for name in self.settings:
                rows = [i for i, video in enumerate(videos) if "items" in video.get(name, {})]
                inputs = [videos[i][name] for i in rows]
                outputs = None
                if len(inputs) > 1:
                    with contextlib.suppress(Exception):  # then each alone, failing alone
                        outputs = self._run_models(name, inputs)
                if outputs is None:
                    outputs = [_guarded(lambda one=one, name=name: self._run_models(name, [one])[0])
                               for one in inputs]
                for i, output in zip(rows, outputs, strict=True):
                    results[i][name] = output
        return results

    def _run_models(self, name: str, inputs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Flow (for flow) and the backbone over the concatenated inputs of several videos."""
        if not inputs:
            return []
        counts = np.cumsum([len(one["items"]) for one in inputs])[:-1]
        items = np.concatenate([one["items"] for one in inputs])
        if name == "flow":
            s = self.settings["flow"]
            items = flow_stacks(items, s["backend"], self.flow_params, self.device,
                                bound=float(s["bound"]))
        batch = int(self.settings[name]["batch_size"])
        features = extract_batched(self.backbones[name], items, batch).astype(np.float16)
        outputs = []
        for one, part in zip(inputs, np.split(features, counts), strict=True):
            done = {"status": Status.DONE, "features": part, "mask": np.ones(len(part), bool),
                    "time": np.asarray(one["times"], np.float32), "error": ""}
            if "stream" in one:
                done["stream"] = one["stream"]
            outputs.append(done)
        return outputs

    def _read_rgb(self, path: Path) -> dict[str, Any]:
        s = self.settings["rgb"]
        sampled = read_rgb(path, s["positions"], s["resize_short"], s["crop"],
                           self._decode_limits)
        return {"items": sampled.frames, "times": sampled.times, "stream": sampled.stream}

    def _read_flow(self, path: Path) -> dict[str, Any]:
        s = self.settings["flow"]
        sampled = read_gray_stacks(path, s["positions"], s["frames_per_stack"],
                                   tuple(s["size"]), self._decode_limits)
        return {"items": sampled.stacks, "times": sampled.times, "stream": sampled.stream}

    def _read_audio(self, path: Path) -> dict[str, Any]:
        s = self.settings["audio"]
        waveform = read_audio(path, SAMPLE_RATE, self._decode_limits)
        if waveform is None:
            return {"status": Status.ABSENT, "error": ""}
        patches = log_mel_patches(waveform)
        chosen = pick_evenly(len(patches.patches), s["positions"])
        return {"items": patches.patches[chosen], "times": patches.times[chosen]}


def _guarded(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One modality's step; an error becomes that modality's failed result (one odd video
    must not stop a run of thousands, nor its other modalities)."""
    try:
        return step()
    except UserError as exc:
        return {"status": Status.FAILED, "error": str(exc)}
    except Exception as exc:  # any other error fails this modality alone
        return {"status": Status.FAILED, "error": f"{type(exc).__name__}: {exc}"}

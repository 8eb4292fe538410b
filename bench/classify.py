"""Time `classify` on one 10 s 320x240 clip with the toy profile, stage by stage.

Setup (not timed): a temp dir with the generated toy dataset (12 clips), its features with
configs/toy.yaml and a 1-epoch checkpoint; then the benchmark clip (10 s, 25 fps, 320x240, a
moving disc over noise, a 440 Hz tone) written with extract/video/encode.write_video.
Timed: loading the checkpoint and rebuilding its extraction (`load_seconds`); the first video
(`first_video_seconds`, includes one-off costs such as TV-L1 compilation); then `--repeats`
runs of the same video, whose median gives `total_seconds` and `stage_seconds`:
decode (RGB frames + grey flow stacks), flow (TV-L1 + quantisation), cnn (RGB and flow
backbones), audio (decode + log-mel + audio backbone), model (attention clusters + head);
`explain_seconds` is one `--explain` picture. Stages are timed by wrapping the functions
pipeline/features/extractor.py calls, so the code measured is the code `classify` runs.

Usage: .venv/bin/python bench/classify.py [--json] [--repeats N] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline.features.extractor as extraction
from extract.flow.tvl1_torch import compile_wanted
from extract.video.encode import write_video  # noqa: E402
from pipeline.datasets.generated.toy import generate_toy  # noqa: E402
from pipeline.features.run import run_features  # noqa: E402
from pipeline.inference.classify import Classifier, classify_one, load_classifier  # noqa: E402
from pipeline.profiles import load_profile  # noqa: E402
from pipeline.train.config import TrainConfig  # noqa: E402
from pipeline.train.loop import train  # noqa: E402

SIZE, SECONDS, FPS, SAMPLE_RATE = (320, 240), 10.0, 25.0, 16000
# (function name in pipeline/features/extractor.py, stage); extract_batched is split by modality.
WRAPPED = {"read_rgb": "decode", "read_gray_stacks": "decode", "flow_stacks": "flow",
           "read_audio": "audio", "log_mel_patches": "audio"}


def bench_frames() -> Iterator[np.ndarray]:
    """A disc crossing a fixed noise background: real motion for TV-L1, texture for the CNN."""
    width, height = SIZE
    background = np.random.default_rng(0).integers(60, 200, (height, width, 3), dtype=np.uint8)
    ys, xs = np.mgrid[:height, :width]
    for index in range(int(SECONDS * FPS)):
        frame = background.copy()
        cx = 30 + (width - 60) * index / (SECONDS * FPS)
        frame[(xs - cx) ** 2 + (ys - height / 2) ** 2 < 25**2] = (40, 60, 220)
        yield frame


def write_bench_clip(path: Path) -> Path:
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    audio = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    write_video(path, bench_frames(), FPS, audio=audio, sample_rate=SAMPLE_RATE)
    return path


def make_checkpoint(folder: Path, device: str) -> Path:
    """Toy features (toy profile) and one epoch of training: a real, small checkpoint."""
    root = generate_toy(folder / "toy", seed=0, videos=12, progress=False)
    store = folder / "toy.zarr"
    profile = load_profile("toy")
    run_features(kind="ucf101", root=root, profile=profile, out=store, dataset="toy",
                 workers=1, device=device, progress=False)
    config = TrainConfig.from_dict({**profile["train"], "epochs": 1, "device": device,
                                    "progress": False})
    return train(store, folder / "run", config).checkpoint


class StageTimer:
    """Wraps extraction's helpers so each call adds its wall time to the current run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, function: Callable, stage_of: Callable[..., str]) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.seconds[stage_of(*args)] += time.perf_counter() - started

        return timed

    def install(self) -> None:
        for name, stage in WRAPPED.items():
            setattr(extraction, name,
                    self.wrap(getattr(extraction, name), lambda *_, s=stage: s))

        def backbone_stage(backbone: Any, *_: Any) -> str:
            return "audio" if backbone.config().get("modality") == "audio" else "cnn"

        extraction.extract_batched = self.wrap(extraction.extract_batched, backbone_stage)


def device_name(classifier: Classifier) -> str:
    device = classifier.device
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def run(repeats: int, device: str, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as temp:
        folder = Path(temp)
        log("setup: toy dataset, features (toy profile), 1 epoch ...")
        checkpoint = make_checkpoint(folder, device)
        clip = write_bench_clip(folder / "bench.mp4")
        timer = StageTimer()
        timer.install()
        started = time.perf_counter()
        classifier = load_classifier(checkpoint, device)
        load_seconds = time.perf_counter() - started
        log(f"loaded in {load_seconds:.2f} s; first video ...")
        started = time.perf_counter()
        first = classify_one(classifier, clip)
        first_seconds = time.perf_counter() - started
        totals, stages = [], []
        for index in range(repeats):
            timer.seconds.clear()
            classifier.timings.clear()
            started = time.perf_counter()
            result = classify_one(classifier, clip)
            totals.append(time.perf_counter() - started)
            stages.append({**timer.seconds, "model": classifier.timings["model"]})
            log(f"run {index + 1}: {totals[-1]:.2f} s")
        started = time.perf_counter()
        classify_one(classifier, clip, explain=folder / "why.png")
        explain_seconds = time.perf_counter() - started - statistics.median(totals)
        return {
            "benchmark": "classify",
            "device": device_name(classifier),
            "clip": {"seconds": SECONDS, "size": list(SIZE), "fps": FPS, "audio": True},
            "profile": "toy",
            "positions": {m: int(s["positions"]) for m, s in classifier.extractor.settings.items()},
            "flow_compile": compile_wanted(None, classifier.extractor.device),
            "load_seconds": round(load_seconds, 3),
            "first_video_seconds": round(first_seconds, 3),
            "repeats": repeats,
            "total_seconds": round(statistics.median(totals), 3),
            "stage_seconds": {
                stage: round(statistics.median(s.get(stage, 0.0) for s in stages), 3)
                for stage in ("decode", "flow", "cnn", "audio", "model")
            },
            "explain_seconds": round(explain_seconds, 3),
            "modalities_used": result["modalities"],
            "first_top1": first["top"][0],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the clip")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args()

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    result = run(max(1, args.repeats), args.device, log)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

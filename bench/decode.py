"""Time fetching K=32 uniformly sampled RGB frames: our PyAV reader versus OpenCV.

Reference (what the speedup divides): OpenCV's VideoCapture reading every frame with `read()`
and keeping the sampled ones, as video_features-style extraction tools do, then the same
resize (short side 256, cv2.INTER_LINEAR) and 224 centre crop. Also reported, not used in the
speedup: OpenCV with `grab()` on every frame and `retrieve()` only on sampled ones (the faster
OpenCV idiom). Same process, same files, readers interleaved, repeated; medians. Clips are
generated in a temp dir: moving texture plus noise (so decoding costs what real footage costs),
h264 at 25 fps, x264's default 250-frame GOP (one keyframe per 10 s clip: no seek can help,
both decode every frame).

Usage: .venv/bin/python bench/decode.py [--json] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extract.video.encode import write_video  # noqa: E402
from extract.video.frames import read_rgb, segment_centres  # noqa: E402

K = 32
FPS = 25.0
SECONDS = 10.0
RESIZE_SHORT, CROP = 256, 224


def textured_frames(width: int, height: int, n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """A smooth random texture panning across the frame, plus fresh noise in every frame."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(
        rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8),
        (width * 2, height * 2),
        interpolation=cv2.INTER_CUBIC,
    )
    for i in range(n):
        dx, dy = (3 * i) % width, (2 * i) % height
        frame = base[dy : dy + height, dx : dx + width].astype(np.int16)
        frame += rng.integers(-12, 13, frame.shape, dtype=np.int16)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _resize_crop(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = RESIZE_SHORT / min(width, height)
    size = (max(RESIZE_SHORT, round(width * scale)), max(RESIZE_SHORT, round(height * scale)))
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    top, left = (size[1] - CROP) // 2, (size[0] - CROP) // 2
    return resized[top : top + CROP, left : left + CROP]


def _wanted(path: Path) -> tuple[set[int], int]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    indices = {int(c * fps + 1e-6) for c in segment_centres(count / fps, K)}
    return indices, count


def opencv_read_all(path: Path) -> np.ndarray:
    """Read every frame (decode + BGR conversion), keep the sampled ones."""
    wanted, _ = _wanted(path)
    capture = cv2.VideoCapture(str(path))
    kept = {}
    index = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        if index in wanted:
            kept[index] = _resize_crop(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    return np.stack([kept[i] for i in sorted(kept)])


def opencv_grab(path: Path) -> np.ndarray:
    """grab() every frame, retrieve() (convert) only the sampled ones."""
    wanted, count = _wanted(path)
    capture = cv2.VideoCapture(str(path))
    kept = []
    for index in range(count):
        if not capture.grab():
            break
        if index in wanted:
            _, bgr = capture.retrieve()
            kept.append(_resize_crop(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    capture.release()
    return np.stack(kept)


def ours(path: Path) -> np.ndarray:
    return read_rgb(path, K, resize_short=RESIZE_SHORT, crop=CROP).frames


def median_seconds(
    readers: dict[str, Callable[[Path], np.ndarray]], path: Path, repeats: int
) -> dict[str, float]:
    """Median wall time of each reader; runs interleaved so load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            read(path)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_case(path: Path, repeats: int) -> dict[str, float]:
    reference, grabbed, mine = opencv_read_all(path), opencv_grab(path), ours(path)
    assert reference.shape == mine.shape == grabbed.shape, (reference.shape, mine.shape)
    readers = {"ours_s": ours, "opencv_read_all_s": opencv_read_all}
    readers["opencv_grab_retrieve_s"] = opencv_grab
    case = median_seconds(readers, path, repeats)
    # same frames, different scalers: a small mean difference, not a different frame
    case["mean_abs_diff_vs_opencv"] = float(np.abs(mine.astype(int) - reference).mean())
    case["speedup_vs_opencv"] = case["opencv_read_all_s"] / case["ours_s"]
    case["speedup_vs_opencv_grab"] = case["opencv_grab_retrieve_s"] / case["ours_s"]
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    # name: (width, height, seconds, keyframe interval); the last is informative (not in the
    # headline ratios): a longer clip with 2 s GOPs, as web video has, where seeking pays.
    cases = {
        "320x240": (320, 240, SECONDS, None),
        "1280x720": (1280, 720, SECONDS, None),
        "640x360_60s_gop50": (640, 360, 60.0, 50),
    }
    result: dict[str, object] = {
        "k": K,
        "clip_seconds": SECONDS,
        "fps": FPS,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height, seconds, gop) in cases.items():
            path = Path(tmp) / f"{name}.mp4"
            frames = textured_frames(width, height, int(seconds * FPS))
            write_video(path, frames, FPS, crf=23, keyframe_interval=gop)
            case = bench_case(path, args.repeats)
            result["cases"][name] = case
            if seconds == SECONDS:
                result[f"speedup_vs_opencv_{name}"] = round(case["speedup_vs_opencv"], 3)
            if not args.json:
                print(
                    f"{name}: ours {case['ours_s']:.3f}s, OpenCV read-all "
                    f"{case['opencv_read_all_s']:.3f}s, OpenCV grab/retrieve "
                    f"{case['opencv_grab_retrieve_s']:.3f}s -> speedup "
                    f"{case['speedup_vs_opencv']:.2f}x",
                    file=sys.stderr,
                )
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

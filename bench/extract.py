"""Feature extraction end to end: ours beside a peer-style pipeline on UCF101-like clips.

Default: UCF101-like clips (bench/ucf_clips.py: 320x240, 25 fps, ~7 s, MPEG-4 Part 2 in AVI,
MP3 stereo) through configs/ucf101.yaml's sampling (32 RGB frames, 32 flow stacks of 6 frames
at 340x256, OpenCV's TV-L1 defaults, 32 audio patches) with the offline Lite0 backbone for RGB
and flow (and `logmel` audio unless VGGish weights are present). Ours is `run_features` on a
local Dask cluster of one worker per core; the peer (bench/peer_extract.py) is a pool of one
process per core. Both are warmed up first (models loaded; our flow compiled if it compiles)
and run in the same process on the same clips, rounds alternating which goes first;
`speedup_vs_peer` is the median of the per-round ratios. Per-stage seconds per video come
from one more pass of each clip on the same workers.

`--toy`: the toy profile over the toy set on clusters of 1 and 2 workers, with per-stage
seconds in this process on 12 clips (docs/benchmarks.md, "Feature extraction").

Usage: .venv/bin/python bench/extract.py [--json] [--videos 4] [--rounds 2] [--seconds 7]
       .venv/bin/python bench/extract.py --toy [--json] [--videos 48] [--root data/toy]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.extract_ours import (  # noqa: E402
    mean_stages,
    timed_run,
    video_stages,
    worker_flow_compiled,
    worker_peak_rss_gb,
    worker_stages,
    worker_warm_up,
    write_seconds,
)
from bench.peer_extract import PEER_THREADS, PeerPool  # noqa: E402
from bench.ucf_clips import AUDIO_RATE, FPS, HEIGHT, WIDTH, write_ucf_like_clips  # noqa: E402
from extract.backbones.vggish import WEIGHTS_NAME, locate  # noqa: E402
from extract.errors import UserError  # noqa: E402
from extract.flow.tvl1_torch import COMPILE_ENV  # noqa: E402
from pipeline.datasets.generated.toy import generate_toy  # noqa: E402
from pipeline.datasets.manifest import load_manifest  # noqa: E402
from pipeline.features.dask_runner import dask_client  # noqa: E402
from pipeline.features.extractor import EXTRACTION_THREADS, VideoFeatureExtractor  # noqa: E402
from pipeline.profiles import load_profile  # noqa: E402
from pipeline.store.feature_store import open_store  # noqa: E402

LITE0 = {"name": "efficientnet_lite0"}


def bench_profile() -> tuple[dict[str, Any], str]:
    """configs/ucf101.yaml with Lite0 for RGB and flow; VGGish audio if its weights are
    here, else `logmel`. (profile, what the audio backbone is and why)."""
    profile = load_profile("ucf101")
    modalities = profile["modalities"]
    modalities["rgb"]["backbone"] = dict(LITE0)
    modalities["flow"]["backbone"] = dict(LITE0)
    try:
        locate(WEIGHTS_NAME, None)
        return profile, "vggish (weights found)"
    except UserError:
        modalities["audio"]["backbone"] = {"name": "logmel"}
        return profile, "logmel (VGGish weights absent)"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (n, D) arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def agreement(store_path: Path, root: Path, peer: list[dict[str, Any]]) -> dict[str, Any]:
    """How close the peer's features are to ours, video by video: cosine per position (mean,
    min) per modality, and the share of RGB positions where both took the same frame."""
    store = open_store(store_path)
    row_of = {str(root / video_id): row for row, video_id in enumerate(store.ids)}
    cosines: dict[str, list[np.ndarray]] = {}
    same_frames = []
    for video in peer:
        row = row_of[video["path"]]
        for name, theirs in video["features"].items():
            ours, mask, times = (part[0] for part in store.read(name, [row])[:3])
            cosines.setdefault(name, []).append(_cosines(ours[mask], theirs))
            if name == "rgb":
                same_frames.append(np.floor(times[mask] * FPS + 1e-3) == video["rgb_indices"])
    result: dict[str, Any] = {
        name: {"cosine_mean": round(float(np.mean(np.concatenate(c))), 4),
               "cosine_min": round(float(np.min(np.concatenate(c))), 4)}
        for name, c in cosines.items()}
    result["rgb_same_frame_share"] = round(float(np.mean(np.concatenate(same_frames))), 4)
    return result


def _stage_split(client: Any, settings: Mapping[str, Any], clips: list[Path],
                 out: Path) -> dict[str, float]:
    """Ours per stage: each clip once more on the cluster (as many at once as workers)."""
    futures = [client.submit(worker_stages, settings, str(p), pure=False) for p in clips]
    per_video, rows = zip(*client.gather(futures), strict=True)
    extractor = VideoFeatureExtractor(settings["modalities"], settings["limits"], "cpu")
    return mean_stages(list(per_video), write_seconds(extractor, list(rows), out))


def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    """Ours vs the peer-style pipeline on the same clips, rounds alternating."""
    profile, audio_backbone = bench_profile()
    for settings_of_modality in profile["modalities"].values():
        settings_of_modality["positions"] = args.positions or settings_of_modality["positions"]
    settings = {"modalities": profile["modalities"], "limits": profile["limits"],
                "device": "cpu"}
    workers = os.cpu_count() or 1
    load_before = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "clips"
        clips = write_ucf_like_clips(root / "Bench", args.videos, args.seconds)
        peer = PeerPool(profile["modalities"], profile["limits"], tmp_path / "peer", workers)
        with dask_client(workers=workers) as client:
            scheduler = client.scheduler.address
            warm = client.run(worker_warm_up, settings, str(clips[0]))
            peer_results: list[dict[str, Any]] = []
            for index in range(args.rounds):
                out = tmp_path / f"ours-{index}.zarr"
                order = ("ours", "peer") if index % 2 == 0 else ("peer", "ours")
                seconds: dict[str, float] = {}
                for who in order:
                    if who == "ours":
                        run = timed_run(root, profile, out, scheduler, kind="folder")
                        seconds["ours"] = run["seconds"]
                        if run["videos"] != len(clips):
                            raise RuntimeError(f"ours extracted {run['videos']} of {len(clips)}")
                    else:
                        seconds["peer"], peer_results = peer.run(clips)
                ours_rate, peer_rate = len(clips) / seconds["ours"], len(clips) / seconds["peer"]
                rounds.append({"first": order[0], "ours_s": round(seconds["ours"], 2),
                               "peer_s": round(seconds["peer"], 2),
                               "ours_videos_per_s": round(ours_rate, 4),
                               "peer_videos_per_s": round(peer_rate, 4),
                               "ratio": round(ours_rate / peer_rate, 3)})
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
            agree = agreement(out, root, peer_results)
            ours_stages = _stage_split(client, settings, clips, tmp_path / "stages.zarr")
            compiled = client.run(worker_flow_compiled)
        peer.close()
    return {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "clips": {"count": len(clips), "seconds": args.seconds, "size": [WIDTH, HEIGHT],
                  "fps": FPS, "container": "avi", "video": "mpeg4 (MPEG-4 Part 2)",
                  "audio": f"mp3 (libmp3lame), {AUDIO_RATE} Hz stereo"},
        "profile": {"based_on": "configs/ucf101.yaml", "rgb_flow_backbone": LITE0["name"],
                    "audio_backbone": audio_backbone,
                    "positions": {m: s["positions"] for m, s in profile["modalities"].items()},
                    "flow": {k: profile["modalities"]["flow"][k]
                             for k in ("frames_per_stack", "size", "backend", "params")}},
        "rounds": args.rounds,
        "threads": {"ours": f"{workers} Dask worker processes x 1 thread, torch "
                            f"{EXTRACTION_THREADS} thread, OMP_NUM_THREADS 1",
                    "peer": f"{workers} pool processes x {PEER_THREADS} cv2 thread + "
                            f"{PEER_THREADS} torch thread"},
        "flow_compiled": all(compiled.values()),
        COMPILE_ENV: os.environ.get(COMPILE_ENV),
        "warm_up_s_per_worker": sorted(round(s, 1) for s in warm.values()),
        "videos_per_s": round(statistics.median(r["ours_videos_per_s"] for r in rounds), 4),
        "peer_videos_per_s": round(statistics.median(r["peer_videos_per_s"] for r in rounds), 4),
        "speedup_vs_peer": round(statistics.median(r["ratio"] for r in rounds), 3),
        "stage_seconds_per_video": {
            "ours": ours_stages, "peer": mean_stages([r["seconds"] for r in peer_results])},
        "agreement": agree,
        "per_round": rounds,
    }


def toy_report(args: argparse.Namespace) -> dict[str, Any]:
    """The toy profile on clusters of 1 and 2 workers, and per-stage seconds in this process."""
    profile = load_profile("toy")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = args.root or generate_toy(tmp_path / "toy", videos=288, progress=not args.json)
        manifest = load_manifest("ucf101", root)
        total = len(manifest.existing())  # here: a generated set is gone after the block
        sample = [manifest.path(v) for v in manifest.existing()[:: max(1, 288 // 12)]][:12]
        extractor = VideoFeatureExtractor(profile["modalities"], profile["limits"], "cpu")
        extractor.extract(sample[0])  # warm-up: first-call costs are not per-video costs
        per_video, rows = zip(*(video_stages(extractor, p) for p in sample), strict=True)
        stages = mean_stages(list(per_video),
                             write_seconds(extractor, list(rows), tmp_path / "stages.zarr"))
        runs = {}
        for workers in (1, 2):
            with dask_client(workers=workers) as client:
                run = timed_run(root, profile, tmp_path / f"{workers}.zarr",
                                client.scheduler.address, limit=args.videos)
                run["peak_rss_gb_per_worker"] = sorted(
                    round(p, 3) for p in client.run(worker_peak_rss_gb).values())
            runs[workers] = run
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "videos_in_toy_set": total,
        "videos_per_run": args.videos,
        "videos_per_s_1_worker": runs[1]["videos_per_s"],
        "videos_per_s_2_workers": runs[2]["videos_per_s"],
        "stage_seconds": stages,
        "peak_rss_gb_per_worker_1_worker": runs[1]["peak_rss_gb_per_worker"],
        "peak_rss_gb_per_worker_2_workers": runs[2]["peak_rss_gb_per_worker"],
        "estimated_toy_set_minutes_2_workers": round(total / runs[2]["videos_per_s"] / 60, 1),
        "runs": {"1_worker": runs[1], "2_workers": runs[2]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--toy", action="store_true", help="the toy-set measurements instead")
    parser.add_argument("--videos", type=int, help="clips per round [4]; --toy: per run [48]")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of ours and peer [2]")
    parser.add_argument("--seconds", type=float, default=7.0, help="clip length [7]")
    parser.add_argument("--positions", type=int,
                        help="positions of every modality instead of the profile's 32 "
                             "(a quick check; the figures need the default)")
    parser.add_argument("--root", type=Path, help="--toy: an existing toy set [generate one]")
    args = parser.parse_args()
    args.videos = args.videos or (48 if args.toy else 4)
    report = toy_report(args) if args.toy else end_to_end(args)
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

"""What the crc32c checksum on every inner chunk costs: write time, read time, bytes on disk.

Two stores are written in one process through the real path (`create_store`, then
`FeatureStore.write_rows` one shard at a time), alike but for the codec: the one stores make
now (zstd + crc32c) and one with zstd alone (`create.CHECKSUMMED` swapped). Rows are the
sizes of docs/store-format.md's measurement (rgb 16 x 1280, flow 8 x 1280, audio 16 x 128,
float16 values of a ReLU, like backbone features). Each store is written, read whole and
verified (`find_damage`, every chunk decoded) `--repeats` times, alternating; the median is
reported, and the ratio checksummed / plain. `verify_seconds` is `store info --verify`'s work.

Usage: .venv/bin/python bench/store_checksum.py [--videos N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from zarr.codecs import ZstdCodec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pipeline.store.create as create  # noqa: E402
from pipeline.store.feature_store import open_store  # noqa: E402
from pipeline.store.format import ModalitySpec, Status  # noqa: E402
from pipeline.store.verify import CHECKSUMMED, find_damage  # noqa: E402

SHAPES = {"rgb": (16, 1280), "flow": (8, 1280), "audio": (16, 128)}
PLAIN = (ZstdCodec(level=0, checksum=False),)


def rows_of(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: {"status": Status.DONE, "time": np.arange(length, dtype=np.float32),
                    "features": np.maximum(rng.standard_normal((length, dim)), 0)
                    .astype(np.float16)}
             for name, (length, dim) in SHAPES.items()} for _ in range(n)]


def one_run(path: Path, results: list[dict], codecs: tuple) -> dict[str, float]:
    create.CHECKSUMMED = codecs
    n = len(results)
    modalities = {name: ModalitySpec(length, dim, {"bench": name})
                  for name, (length, dim) in SHAPES.items()}
    began = time.perf_counter()
    store = create.create_store(path, dataset="bench", task="single", classes=["a", "b"],
                                ids=[f"v{i:06d}.mp4" for i in range(n)],
                                labels=np.zeros(n, dtype=np.int32), modalities=modalities)
    for start in range(0, n, store.rows_per_shard):
        stop = min(n, start + store.rows_per_shard)
        store.write_rows(range(start, stop), results[start:stop])
    written = time.perf_counter() - began
    began = time.perf_counter()
    reopened = open_store(path)
    for name in SHAPES:
        reopened.read(name)
    read = time.perf_counter() - began
    report = find_damage(reopened, full=True)
    assert not report.damaged
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    shutil.rmtree(path)
    return {"write_seconds": written, "read_seconds": read, "verify_seconds": report.seconds,
            "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = rows_of(args.videos)
    runs: dict[str, list[dict[str, float]]] = {"checksum": [], "plain": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for label in ("checksum", "plain") if repeat % 2 == 0 else ("plain", "checksum"):
                codecs = CHECKSUMMED if label == "checksum" else PLAIN
                runs[label].append(one_run(Path(folder) / f"{label}.zarr", results, codecs))
    median = {label: {key: statistics.median(run[key] for run in values) for key in values[0]}
              for label, values in runs.items()}
    ratio = {key: median["checksum"][key] / median["plain"][key] for key in median["plain"]}
    print(json.dumps({"videos": args.videos, "repeats": args.repeats, "median": median,
                      "ratio_checksum_over_plain": ratio}, indent=2))


if __name__ == "__main__":
    main()

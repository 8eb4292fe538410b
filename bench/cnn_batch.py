"""CPU forward batch of the image backbones: per-input time of Lite0 at several batch sizes.

Why: `ImageBackbone` splits every batch into CPU_FORWARD_BATCH inputs per forward pass on CPU
(extract/backbones/image.py); this is the measurement behind that number. One torch thread
(as a `features` worker), RGB frames 224x224 and flow stacks 340x256x10 like
configs/ucf101.yaml's, random uint8 inputs (the arithmetic does not depend on the values),
rounds interleaved, median per batch size. Prints JSON: seconds per 32 inputs and each batch
size's time as a ratio to batch 32's.

Usage: .venv/bin/python bench/cnn_batch.py [--rounds 3] [--sizes 1,4,32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extract.backbones.image import CPU_FORWARD_BATCH  # noqa: E402
from extract.backbones.registry import build_backbone  # noqa: E402

INPUTS = 32
SHAPES = {"rgb": (224, 224, 3), "flow": (256, 340, 10)}


@torch.inference_mode()
def forward_seconds(backbone, items: np.ndarray, batch: int) -> float:
    """The network alone over `items` in batches of `batch` (no CPU split of its own)."""
    started = time.perf_counter()
    for i in range(0, len(items), batch):
        backbone.network(backbone.to_nchw(items[i : i + batch]))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,4,32")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    result: dict = {"threads": 1, "inputs": INPUTS, "cpu_forward_batch": CPU_FORWARD_BATCH}
    for modality, shape in SHAPES.items():
        backbone = build_backbone({"name": "efficientnet_lite0"}, modality)
        items = rng.integers(0, 256, (INPUTS, *shape), dtype=np.uint8)
        forward_seconds(backbone, items[:2], 1)  # first-call allocations
        times: dict[int, list[float]] = {b: [] for b in sizes}
        for _ in range(args.rounds):
            for b in sizes:
                times[b].append(forward_seconds(backbone, items, b))
        median = {b: statistics.median(t) for b, t in times.items()}
        reference = median[max(sizes)]
        result[modality] = {
            "seconds": {str(b): round(m, 3) for b, m in median.items()},
            f"ratio_to_batch_{max(sizes)}": {str(b): round(m / reference, 3)
                                               for b, m in median.items()},
        }
        print(json.dumps({modality: result[modality]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

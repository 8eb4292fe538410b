"""Is bf16 autocast safe for the Flash-MNIST grid? fp32 and bf16 trained side by side.

For a few grid configurations, trains the same model (same seed, same batches) once with
the forward pass in fp32 and once under bf16 autocast, on the feature store `cli.py
reproduce` wrote, and reports the test top-1 after every epoch of both and the time ratio
(fp32 seconds / bf16 seconds, measured in this process, rounds interleaved). The grid's
default precision is bf16 only because of what this prints; docs/reproduction.md quotes it
(`--write-docs` saves it as docs/reproduction-precision.json).

Usage: .venv/bin/python bench/flash_precision.py [--store data/flash-mnist/features.zarr]
       [--quick] [--write-docs]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.store.feature_store import open_store  # noqa: E402
from pipeline.study.report import PRECISION_CHECK, machine_description  # noqa: E402
from pipeline.study.settings import GridConfig  # noqa: E402
from pipeline.study.side_by_side import check_arguments, train_variant  # noqa: E402

# (unit, N, epochs): small N learn slowly, so they get more epochs; N=128 costs the most.
RUNS = (("linear", 8, 8), ("mlp_shared", 8, 8), ("linear", 128, 3))
QUICK_RUNS = (("linear", 4, 2),)


def main() -> None:
    args = check_arguments(__doc__.splitlines()[0], PRECISION_CHECK)
    store = open_store(args.store)
    train_rows = int((store.splits[:, 0] == 1).sum())
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for unit, units, epochs in QUICK_RUNS if args.quick else RUNS:
            cell = GridConfig(unit, units, shifting=True, seed=0)
            curves, seconds = {}, {}
            for precision in ("fp32", "bf16"):
                curves[precision], seconds[precision] = train_variant(
                    args.store, Path(scratch) / f"{cell.name}-{precision}", cell, epochs,
                    precision)
            runs.append({
                "config": f"{unit} N={units}", "epochs": epochs,
                "fp32_top1": curves["fp32"][-1], "bf16_top1": curves["bf16"][-1],
                "fp32_top1_per_epoch": curves["fp32"], "bf16_top1_per_epoch": curves["bf16"],
                "fp32_seconds": round(seconds["fp32"], 1),
                "bf16_seconds": round(seconds["bf16"], 1),
                "speedup": seconds["fp32"] / seconds["bf16"],
            })
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {"machine": f"{machine_description(torch.device('cpu'))}, 1 thread",
              "videos_per_class": train_rows // len(store.classes), "runs": runs}
    print(json.dumps(result, indent=2))
    if args.write_docs:
        write_json_atomic(Path("docs") / PRECISION_CHECK, result)


if __name__ == "__main__":
    main()

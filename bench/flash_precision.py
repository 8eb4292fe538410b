"""Which lower precisions are safe for the Flash-MNIST grid? fp32 and each trained side by side.

For a few grid configurations, trains the same model (same seed, same batches) once with the
forward pass in fp32 and once in a lower precision (pipeline/train/precision.py: bf16, the
whole forward pass under bf16 autocast; bf16_head, only the classifier head), on the feature
store `cli.py reproduce` wrote, and reports the test top-1 after every epoch of both and the
time ratio (fp32 seconds / the other's, measured in this process); with several seeds, the
means and each seed's result. The grid lets a unit train
in a lower precision (settings.BF16_UNITS, HEAD_BF16_UNITS) only because of what this prints;
docs/reproduction.md quotes it (`--write-docs` adds these runs to
docs/reproduction-precision.json, replacing earlier runs of the same configuration and
precision).

Usage: .venv/bin/python bench/flash_precision.py [--store data/flash-mnist/features.zarr]
       [--quick] [--only bf16|bf16_head] [--write-docs]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.store.feature_store import open_store  # noqa: E402
from pipeline.study.report import PRECISION_CHECK, machine_description, read_check  # noqa: E402
from pipeline.study.settings import GridConfig  # noqa: E402
from pipeline.study.side_by_side import check_parser, checked, train_variant  # noqa: E402

# (unit, N, epochs, precision, seeds): small N learn slowly, so they get more epochs; N=128
# costs the most, and is where the head's share of a step is largest. Several seeds where
# the two precisions' difference must be told from the spread between seeds.
RUNS = (("linear", 8, 8, "bf16", (0,)), ("mlp_shared", 8, 8, "bf16", (0,)),
        ("linear", 128, 3, "bf16", (0,)), ("mlp_shared", 8, 8, "bf16_head", (0, 1, 2)),
        ("mlp_shared", 128, 2, "bf16_head", (0,)))
QUICK_RUNS = (("linear", 4, 2, "bf16", (0, 1)),)


def main() -> None:
    parser = check_parser(__doc__.splitlines()[0], PRECISION_CHECK)
    parser.add_argument("--only", choices=("bf16", "bf16_head"),
                        help="only the runs of this precision")
    args = checked(parser.parse_args())
    store = open_store(args.store)
    train_rows = int((store.splits[:, 0] == 1).sum())
    machine = f"{machine_description(torch.device('cpu'))}, 1 thread"
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for unit, units, epochs, low, seeds in QUICK_RUNS if args.quick else RUNS:
            if args.only and low != args.only:
                continue
            curves: dict[str, list[list[float]]] = {"fp32": [], low: []}
            seconds = {"fp32": 0.0, low: 0.0}
            for seed in seeds:
                cell = GridConfig(unit, units, shifting=True, seed=seed)
                for precision in ("fp32", low):
                    curve, took = train_variant(
                        args.store, Path(scratch) / f"{cell.name}-{precision}", cell, epochs,
                        precision)
                    curves[precision].append(curve)
                    seconds[precision] += took
            last = {p: [c[-1] for c in runs_of] for p, runs_of in curves.items()}
            runs.append({
                "config": f"{unit} N={units}", "epochs": epochs, "precision": low,
                "seeds": list(seeds),
                "fp32_top1": statistics.mean(last["fp32"]), "low_top1": statistics.mean(last[low]),
                "fp32_top1_by_seed": last["fp32"], "low_top1_by_seed": last[low],
                "fp32_top1_per_epoch": curves["fp32"][0], "low_top1_per_epoch": curves[low][0],
                "fp32_seconds": round(seconds["fp32"], 1), "low_seconds": round(seconds[low], 1),
                "speedup": seconds["fp32"] / seconds[low], "machine": machine,
            })
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {"videos_per_class": train_rows // len(store.classes), "runs": runs}
    print(json.dumps(result, indent=2))
    if args.write_docs:
        path = Path("docs") / PRECISION_CHECK
        new = {(r["config"], r["precision"]) for r in runs}
        kept = [r for r in (read_check(path.parent, PRECISION_CHECK) or {}).get("runs", [])
                if (r["config"], r["precision"]) not in new]
        write_json_atomic(path, {**result, "runs": kept + runs})


if __name__ == "__main__":
    main()

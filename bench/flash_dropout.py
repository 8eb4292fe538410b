"""Why do the Flash-MNIST rows without shifting learn so little? Dropout on raw features.

Without shifting, the classifier sees weighted averages of the LeNet's log-probabilities:
far from zero and nearly the same for every video. The authors' dropout 0.5 before the
classifier then zeroes half of a vector whose size dwarfs what tells videos apart. This
trains configurations without shifting as the grid does (dropout 0.5) and with dropout 0,
same seed and batches, on the feature store `cli.py reproduce` wrote, and reports the
features' offset and spread and the test top-1 after every epoch of both;
docs/reproduction.md quotes it (`--write-docs` saves docs/reproduction-dropout.json).

Usage: .venv/bin/python bench/flash_dropout.py [--store data/flash-mnist/features.zarr]
       [--quick] [--write-docs]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.atomic import write_json_atomic  # noqa: E402
from pipeline.store.feature_store import open_store  # noqa: E402
from pipeline.study.flash_features import MODALITY  # noqa: E402
from pipeline.study.report import DROPOUT_CHECK, machine_description  # noqa: E402
from pipeline.study.settings import DROPOUT, GridConfig  # noqa: E402
from pipeline.study.side_by_side import check_parser, checked, train_variant  # noqa: E402

# (unit, N, epochs), all without shifting
RUNS = (("avg", 1, 5), ("linear", 8, 5))
QUICK_RUNS = (("avg", 1, 2),)
STATISTICS_VIDEOS = 10_000  # enough for the offset and spread to three digits


def pooled_statistics(store_path: Path) -> dict[str, float]:
    """Over training videos' frame-averaged features: the mean value of a coordinate (the
    offset) and its standard deviation across videos (what tells them apart), averaged over
    the 50 coordinates."""
    store = open_store(store_path)
    rows = min(STATISTICS_VIDEOS, len(store.ids))
    (features,) = store.read(MODALITY, slice(0, rows), fields=("features",))
    pooled = features.astype(np.float32).mean(axis=1)
    return {"offset": float(pooled.mean()), "spread": float(pooled.std(axis=0).mean()),
            "videos": rows}


def main() -> None:
    args = checked(check_parser(__doc__.splitlines()[0], DROPOUT_CHECK).parse_args())
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for unit, units, epochs in QUICK_RUNS if args.quick else RUNS:
            cell = GridConfig(unit, units, shifting=False, seed=0)
            curves = {}
            for dropout in (DROPOUT, 0.0):
                curves[dropout], _ = train_variant(
                    args.store, Path(scratch) / f"{cell.name}-{dropout}", cell, epochs, "fp32",
                    dropout=dropout)
            runs.append({"config": f"{unit} N={units}", "epochs": epochs,
                         "grid_dropout": DROPOUT,
                         "grid_top1_per_epoch": curves[DROPOUT],
                         "no_dropout_top1_per_epoch": curves[0.0]})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {"machine": f"{machine_description(torch.device('cpu'))}, 1 thread",
              "features": pooled_statistics(args.store), "runs": runs}
    print(json.dumps(result, indent=2))
    if args.write_docs:
        write_json_atomic(Path("docs") / DROPOUT_CHECK, result)


if __name__ == "__main__":
    main()

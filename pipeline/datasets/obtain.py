"""`data generate` and `data get`: make a generated dataset, or fetch a real one, by name.

The generated datasets (toy, flash-mnist) are made offline and deterministically from a seed;
`get` makes them only when their marker file is missing, so `make demo` reuses what it made.
"""

from __future__ import annotations

from pathlib import Path

GENERATED = ("toy", "flash-mnist")
MARKERS = {"toy": "toy.json", "flash-mnist": "flash-mnist.zarr/zarr.json"}


def generate_dataset(name: str, out: Path, seed: int = 0, videos: int | None = None,
                     mnist_dir: Path | None = None, source: str = "auto") -> Path:
    """Write generated dataset `name` into `out`; `videos` is toy's clip count or
    Flash-MNIST's training videos per class (each generator's default when None)."""
    if name == "toy":
        from pipeline.datasets.generated.toy import generate_toy

        return generate_toy(out, seed=seed, **({"videos": videos} if videos else {}))
    from pipeline.datasets.generated.flash_mnist import generate_flash_mnist

    return generate_flash_mnist(out, seed=seed, mnist_dir=mnist_dir, source=source,
                                **({"per_class_train": videos} if videos else {}))


def get_dataset(name: str, out: Path) -> tuple[Path, bool]:
    """(folder, made now): generate a missing generated dataset, or download a real one."""
    if name in GENERATED:
        if (out / MARKERS[name]).exists():
            return out, False
        return generate_dataset(name, out), True
    from pipeline.datasets.download.sources import fetch_dataset

    return fetch_dataset(name, out), True

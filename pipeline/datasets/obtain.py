"""`data generate` and `data get`: make a generated dataset, or fetch a real one, by name.

The generated datasets (toy, flash-mnist) are made offline and deterministically from a seed;
`get` makes them only when the file each generator writes last is missing, so `make demo`
reuses what it made. Generators are imported only when used (cli.py imports this module).
"""

from __future__ import annotations

from pathlib import Path

GENERATED = ("toy", "flash-mnist")


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


def generated_marker(name: str, out: Path) -> Path:
    """The file whose presence means generated dataset `name` is complete in `out`."""
    if name == "toy":
        from pipeline.datasets.generated.toy import MANIFEST_NAME

        return out / MANIFEST_NAME
    from pipeline.datasets.generated.flash_mnist import STORE_NAME

    return out / STORE_NAME / "zarr.json"


def get_dataset(name: str, out: Path) -> tuple[Path, bool]:
    """(folder, made now): generate a missing generated dataset, or download a real one."""
    if name in GENERATED:
        if generated_marker(name, out).exists():
            return out, False
        return generate_dataset(name, out), True
    from pipeline.datasets.download.sources import fetch_dataset

    return fetch_dataset(name, out), True

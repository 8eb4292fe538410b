"""Software versions recorded in stores and checkpoints, so each file explains what made it."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata

# What can change a stored feature: decoding, flow, backbones, the array format.
STORE_PACKAGES = ("attention-clusters", "zarr", "numpy", "torch", "torchvision", "av",
                  "opencv-contrib-python-headless", "librosa")
# What decides whether a checkpoint's network reproduces.
CHECKPOINT_PACKAGES = ("torch", "numpy")


def software_versions(packages: Iterable[str]) -> dict[str, str]:
    """{"python": ..., package: version} for each installed package of `packages`."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions

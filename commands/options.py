"""What several commands share: the default dataset, path-or-URL arguments, --device, and the
default places of data and stores."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.remote.urls import Location, as_location

DATASET = os.environ.get("DATASET", "toy")
MANIFEST_KINDS = ("ucf101", "hmdb51", "kinetics400", "folder")


class PathOrUrl(click.ParamType):
    """A local path (a `Path`) or an fsspec URL such as s3://bucket/name.zarr (kept as text:
    `Path` would fold `s3://` into `s3:/`)."""

    name = "path or URL"

    def convert(self, value: object, param: object, ctx: object) -> Location:
        return value if isinstance(value, Path) else as_location(str(value))


PATH_OR_URL = PathOrUrl()

device_option = click.option("--device", type=click.Choice(("auto", "cpu", "cuda")),
                             default="auto", show_default=True)


def dataset_paths(dataset: str, root: Location | None, out: Location | None
                  ) -> tuple[Location, Location]:
    """The dataset's folder and its store: data/DATASET and features/DATASET.zarr by default."""
    return root or Path("data") / dataset, store_for(dataset, out)


def store_for(dataset: str, store_path: Location | None) -> Location:
    """The store a command reads: the one given, else features/DATASET.zarr."""
    return store_path or Path("features") / f"{dataset}.zarr"

"""What the store format defines, in one place: its name and version, the row status and split
codes, what a modality stores, the root attributes a reader requires, and the error every
store problem is reported as.

Every module that writes, reads or tests a store takes these codes from here, so the values on
disk (docs/store-format.md) have exactly one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from extract.errors import UserError

FORMAT_NAME = "attention-clusters-features"
FORMAT_VERSION = 2  # 2 adds videos/size, videos/mtime_ns and videos/listed (a v1 store reads)
REBUILD = "rerun `cli.py features` with --overwrite to start it over"
REQUIRED_ATTRIBUTES: dict[str, type] = {"dataset": str, "task": str, "classes": list,
                                        "modalities": dict}


class StoredCode(IntEnum):
    """A uint8 code the store holds, with the lower-case name summaries print."""

    @property
    def label(self) -> str:
        return self.name.lower()


class Status(StoredCode):
    """Per-row, per-modality state; the values are what `<modality>/status` holds."""

    PENDING = 0
    DONE = 1
    FAILED = 2
    ABSENT = 3


COMPLETE = (Status.DONE, Status.ABSENT)


class Split(StoredCode):
    """A video's role in one official split; the values are what `videos/split` holds."""

    UNUSED = 0
    TRAIN = 1
    TEST = 2


class StoreError(UserError):
    """The store cannot be created, opened, resumed or written; the message says what to do."""


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality stores: L positions of D-wide features, made by `config`."""

    positions: int
    dim: int
    config: Mapping[str, Any]


def damaged(path: Any, what: str) -> StoreError:
    """The one-line error for a store whose metadata or arrays are not what the format says."""
    return StoreError(f"{path} is damaged: {what} ({REBUILD})")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_attributes(path: Any, attrs: Any) -> None:
    """Refuse root attributes that are not a readable store of this format (or a newer one)."""
    if not isinstance(attrs, Mapping) or attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not an attention-clusters feature store")
    if "format_version" not in attrs:
        raise damaged(path, "its zarr.json has no format_version")
    version = attrs["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise damaged(path, f"format_version {version!r} is not an integer >= 1")
    if version > FORMAT_VERSION:
        raise StoreError(f"{path}: format version {version} is newer than this software "
                         f"supports ({FORMAT_VERSION}); upgrade attention-clusters")
    for key, kind in REQUIRED_ATTRIBUTES.items():
        if key not in attrs:
            raise damaged(path, f"its zarr.json has no '{key}'")
        if not isinstance(attrs[key], kind):
            raise damaged(path, f"'{key}' is {_kind(attrs[key])}, not {_kind(kind())}")
    if attrs["task"] not in ("single", "multi"):
        raise damaged(path, f"task {attrs['task']!r} is neither 'single' nor 'multi'")
    if not all(isinstance(name, str) for name in attrs["classes"]):
        raise damaged(path, "'classes' holds something that is not a class name")
    for name, config in attrs["modalities"].items():
        if not isinstance(config, Mapping) or not name or "/" in name or name == "videos":
            raise damaged(path, f"modality {name!r} is not a name with a config object")

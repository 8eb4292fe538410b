"""What store format v1 defines, in one place: its name and version, the row status and split
codes, what a modality stores, and the error every store problem is reported as.

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
FORMAT_VERSION = 1


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

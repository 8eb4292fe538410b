"""Creating and deleting a store on object storage, where nothing can be renamed into place.

On disk a new store is built as a `.partial` folder and renamed in. An object store has no
rename, so a store at a URL is built in place with a marker object `.creating` inside it,
written first and removed once the root zarr.json names the format (written last, as on
disk). A prefix with the marker and no format is the leftover of a killed creation: the next
run deletes it (only objects Zarr writes, and the marker) and starts again. Plain Zarr readers
never see the marker: it is not a Zarr key.
"""

from __future__ import annotations

import json

from pipeline.remote import objects
from pipeline.remote.urls import join
from pipeline.store.format import FORMAT_NAME, StoreError

MARKER = ".creating"


def is_zarr_key(name: str) -> bool:
    """A zarr.json, or a chunk/shard object under an array's `c/` prefix."""
    parts = name.split("/")
    return parts[-1] == "zarr.json" or "c" in parts[:-1]


def _named_format(store: str) -> str | None:
    found = objects.read(join(store, "zarr.json"))
    try:
        attrs = json.loads(found[0]).get("attributes", {}) if found else {}
        return attrs.get("format") if isinstance(attrs, dict) else None
    except (ValueError, AttributeError):
        return None


def interrupted(store: str) -> bool:
    """Whether `store` is what a creation killed half way left (marker, no format yet)."""
    return objects.exists(join(store, MARKER)) and _named_format(store) is None


def _foreign(store: str) -> str | None:
    return next((name for name in objects.files_under(store)
                 if name != MARKER and not is_zarr_key(name)), None)


def clear_interrupted(store: str) -> None:
    """Delete the leftovers of a killed creation, unless something else was put there."""
    if (name := _foreign(store)) is not None:
        raise StoreError(f"{store} holds {name}, which this project did not write: choose "
                         f"another --out")
    objects.remove_tree(store)


def begin(store: str) -> None:
    """Mark `store` as being created; refused where the prefix already holds objects."""
    if (found := objects.files_under(store)):
        raise StoreError(f"{store} already holds objects (e.g. {found[0]}) but no feature "
                         f"store: choose another --out")
    objects.create(join(store, MARKER), b"")


def finish(store: str) -> None:
    objects.remove(join(store, MARKER))


def remove_store(store: str) -> None:
    """Delete a store for --overwrite, under the rules that hold on disk: a root zarr.json
    naming this format, or naming none and only Zarr objects beside it."""
    refusal = f"--overwrite deletes only a feature store, so {store} was not deleted"
    if not objects.exists(join(store, "zarr.json")):
        raise StoreError(f"{store} is not an attention-clusters feature store (no zarr.json): "
                         f"{refusal}")
    named = _named_format(store)
    if named is not None and named != FORMAT_NAME:
        raise StoreError(f"{store} holds a Zarr store of another format ({named!r}): "
                         f"{refusal}")
    if named is None and (name := _foreign(store)) is not None:
        raise StoreError(f"{store} has no readable feature-store metadata and holds {name}, "
                         f"which Zarr did not write: {refusal}")
    objects.remove_tree(store)

"""The record of finished grid configurations, docs/reproduction.json, shared by every run.

Why a committed file and not only runs/: the authors' grid takes tens of CPU hours, so it is
completed over several sessions on machines that keep nothing; every configuration's result
goes into docs/reproduction.json the moment it finishes, and the next run continues from what
that file holds. Each entry carries a key (the features it was trained on, the training
settings, the seed) and the epochs it ran, so a result is reused only for exactly the same
work (one cut short by `reproduce --hours` stands, labelled, until a run has time for all).
Several processes fill one grid together: each claims a configuration with an exclusive
flock on runs/<grid>/claims/<name>.lock (dropped by the kernel when a process dies, however
it dies) and updates the ledger under another flock, re-reading it first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json_atomic

LEDGER_NAME = "reproduction.json"


@contextlib.contextmanager
def exclusive(path: Path, wait: bool) -> Iterator[bool]:
    """Hold an exclusive flock on `path` for the block; yields False (without waiting) when
    `wait` is False and another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(runs_dir: Path, name: str) -> contextlib.AbstractContextManager[bool]:
    """True inside the block when this process may train configuration `name`."""
    return exclusive(runs_dir / "claims" / f"{name}.lock", wait=False)


def read_ledger(docs_dir: Path) -> dict[str, Any]:
    """The ledger's content ({} when absent or unreadable: a fresh grid)."""
    try:
        content = json.loads((docs_dir / LEDGER_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def recorded(ledger: dict[str, Any], name: str, key: str) -> dict[str, Any] | None:
    """The ledger's entry for this exact work, however many epochs it ran."""
    for entry in ledger.get("results", []):
        if entry.get("name") == name and entry.get("key") == key:
            return entry
    return None


def finished(ledger: dict[str, Any], name: str, key: str, epochs: int) -> bool:
    """Whether this exact work was done for all of its epochs."""
    entry = recorded(ledger, name, key)
    return entry is not None and entry.get("epochs") == epochs


def current_results(ledger: dict[str, Any], key_of: dict[str, str]) -> list[dict[str, Any]]:
    """Entries whose key is the one this run would give their configuration."""
    return [e for e in ledger.get("results", [])
            if e.get("key") is not None and key_of.get(e.get("name")) == e.get("key")]


def update_ledger(docs_dir: Path, fields: dict[str, Any], result: dict[str, Any] | None,
                  key_of: dict[str, str]) -> dict[str, Any]:
    """Set the top-level `fields` and add (or replace) one result, keeping the other entries
    made with the same keys and dropping the rest (results of other features or settings)."""
    with exclusive(docs_dir / f".{LEDGER_NAME}.lock", wait=True):
        ledger = read_ledger(docs_dir)
        results = [e for e in current_results(ledger, key_of)
                   if result is None or e["name"] != result["name"]]
        if result is not None:
            results.append(result)
        order = list(key_of)
        results.sort(key=lambda e: order.index(e["name"]))
        ledger = {**ledger, **fields, "results": results}
        write_json_atomic(docs_dir / LEDGER_NAME, ledger)
    return ledger

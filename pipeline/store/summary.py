"""`store info`: what a store holds and what is left to do, as a dict (for --json) or text.

A running `features` may replace a shard between two reads of the same store, which zarr
reports as a decoding error (or, with checksums, as damage); while a run holds the store's
lock `read_summary` retries then and says the counts are a snapshot, so `store info` works
during a run and still reports real damage when no run is writing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.remote.urls import as_location
from pipeline.store.feature_store import FeatureStore, open_store
from pipeline.store.format import Status, StoreError
from pipeline.store.lock import writer_of

READ_ATTEMPTS = 3
RETRY_SECONDS = 0.5


def summarize(store: FeatureStore, max_failures: int = 20) -> dict[str, Any]:
    """Counts per modality and status, the first failures with their errors, the configs.

    Counts are of the listed videos: vanished ones (not listed by the last run, kept in the
    store for a later run that lists them again) are counted apart."""
    modalities = {}
    listed = np.flatnonzero(store.listed)
    for name, spec in store.modalities.items():
        status = store.status(name)[listed]
        counts = Counter({s.label: 0 for s in Status})
        counts.update(Status(int(value)).label for value in status)
        failed_rows = listed[status == Status.FAILED][:max_failures]
        errors = store.errors(name) if len(failed_rows) else None
        failures = [{"row": int(r), "id": store.ids[r], "error": str(errors[int(r)])}
                    for r in failed_rows]
        streams = Counter(int(s) for s in store.streams(name)[listed] if s >= 0)
        modalities[name] = {"positions": spec.positions, "dim": spec.dim,
                            "counts": dict(counts), "failures": failures,
                            "streams": {str(index): n for index, n in sorted(streams.items())},
                            "config": spec.config}
    return {"path": str(store.path), "format_version": store.format_version,
            "dataset": store.dataset, "task": store.task,
            "videos": int(store.listed.sum()), "vanished": int((~store.listed).sum()),
            "classes": len(store.classes), "splits": store.split_names,
            "rows_per_shard": store.rows_per_shard, "created": store.created,
            "software": store.software, "modalities": modalities}


def read_summary(path: str | Path) -> dict[str, Any]:
    """The summary of the store at `path`, retried while a running `features` rewrites it."""
    attempt = 1
    while True:
        writer = writer_of(as_location(path))
        try:
            summary = summarize(open_store(path))
        except (RuntimeError, ValueError, StoreError) as exc:  # a shard replaced mid-read?
            if isinstance(exc, StoreError) and writer is None:
                raise  # nobody is writing: what it says is so
            if attempt == READ_ATTEMPTS:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"{path} changed while being read ({exc}); try again") from exc
            attempt += 1
            time.sleep(RETRY_SECONDS)
            continue
        summary["writer"] = writer.describe() if writer else None
        return summary


def _describe_config(config: Mapping[str, Any]) -> str:
    """One line of the settings that matter most; `store info --json` has the full config."""
    plain = [f"{k}={v}" for k, v in config.items() if not isinstance(v, Mapping)]
    backbone = config.get("backbone", {})
    spec = backbone.get("spec", backbone) if isinstance(backbone, Mapping) else {}
    if spec.get("name"):
        weights = backbone.get("weights")
        plain.append(f"backbone={spec['name']}" + (f" ({weights})" if weights else ""))
    return ", ".join(plain) or "(not recorded)"


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable `store info`: what the store holds and what is left to do."""
    lines = [
        f"{summary['path']}: dataset {summary['dataset']} ({summary['task']}-label), "
        f"{summary['videos']} videos, {summary['classes']} classes"
        + (f"; {summary['vanished']} vanished videos kept (not listed by the last run, not "
           f"used)" if summary["vanished"] else ""),
        f"splits: {', '.join(summary['splits']) or 'none'}; created {summary['created']}; "
        f"format v{summary['format_version']}, {summary['rows_per_shard']} rows per shard",
    ]
    if summary.get("writer"):
        lines.append(f"being written now by {summary['writer']}: the counts are a snapshot")
    for name, info in summary["modalities"].items():
        counts = info["counts"]
        described = ", ".join(f"{counts[s.label]} {s.label}" for s in Status)
        lines.append(f"{name}: {info['positions']} x {info['dim']}: {described}")
        lines.append(f"  extraction: {_describe_config(info['config'])}")
        if set(info["streams"]) - {"0"}:  # some files hold a cover picture or a still first
            used = ", ".join(f"stream {index}: {n}" for index, n in info["streams"].items())
            lines.append(f"  videos per stream decoded: {used}")
        for failure in info["failures"]:
            lines.append(f"  failed {failure['id']}: {failure['error']}")
        shown = len(info["failures"])
        if counts["failed"] > shown:
            lines.append(f"  ... and {counts['failed'] - shown} more failures")
    return "\n".join(lines)

"""Dask worker processes and glibc malloc: the local cluster starts its workers without Dask's
MALLOC_TRIM_THRESHOLD_ (it made torch 2x slower in them), and a cluster started elsewhere
with it is named in one line."""

from __future__ import annotations

import logging
import os

import dask
from distributed import LocalCluster

from pipeline.features.dask_runner import dask_client
from pipeline.features.worker_malloc import (
    LOCAL_WORKER_CONFIG,
    MMAP_VARIABLE,
    TRIM_VARIABLE,
    WORKER_FIX,
    slow_malloc_workers,
)


def _worker_variables() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in (TRIM_VARIABLE, MMAP_VARIABLE)}


def test_local_workers_start_without_dask_trim_setting() -> None:
    assert dask.config.get("distributed.nanny.pre-spawn-environ")[TRIM_VARIABLE] is not None, (
        "Dask's default no longer sets the trim threshold: this module may be unneeded")
    with dask_client(workers=1) as client:
        seen = list(client.run(_worker_variables).values())
        assert seen == [{TRIM_VARIABLE: None, MMAP_VARIABLE: None}]
        assert slow_malloc_workers(client) == []
    assert TRIM_VARIABLE not in os.environ  # the nanny did not set it in this process either


def test_workers_started_with_the_trim_setting_are_named(capsys) -> None:
    """Two workers started elsewhere: one with Dask's setting, one with it and the fix."""
    settings = {**LOCAL_WORKER_CONFIG}  # nothing exported into this process by the nannies
    slow_env = {TRIM_VARIABLE: "65536"}
    fixed_env = {TRIM_VARIABLE: "65536", MMAP_VARIABLE: WORKER_FIX.split("=")[1]}
    with dask.config.set(settings), LocalCluster(
            n_workers=0, processes=True, dashboard_address=":0",
            silence_logs=logging.ERROR) as cluster:
        base = cluster.new_spec
        cluster.worker_spec["slow"] = {**base, "options": {**base["options"], "env": slow_env}}
        cluster.worker_spec["fixed"] = {**base, "options": {**base["options"], "env": fixed_env}}
        cluster.scale(2)
        cluster.wait_for_workers(2)
        with dask_client(cluster.scheduler_address) as client:
            slow = slow_malloc_workers(client)
            names = {info["name"]: address
                     for address, info in client.scheduler_info()["workers"].items()}
        assert slow == [names["slow"]]
    assert TRIM_VARIABLE not in os.environ
    # dask_client checked the workers when it joined and said so in one line
    lines = [line for line in capsys.readouterr().err.splitlines() if TRIM_VARIABLE in line]
    assert len(lines) == 1
    assert names["slow"] in lines[0] and names["fixed"] not in lines[0]
    assert WORKER_FIX in lines[0]

"""Inputs several test files share, built once per session and read-only for the tests.

* `toy_videos`: 12 clips of the toy dataset (seed 3), exactly as `generate_toy` writes them.
* `toy_dataset`: (root, profile): a copy of those clips with one corrupt file added to the
  three trainlists, and tests/profiles.py's TINY_PROFILE as a file.
* `toy_store`: the features of `toy_dataset` (13 rows, the corrupt one failed), made the way
  `make features` makes them: one LocalCluster worker process. The kill -9 test in
  tests/system/ runs `cli.py features` like that and requires the two stores to be equal bit
  for bit (extraction runs at one torch thread in every process, so the worker count does
  not change a bit: tests/test_worker_count.py).
* `toy_checkpoint`: a 2-epoch training run on `toy_store`.
* `inprocess_scheduler`: the address of a Dask cluster whose worker is threads of this process,
  for runs whose values are checked (pass `scheduler=` to `run_features` / `run_tasks`):
  nothing to spawn, import and warm up per run. Tests about processes start their own.

The dataset and the store are checked at the end of the session: a test that changed them
fails there. A test that needs to modify one copies it first (shutil.copytree into tmp_path).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.datasets.generated.toy import generate_toy
from pipeline.features.run import run_features
from pipeline.profiles import load_profile
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train
from tests.profiles import TINY_PROFILE

SYSTEM = Path(__file__).resolve().parent / "system"
TOY_MODALITIES = ("rgb", "flow", "audio")
CORRUPT_ID = "RedLeftLow/v_RedLeftLow_g01_c99.mp4"
# Eager TV-L1 in every test (and the processes they start) unless a test opts in: the compiled
# CPU default builds its artefact once per machine, about a minute (tests/test_flow_aot.py).
os.environ.setdefault("AC_FLOW_COMPILE", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Value tests first (quick feedback), then the process-level ones of tests/system/."""
    items.sort(key=lambda item: SYSTEM in item.path.parents)


def fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of every file under `folder`: changes if anything is written."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def toy_videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """12 toy clips (one per class, 4 without audio) in UCF101's layout; read-only."""
    root = generate_toy(tmp_path_factory.mktemp("toy-videos") / "toy", seed=3, videos=12,
                        progress=False)
    before = fingerprint(root)
    yield root
    assert fingerprint(root) == before, f"a test modified the shared toy set {root}"


@pytest.fixture(scope="session")
def toy_dataset(toy_videos: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[Path, Path]]:
    """(root, profile): the 12 toy clips plus one corrupt file in the lists; read-only."""
    base = tmp_path_factory.mktemp("toy-dataset")
    root = base / "toy"
    shutil.copytree(toy_videos, root)
    broken = root / CORRUPT_ID
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    lists = root / "ucfTrainTestlist"
    label = next(line.split()[0] for line in (lists / "classInd.txt").read_text().splitlines()
                 if line.split()[1] == "RedLeftLow")
    for split in (1, 2, 3):
        with open(lists / f"trainlist0{split}.txt", "a") as handle:
            handle.write(f"{CORRUPT_ID} {label}\n")
    profile = base / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    before = fingerprint(base)
    yield root, profile
    assert fingerprint(base) == before, f"a test modified the shared toy dataset {base}"


@pytest.fixture(scope="session")
def toy_store(toy_dataset: tuple[Path, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The feature store of `toy_dataset` from one worker process, eager TV-L1; read-only."""
    root, profile = toy_dataset
    out = tmp_path_factory.mktemp("toy-store") / "toy.zarr"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AC_FLOW_COMPILE", "0")  # also in the worker it starts
        run_features(kind="ucf101", root=root, profile=load_profile(profile), out=out,
                     dataset="toy", workers=1, device="cpu", progress=False)
    before = fingerprint(out)
    yield out
    assert fingerprint(out) == before, f"a test modified the shared store {out}"


@pytest.fixture(scope="session")
def toy_checkpoint(toy_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of 2 epochs on `toy_store` (4 clusters per modality)."""
    config = TrainConfig(epochs=2, batch_size=4, clusters={m: 4 for m in TOY_MODALITIES},
                         device="cpu", progress=False)
    return train(toy_store, tmp_path_factory.mktemp("toy-run") / "run", config).checkpoint


@pytest.fixture(scope="session")
def inprocess_scheduler() -> Iterator[str]:
    """Address of an in-process Dask cluster: 1 worker, 2 threads, all in this process."""
    from distributed import LocalCluster

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


from tests.s3_server import s3_bucket, s3_endpoint  # noqa: E402,F401  (fixtures)

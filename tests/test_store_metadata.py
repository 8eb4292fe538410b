"""Damaged or foreign store metadata (issue 11, items 12 and 15): every reader refuses it with
one line naming the store and what is wrong, and `features --overwrite` can always start over
on a damaged store, while still refusing to delete a folder that is not surely a store.

Each damage is made on purpose on a real store written by `create_store`; `store info` runs
through cli.py's own entry point in this process (all 14 damages), `train` and
`features --overwrite` as real `cli.py` processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

import cli as cli_entry
from pipeline.store.create import partial_path
from pipeline.store.feature_store import open_store
from pipeline.store.format import FORMAT_NAME, StoreError
from pipeline.train.data import load_split
from tests.hostile import clip_dataset
from tests.processes import ROOT
from tests.profiles import CHEAP_PROFILE
from tests.test_store import make_store, write_all


def edit_attributes(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        metadata = json.loads((path / "zarr.json").read_text())
        change(metadata["attributes"])
        (path / "zarr.json").write_text(json.dumps(metadata))
    return damage


def truncate(name: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        text = (path / name).read_bytes()
        (path / name).write_bytes(text[: len(text) // 2])
    return damage


def remove(name: str) -> Callable[[Path], None]:
    return lambda path: shutil.rmtree(path / name)


# damage -> the words the one error line must hold
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated zarr.json": (truncate("zarr.json"), "zarr.json is not valid JSON"),
    "zarr.json is a list": (lambda p: (p / "zarr.json").write_text("[1, 2]"),
                            "zarr.json holds a JSON list, not an object"),
    "attributes are a list": (
        lambda p: (p / "zarr.json").write_text(
            '{"zarr_format": 3, "node_type": "group", "attributes": [1]}'),
        "the attributes in zarr.json are not an object"),
    "no modalities": (edit_attributes(lambda a: a.pop("modalities")),
                      "its zarr.json has no 'modalities'"),
    "modalities a list": (edit_attributes(lambda a: a.update(modalities=["rgb"])),
                          "'modalities' is a list, not an object"),
    "classes a string": (edit_attributes(lambda a: a.update(classes="jump run")),
                         "'classes' is a string, not a list"),
    "unknown task": (edit_attributes(lambda a: a.update(task="many")),
                     "task 'many' is neither"),
    "string format_version": (edit_attributes(lambda a: a.update(format_version="1")),
                              "format_version '1' is not an integer"),
    "no format_version": (edit_attributes(lambda a: a.pop("format_version")),
                          "has no format_version"),
    "no id array": (remove("videos/id"), "array videos/id is missing"),
    "id data lost": (remove("videos/id/c"), "videos/id has 10 empty ids of 10"),
    "modality without arrays": (remove("rgb"), "array rgb/features is missing"),
    "status metadata truncated": (truncate("flow/status/zarr.json"),
                                  "the metadata of flow/status is unreadable"),
    "status too short": (lambda p: zarr.open_array(p / "audio" / "status", mode="r+")
                         .resize((4,)), "audio/status has 4 rows, videos/id 10"),
}


def damaged_store(tmp_path: Path, damage: str) -> Path:
    path = tmp_path / "s.zarr"
    write_all(make_store(path, n=10), range(10))
    DAMAGES[damage][0](path)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def cli_here(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
             *args: str) -> subprocess.CompletedProcess[str]:
    """`cli.py ARGS` through its real entry point in this process (no interpreter start):
    the same parsing, error handling and exit code; a traceback would fail the test."""
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])
    with pytest.raises(SystemExit) as exited:
        cli_entry.run()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, exited.value.code, out, err)


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGES)
def test_every_reader_refuses_damage_with_one_line(tmp_path: Path, damage: str, capsys,
                                                   monkeypatch) -> None:
    path = damaged_store(tmp_path, damage)
    words = DAMAGES[damage][1]
    line = one_line_error(cli_here(capsys, monkeypatch, "store", "info", str(path)), str(path),
                          words)
    assert "--overwrite" in line  # says the way out
    for read in (open_store, lambda p: open_store(p, writable=True), load_split):
        with pytest.raises(StoreError, match=words.replace("(", r"\(")):
            read(path)
    with pytest.raises(StoreError, match="is damaged"):  # resuming on it is refused too
        make_store(path, n=10)


@pytest.mark.parametrize("damage", ["truncated zarr.json", "no id array"])  # the rest: readers
def test_train_on_a_damaged_store_is_one_line(tmp_path: Path, damage: str) -> None:
    path = damaged_store(tmp_path, damage)
    one_line_error(cli("train", "--features", str(path), "--device", "cpu"), str(path),
                   DAMAGES[damage][1])


@pytest.mark.parametrize("damage", DAMAGES)
def test_overwrite_starts_a_damaged_store_over(tmp_path: Path, damage: str) -> None:
    path = damaged_store(tmp_path, damage)
    fresh = make_store(path, n=7, overwrite=True)
    assert fresh.n == 7 and fresh.todo_rows().tolist() == list(range(7))
    assert open_store(path).n == 7


def test_features_overwrite_on_a_damaged_store_through_the_cli(tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    root = clip_dataset(tmp_path / "clips", 2)
    profile = tmp_path / "cheap.yaml"
    profile.write_text(CHEAP_PROFILE)
    out = damaged_store(tmp_path, "truncated zarr.json")
    command = ("features", "clips", "--root", str(root), "--config", str(profile), "--out",
               str(out), "--workers", "1", "--device", "cpu")
    one_line_error(cli_here(capsys, monkeypatch, *command), str(out),
                   "zarr.json is not valid JSON")
    done = cli(*command, "--overwrite")  # a real process: the whole run
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "finished: 2/2 items" in done.stdout
    store = open_store(out)
    assert store.n == 2 and store.dataset == "clips" and not len(store.todo_rows())


def test_overwrite_never_deletes_what_may_not_be_a_store(tmp_path: Path) -> None:
    def refused(path: Path, words: str) -> None:
        before = sorted(p.relative_to(path) for p in path.rglob("*"))
        with pytest.raises(StoreError, match=words):
            make_store(path, n=3, overwrite=True)
        assert sorted(p.relative_to(path) for p in path.rglob("*")) == before

    mine = tmp_path / "videos"  # the user's files, no zarr.json
    mine.mkdir()
    (mine / "keep.mp4").write_bytes(b"data")
    refused(mine, r"no zarr.json\): --overwrite deletes only a feature store, so .* was not")

    unreadable = tmp_path / "mixed.zarr"  # a damaged zarr.json beside a file Zarr never writes
    write_all(make_store(unreadable, n=3), range(3))
    truncate("zarr.json")(unreadable)
    (unreadable / "rgb" / "notes.txt").write_text("mine")
    refused(unreadable, r"no readable feature-store metadata and holds rgb/notes.txt")

    foreign = tmp_path / "other.zarr"  # somebody else's Zarr store
    zarr.open_group(foreign, mode="w").create_array("x", shape=(3,), dtype="int8")[:] = 1
    zarr.open_group(foreign, mode="r+").attrs["format"] = "something-else"
    refused(foreign, r"holds a Zarr store of another format \('something-else'\)")

    file = tmp_path / "file.zarr"
    file.write_text("not a folder")
    with pytest.raises(StoreError, match="no zarr.json"):
        make_store(file, n=3, overwrite=True)
    assert file.read_text() == "not a folder"


def test_overwrite_deletes_a_store_whose_metadata_names_no_format(tmp_path: Path) -> None:
    """zarr.json readable but its attributes wiped: deleted, because only Zarr files are
    there (a killed write's temporary file counts as one); no partial folder is left."""
    path = tmp_path / "wiped.zarr"
    write_all(make_store(path, n=4), range(4))
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (path / f"zarr.{'0' * 31}a.partial").write_text("{")  # a killed zarr.json write
    with pytest.raises(StoreError, match="not an attention-clusters feature store"):
        open_store(path)
    assert make_store(path, n=4, overwrite=True).todo_rows().tolist() == [0, 1, 2, 3]
    assert not partial_path(path).exists()
    assert zarr.open_group(path, mode="r").attrs["format"] == FORMAT_NAME


def test_a_store_with_one_id_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    make_store(path, n=4)
    ids = zarr.open_array(path / "videos" / "id", mode="r+")
    ids[3] = str(ids[0])
    with pytest.raises(StoreError, match="videos/id names a video twice"):
        open_store(path)
    assert np.asarray(ids[:]).shape == (4,)

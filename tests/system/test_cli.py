"""The CLI as a user meets it, as a process: help everywhere, one clear line on stderr and
exit 1 for mistakes (2 for a bad option), never a traceback; `reproduce` included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("command", [[], ["data"], ["data", "validate"], ["features"],
                                     ["store", "info"], ["train"], ["evaluate"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_missing_dataset_root(tmp_path: Path) -> None:
    assert_one_line_error(cli("data", "validate", "ucf101", "--root", str(tmp_path / "nope")),
                          "nope")


def test_validate_accepts_a_generated_toy_set(toy_videos: Path) -> None:
    result = cli("data", "validate", "ucf101", "--root", str(toy_videos))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12 classes" in result.stdout or "classes: 12" in result.stdout


def test_validate_reports_problems_with_exit_1(tmp_path: Path) -> None:
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 Jump\n")
    for n in (1, 2, 3):
        (lists / f"trainlist0{n}.txt").write_text("Jump/v_Jump_g01_c01.avi 1\n")
        (lists / f"testlist0{n}.txt").write_text("../escape.avi\n")
    result = cli("data", "validate", "ucf101", "--root", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "v_Jump_g01_c01.avi" in result.stdout and "escape.avi" in result.stdout


def test_store_info_on_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    assert_one_line_error(cli("store", "info", str(tmp_path)), "not an attention-clusters")


def test_features_without_data_says_where_it_looked(tmp_path: Path) -> None:
    assert_one_line_error(cli("features", "toy", "--root", str(tmp_path / "absent"),
                              "--out", str(tmp_path / "s.zarr")), "absent")


def test_features_with_a_bad_profile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("modalities:\n  rgb: {positons: 3}\n")
    assert_one_line_error(cli("features", "toy", "--config", str(bad)), "positons")


def test_train_without_store(tmp_path: Path) -> None:
    assert_one_line_error(cli("train", "--features", str(tmp_path / "none.zarr")), "none.zarr")


def test_evaluate_without_any_checkpoint(tmp_path: Path) -> None:
    assert_one_line_error(cli("evaluate", "--dataset", "toy", cwd=tmp_path), "make train")


def test_bad_option_value_is_a_usage_error() -> None:
    result = cli("features", "toy", "--workers", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--workers" in result.stderr


def test_cli_reproduce_has_help() -> None:
    result = cli("reproduce", "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout
    for option in ("--quick", "--epochs", "--precision", "--jobs", "--sizes", "--units",
                   "--no-progress"):
        assert option in result.stdout


@pytest.mark.parametrize(("args", "expected"), [
    (["--sizes", "0,x"], "--sizes must be whole numbers, got '0,x'"),
    (["--epochs", "0"], "--epochs must be positive, got 0"),
    (["--precision", "fp16"], "--precision must be one of auto, fp32, bf16, bf16_head, got 'fp16'"),
])
def test_cli_reproduce_refuses_a_bad_value_in_one_line(tmp_path: Path, args: list[str],
                                                      expected: str) -> None:
    result = cli("reproduce", *args, "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs"), "--docs-dir", str(tmp_path / "docs"))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {expected}"]
    assert not any(tmp_path.iterdir())  # refused before anything was written

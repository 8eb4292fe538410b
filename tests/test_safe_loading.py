"""Checkpoints from strangers: a pickle payload is refused without running, a cut file is named.

The payload's `__reduce__` opens a marker file for writing, so running it leaves evidence. The
control test proves the payload is live (plain pickle does create the file); the others load
it through `cli.py evaluate`, `cli.py classify` and `pipeline.classify.load_classifier` and check
the one-line error and that the marker was never created.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

import cli
from extract.errors import UserError
from pipeline.inference.classify import load_classifier
from pipeline.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint


class CreatesFile:
    """Pickled, it becomes `open(target, "w")`: loading it with pickle creates the file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (open, (str(self.target), "w"))


def malicious(kind: str, path: Path, marker: Path) -> Path:
    """A zip checkpoint (torch.save) with valid-looking keys, or a legacy raw pickle."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
               "model_config": CreatesFile(marker), "state_dict": {}, "classes": ["a"],
               "task": "single", "modalities": {}}
    if kind == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def genuine(path: Path) -> Path:
    """A checkpoint written by the project's own writer (atomic torch.save of plain data)."""
    return save_checkpoint(path, {"model_config": {"modalities": {"rgb": [8, 2]}},
                                  "state_dict": {"weight": torch.arange(4096.0)},
                                  "classes": ["a", "b"], "task": "single", "modalities": {}})


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`cli.py ARGS` in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])
    with pytest.raises(SystemExit) as exited:
        cli.run()
    return int(exited.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_payload_is_live_under_plain_pickle(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "control.txt"
    path = malicious(kind, tmp_path / "evil.pt", marker)
    if kind == "zip":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_evaluate_refuses_a_pickle_payload(kind: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned.txt"
    path = malicious(kind, tmp_path / "evil.pt", marker)
    code, stderr = run_cli(["evaluate", "--checkpoint", str(path), "--features",
                            str(tmp_path / "none.zarr"), "--device", "cpu"], monkeypatch, capsys)
    assert code == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith(f"error: {path} is not a valid checkpoint (unreadable or unsafe")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "raw"])
def test_classify_refuses_a_pickle_payload(kind: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned.txt"
    path = malicious(kind, tmp_path / "evil.pt", marker)
    with pytest.raises(UserError, match=r"evil\.pt is not a valid checkpoint"):
        load_classifier(path, device="cpu")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not looked at: the checkpoint is refused first")
    code, stderr = run_cli(["classify", str(video), "--checkpoint", str(path), "--device", "cpu"],
                           monkeypatch, capsys)
    assert code == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith(f"error: {path} is not a valid checkpoint"), stderr
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_truncated_checkpoint_is_a_clear_error(keep: float, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    whole = genuine(tmp_path / "whole.pt")
    assert torch.load(whole, weights_only=True)["classes"] == ["a", "b"]  # the intact file reads
    cut = tmp_path / "cut.pt"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    code, stderr = run_cli(["evaluate", "--checkpoint", str(cut), "--features",
                            str(tmp_path / "none.zarr"), "--device", "cpu"], monkeypatch, capsys)
    assert code == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith(f"error: {cut} is not a valid checkpoint"), stderr
    with pytest.raises(UserError, match=r"cut\.pt is not a valid checkpoint"):
        load_classifier(cut, device="cpu")

"""Torch thread counts of training and classify (pipeline/train/config.py torch_threads):
one thread unless AC_TORCH_THREADS says otherwise, the caller's count given back after."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pipeline.train.loop as loop
from extract.errors import UserError
from pipeline.train.config import THREADS_ENV, TrainConfig, threads_wanted, torch_threads


def test_the_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads_wanted() == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert threads_wanted() == 3
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(UserError, match="AC_TORCH_THREADS='two': expected a thread count"):
        threads_wanted()


def test_training_runs_at_one_thread_and_gives_the_callers_back(
        toy_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    seen: list[int] = []
    original = loop.train_epoch

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", recording)
    with torch_threads(2):
        config = TrainConfig(epochs=1, batch_size=4, clusters={"rgb": 2, "flow": 2,
                                                               "audio": 2},
                             device="cpu", progress=False)
        loop.train(toy_store, tmp_path / "run", config)
        assert torch.get_num_threads() == 2
    assert seen == [1]

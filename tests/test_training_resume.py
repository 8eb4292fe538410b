"""A killed training run continues from last.pt to the very weights of an uninterrupted one,
and the lower precisions (pipeline/train/precision.py) train as well as fp32 (on small
synthetic stores, tests/fake_store.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import pipeline.train.loop as loop
from extract.errors import UserError
from model.network import AttentionClusterNet
from pipeline.train.checkpoint import load_checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train
from pipeline.train.precision import PRECISIONS, forward_in
from pipeline.training_state import LAST_NAME, discard_other_state
from tests.fake_store import make_store


def config(**overrides: object) -> TrainConfig:
    values: dict = {"epochs": 5, "batch_size": 16, "clusters": {"rgb": 3, "audio": 2},
                    "unit": "linear", "dropout": 0.2, "lr": 3e-3, "progress": False,
                    "device": "cpu", "schedule": "step"}
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("stores") / "resume.zarr", n=160)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_killed_run_resumes_to_the_uninterrupted_weights(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train(store, tmp_path / "straight", config(), resume=True)
    assert not (straight.out_dir / LAST_NAME).exists()  # a finished run leaves no last.pt

    monkeypatch.setattr(loop, "SAVE_INTERVAL_S", 0.0)  # save after every epoch
    real_epoch = loop.train_epoch

    def dies_in_epoch_4(*args, **kwargs):
        if args[-1] == 4:
            raise KeyboardInterrupt  # the process is stopped mid-run
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", dies_in_epoch_4)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(store, out, config(), resume=True)
    saved = torch.load(out / LAST_NAME, weights_only=True)["progress"]
    assert saved["epoch"] == 3 and len(saved["history"]) == 3

    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    resumed = train(store, out, config(), resume=True)
    assert resumed.history == straight.history  # dropout, batches and lr schedule continue
    assert resumed.best_epoch == straight.best_epoch and resumed.steps == straight.steps
    final, expected = weights(resumed.checkpoint), weights(straight.checkpoint)
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == straight.history
    # Each epoch's wall time is kept beside the history, the killed run's through last.pt.
    assert resumed.epoch_seconds[:3] == saved["epoch_seconds"] and len(resumed.epoch_seconds) == 5
    assert all(s > 0 for s in resumed.epoch_seconds)
    assert json.loads((out / "metrics.json").read_text())["epoch_seconds"] == resumed.epoch_seconds
    assert (out / "confusion.png").stat().st_size > 0  # drawn from best.pt after a resume
    assert not (out / LAST_NAME).exists()


def test_a_run_out_of_time_stops_after_an_epoch_and_a_later_run_finishes_it(
        store: Path, tmp_path: Path) -> None:
    straight = train(store, tmp_path / "straight", config(), resume=True,
                     stop_by=time.time() + 3600)  # time enough: as without stop_by
    assert len(straight.history) == straight.epochs == 5
    assert not (straight.out_dir / LAST_NAME).exists()
    out = tmp_path / "short"
    short = train(store, out, config(), resume=True, stop_by=time.time())  # no time left
    assert short.history == straight.history[:1] and short.epochs == 5
    assert torch.load(out / LAST_NAME, weights_only=True)["progress"]["epoch"] == 1
    assert json.loads((out / "metrics.json").read_text())["epochs"] == short.history
    # A last.pt written before epoch times were kept: its epochs are untimed (None), not lost.
    state = torch.load(out / LAST_NAME, weights_only=True)
    del state["progress"]["epoch_seconds"]
    torch.save(state, out / LAST_NAME)
    finished = train(store, out, config(), resume=True)
    assert finished.history == straight.history and not (out / LAST_NAME).exists()
    assert finished.epoch_seconds[0] is None and all(s > 0 for s in finished.epoch_seconds[1:])
    final, expected = weights(finished.checkpoint), weights(straight.checkpoint)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_last_state_of_other_settings_is_refused(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "SAVE_INTERVAL_S", 0.0)
    real_epoch = loop.train_epoch

    def dies_in_epoch_2(*args, **kwargs):
        if args[-1] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(store, tmp_path, config(), resume=True)
    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    with pytest.raises(UserError, match="other settings"):
        train(store, tmp_path, config(lr=1e-2), resume=True)
    # Without resume the folder's last.pt is neither read nor written.
    fresh = train(store, tmp_path, config(lr=1e-2))
    assert len(fresh.history) == 5 and (tmp_path / LAST_NAME).exists()
    assert not discard_other_state(tmp_path, config().resumable_settings())  # same: kept
    assert discard_other_state(tmp_path, config(lr=1e-2).resumable_settings())  # deleted
    assert not (tmp_path / LAST_NAME).exists()


@pytest.mark.parametrize("precision", ["bf16", "bf16_head"])
def test_lower_precisions_train_like_fp32(store: Path, tmp_path: Path, precision: str) -> None:
    full = train(store, tmp_path / "fp32", config(epochs=6, schedule="none"))
    half = train(store, tmp_path / precision,
                 config(epochs=6, schedule="none", precision=precision))
    assert half.best_metrics["top1"] > 0.75  # chance is 0.25
    assert abs(half.best_metrics["top1"] - full.best_metrics["top1"]) <= 0.1
    assert half.history != full.history  # it did run in lower precision
    assert all(v.dtype == torch.float32 for v in weights(half.checkpoint).values())
    with pytest.raises(UserError, match="precision must be one of fp32, bf16, bf16_head"):
        config(precision="fp16")


def test_bf16_head_leaves_the_attention_in_fp32() -> None:
    torch.manual_seed(0)
    model = AttentionClusterNet({"rgb": (12, 4)}, num_classes=5, unit="mlp_shared",
                                shifting=True, dropout=0.0, head="linear", hidden=8).eval()
    inputs = {"rgb": (torch.randn(3, 7, 12), torch.ones(3, 7, dtype=torch.bool),
                      torch.ones(3, dtype=torch.bool))}
    cpu = torch.device("cpu")
    plain_logits, plain_attention = model(inputs)
    logits, attention = {}, {}
    for precision in PRECISIONS:
        logits[precision], attention[precision] = forward_in(model, inputs, precision, cpu)
    assert torch.equal(logits["fp32"], plain_logits)  # fp32 is the plain forward pass
    assert logits["fp32"].dtype == torch.float32
    assert logits["bf16"].dtype == logits["bf16_head"].dtype == torch.bfloat16
    assert torch.equal(attention["bf16_head"]["rgb"], plain_attention["rgb"])
    assert not torch.equal(attention["bf16"]["rgb"], plain_attention["rgb"])
    torch.testing.assert_close(logits["bf16_head"].float(), plain_logits, rtol=0.05, atol=0.05)


def test_training_takes_denormal_numbers_as_zero_and_restores_the_default(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Denormals cost x86 CPUs microcode time late in long runs (precision.py)."""
    tiny = torch.tensor([1e-39])  # below float32's smallest normal number, 1.2e-38
    seen = []
    real_epoch = loop.train_epoch

    def looking(*args, **kwargs):
        seen.append(float(tiny * 1.0))
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", looking)
    assert float(tiny * 1.0) > 0
    train(store, tmp_path, config())
    assert len(seen) == 5 and set(seen) == {0.0}
    assert float(tiny * 1.0) > 0  # torch's default again afterwards

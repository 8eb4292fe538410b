"""Reading stores for training, training itself, checkpoints and evaluation, on small
synthetic stores written with plain zarr (tests/fake_store.py)."""

from __future__ import annotations

import json
import pickle
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import pipeline.train.data as train_data
from extract.errors import UserError
from pipeline.atomic import json_text, write_json_atomic
from pipeline.store.format import Split, Status
from pipeline.train.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.data import load_part, load_split
from pipeline.train.evaluate import evaluate, evaluate_splits
from pipeline.train.loop import train
from tests.fake_store import make_store

SMALL = {"rgb": 3, "audio": 2}


def quick_config(**overrides: object) -> TrainConfig:
    values: dict = {
        "epochs": 4,
        "batch_size": 16,
        "clusters": SMALL,
        "unit": "linear",
        "dropout": 0.2,
        "lr": 3e-3,
        "progress": False,
        "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig.from_dict(values)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "single.zarr"
    statuses = {
        "audio": {2: Status.ABSENT, 3: Status.ABSENT, 4: Status.FAILED, 5: Status.PENDING},
        "rgb": {6: Status.ABSENT},
    }
    return make_store(path, n=160, statuses=statuses, unlabelled=(7,), num_splits=3)


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory):
    return train(store, tmp_path_factory.mktemp("run"), quick_config(epochs=6))


def split_column(store: Path, split: int) -> np.ndarray:
    return np.asarray(zarr.open_group(str(store), mode="r")["videos/split"][:, split - 1])


def test_rows_selected_and_exclusions_counted(store: Path) -> None:
    data = load_split(store, split=2, memory_budget_gb=1.0)
    column = split_column(store, 2)
    # Row 2, 3: audio absent but rgb done -> used; row 6: rgb absent, audio done -> used;
    # row 4 failed and row 5 pending in audio, row 7 unlabelled -> excluded.
    used = set(data.train.rows) | set(data.test.rows)
    assert {2, 3, 6} <= used and not {4, 5, 7} & used
    assert set(data.train.rows) == set(np.flatnonzero(column == Split.TRAIN)) - {4, 5, 7}
    counts = data.counts
    assert counts["train"].failed + counts["test"].failed == 1
    assert counts["train"].pending + counts["test"].pending == 1
    assert counts["train"].unlabelled + counts["test"].unlabelled == 1
    assert not data.streamed
    # Only rgb: the audio statuses no longer matter, but rgb-absent row 6 is absent everywhere.
    rgb_only = load_split(store, split=2, modalities=["rgb"])
    rgb_used = set(rgb_only.train.rows) | set(rgb_only.test.rows)
    assert {4, 5} <= rgb_used and 6 not in rgb_used
    assert rgb_only.counts["train"].all_absent + rgb_only.counts["test"].all_absent == 1


def collect(source, batch_size: int, shuffle: bool, seed: int = 0):
    labels, rgb, present = [], [], []
    for inputs, target in source.batches(batch_size, shuffle=shuffle, seed=seed):
        assert inputs["rgb"][0].dtype == torch.float16
        assert len(target) <= batch_size
        labels.append(target)
        rgb.append(inputs["rgb"][0])
        present.append(inputs["audio"][2])
    return torch.cat(labels), torch.cat(rgb), torch.cat(present)


def test_streamed_equals_in_memory(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_data, "BLOCK_BYTES", 1)  # one chunk (16 rows) per block
    memory = load_split(store, split=1, streaming="off")
    streamed = load_split(store, split=1, streaming="on", num_workers=0)
    assert streamed.streamed and len(streamed.train.blocks) > 3
    for block_start, block_stop, _ in streamed.train.blocks:
        assert block_start % 16 == 0 and block_stop - block_start <= 16
    in_order = collect(memory.train, 10, shuffle=False)
    for left, right in zip(in_order, collect(streamed.train, 10, shuffle=False), strict=True):
        assert torch.equal(left, right)
    # Shuffled: same multiset of rows, another order, reproducible for a seed.
    shuffled = collect(streamed.train, 10, shuffle=True, seed=3)
    assert not torch.equal(shuffled[0], in_order[0])
    assert torch.equal(torch.sort(shuffled[0]).values, torch.sort(in_order[0]).values)
    assert torch.equal(shuffled[1], collect(streamed.train, 10, shuffle=True, seed=3)[1])
    # Absent audio rows are flagged not present.
    assert (~in_order[2]).sum() == len({2, 3} & set(memory.train.rows))


def test_streaming_with_a_loader_worker(store: Path) -> None:
    streamed = load_split(store, split=1, streaming="on", num_workers=1)
    labels, _, _ = collect(streamed.train, 32, shuffle=True)
    assert len(labels) == len(streamed.train)


def test_auto_streams_when_over_budget(store: Path) -> None:
    assert load_split(store, split=1, memory_budget_gb=1e-6).streamed
    assert not load_split(store, split=1, memory_budget_gb=1.0).streamed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modalities": ["depth"]}, r"unknown modality 'depth'.*available: rgb, audio"),
        ({"split": 4}, r"split 4 does not exist.*3 split\(s\), numbered 1 to 3"),
        ({"split": 0}, r"split 0 does not exist"),
    ],
)
def test_store_user_errors(store: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_split(store, **kwargs)


def test_missing_or_foreign_store(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.zarr does not exist: run `make features`"):
        load_split(tmp_path / "nope.zarr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("hello")
    with pytest.raises(UserError, match="junk is not an attention-clusters feature store"):
        load_split(tmp_path / "junk")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["format"] = "something-else"
    with pytest.raises(UserError, match="not an attention-clusters feature store"):
        load_split(tmp_path / "other.zarr")


def test_no_training_rows(tmp_path: Path) -> None:
    failed = dict.fromkeys(range(20), Status.FAILED)
    path = make_store(tmp_path / "failed.zarr", n=20, statuses={"rgb": failed})
    with pytest.raises(UserError, match=r"no usable training rows.*failed"):
        load_split(path, modalities=["rgb"])


def test_one_class_is_refused_not_reported_as_100_percent(tmp_path: Path) -> None:
    path = make_store(tmp_path / "one.zarr", n=40, classes=1)
    with pytest.raises(UserError, match="training rows of 1 class only: .*at least two"):
        train(path, tmp_path / "run", quick_config(epochs=1))
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_diverging_run_stops_with_one_line_and_no_checkpoint(store: Path, tmp_path: Path
                                                              ) -> None:
    """A learning rate of 1e30 overflows the weights within a few steps: the run must stop on
    the first non-finite loss, say so, and leave no checkpoint that would crash classify."""
    run = tmp_path / "diverged"
    with pytest.raises(UserError, match=r"training diverged in epoch \d+: the loss became"):
        train(store, run, quick_config(lr=1e30, epochs=3))
    assert not (run / "best.pt").exists()


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 0.0])
def test_impossible_learning_rates_are_refused(lr: float) -> None:
    with pytest.raises(UserError, match="lr must be a positive, finite number"):
        quick_config(lr=lr)


def test_json_output_never_holds_nan(tmp_path: Path) -> None:
    content = {"loss": float("nan"), "epochs": [{"val": {"top1": float("inf")}}], "n": 3}
    assert json.loads(json_text(content)) == {"loss": None, "epochs": [{"val": {"top1": None}}],
                                              "n": 3}
    write_json_atomic(tmp_path / "m.json", content)
    assert "NaN" not in (tmp_path / "m.json").read_text()


def test_training_learns_and_writes_outputs(trained, store: Path) -> None:
    result = trained
    assert result.best_metrics["top1"] > 0.75  # chance is 0.25
    out = result.out_dir
    for name in ("best.pt", "metrics.json", "curves.png", "confusion.png", "per_class.csv"):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "metrics.json").read_text())
    assert len(history["epochs"]) == 6 and history["best_epoch"] == result.best_epoch
    assert history["epochs"][-1]["train_loss"] < history["epochs"][0]["train_loss"]
    content = load_checkpoint(result.checkpoint)
    assert content["classes"] == [f"class_{c:02d}" for c in range(4)]
    assert content["modalities"]["rgb"]["backbone"] == {"name": "fake-12"}
    assert content["split"] == 1 and content["task"] == "single"
    assert content["model_config"]["modalities"] == {"rgb": [12, 3], "audio": [8, 2]}
    assert content["software"]["torch"] == metadata.version("torch")


def test_evaluate_matches_the_best_epoch(trained, store: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "per_class.csv"
    metrics = evaluate(trained.checkpoint, store, device="cpu", per_class_csv=csv_path)
    for key in ("top1", "top5", "mean_class_accuracy"):
        assert metrics[key] == pytest.approx(trained.best_metrics[key])
    assert metrics["n"] == trained.best_metrics["n"] and metrics["split"] == 1
    assert metrics["excluded"] >= 0
    assert len(csv_path.read_text().splitlines()) == 5
    streamed = evaluate(trained.checkpoint, store, device="cpu", streaming="on")
    assert streamed["top1"] == pytest.approx(metrics["top1"])


def test_training_is_deterministic_on_cpu(store: Path, tmp_path: Path) -> None:
    config = quick_config(epochs=2, unit="mlp", hidden=8)
    first = train(store, tmp_path / "a", config)
    second = train(store, tmp_path / "b", config)
    assert first.history == second.history
    weights_a = load_checkpoint(first.checkpoint)["state_dict"]
    weights_b = load_checkpoint(second.checkpoint)["state_dict"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    other = train(store, tmp_path / "c", quick_config(epochs=2, unit="mlp", hidden=8, seed=1))
    assert other.history != first.history


def test_streamed_training_learns(store: Path, tmp_path: Path) -> None:
    result = train(store, tmp_path, quick_config(streaming="on", num_workers=0, schedule="cosine"))
    assert result.streamed and result.best_metrics["top1"] > 0.6


def test_multi_label_training(tmp_path: Path) -> None:
    path = make_store(tmp_path / "multi.zarr", n=120, task="multi", classes=5)
    result = train(path, tmp_path / "run", quick_config(epochs=6, head="mlp", schedule="step"))
    best = result.best_metrics
    assert set(best) >= {"map", "gap", "hit1", "perr", "n"}
    assert best["hit1"] > 0.8 and best["gap"] > 0.6
    assert not (tmp_path / "run" / "confusion.png").exists()
    metrics = evaluate(result.checkpoint, path, device="cpu")
    assert metrics["gap"] == pytest.approx(best["gap"])


def test_mean_over_splits(store: Path, tmp_path: Path) -> None:
    checkpoints = [
        train(store, tmp_path / f"s{s}", quick_config(epochs=1, split=s)).checkpoint
        for s in (1, 2, 3)
    ]
    result = evaluate_splits(checkpoints, store, device="cpu")
    assert sorted(result["splits"]) == ["1", "2", "3"]
    tops = [result["splits"][s]["top1"] for s in "123"]
    assert result["mean"]["top1"] == pytest.approx(np.mean(tops))
    assert result["mean"]["n"] == sum(result["splits"][s]["n"] for s in "123")
    with pytest.raises(UserError, match="both trained on split 1"):
        evaluate_splits([checkpoints[0], checkpoints[0]], store, device="cpu")


def test_incompatible_checkpoint(trained, tmp_path: Path) -> None:
    other_classes = make_store(tmp_path / "c.zarr", n=20, classes=5)
    with pytest.raises(UserError, match="classes that differ"):
        evaluate(trained.checkpoint, other_classes, device="cpu")
    no_audio = make_store(tmp_path / "r.zarr", n=20, modalities={"rgb": (6, 12)})
    with pytest.raises(UserError, match="needs modality 'audio'.*it has: rgb"):
        evaluate(trained.checkpoint, no_audio, device="cpu")
    wider = make_store(tmp_path / "w.zarr", n=20, modalities={"rgb": (6, 20), "audio": (4, 8)})
    with pytest.raises(UserError, match="rgb features of width 12.*has 20"):
        evaluate(trained.checkpoint, wider, device="cpu")
    multi = make_store(tmp_path / "m.zarr", n=20, task="multi")
    with pytest.raises(UserError, match="single-label task"):
        evaluate(trained.checkpoint, multi, device="cpu")


def test_test_part_alone(store: Path) -> None:
    info, source, counts = load_part(store, 1, None, Split.TEST)
    assert set(source.rows) == set(np.flatnonzero(split_column(store, 1) == Split.TEST)) - {4, 5, 7}
    assert counts.used == len(source) and info.num_splits == 3


class CreatesFile:
    """A pickle payload whose loading would create a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_never_executes_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    zipped = tmp_path / "zipped.pt"
    torch.save({"format": "attention-clusters-checkpoint", "x": CreatesFile(target)}, zipped)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(CreatesFile(target)))
    for path in (zipped, raw):
        with pytest.raises(UserError, match="not a valid checkpoint"):
            load_checkpoint(path)
        assert not target.exists()


def test_checkpoint_format_errors(trained, tmp_path: Path) -> None:
    good = trained.checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="not a valid checkpoint"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("just some text")
    with pytest.raises(UserError, match="not a valid checkpoint"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not an attention-clusters checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    content = load_checkpoint(trained.checkpoint)
    newer = save_checkpoint(tmp_path / "newer.pt", content)
    raw = torch.load(newer, weights_only=True)
    raw["format_version"] = CHECKPOINT_VERSION + 1
    torch.save(raw, newer)
    with pytest.raises(UserError, match="format version 2; this software reads up to 1"):
        load_checkpoint(newer)


def test_checkpoint_written_atomically(trained, tmp_path: Path) -> None:
    content = load_checkpoint(trained.checkpoint)
    path = save_checkpoint(tmp_path / "copy.pt", content)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.pt"]  # no temp file left behind
    with pytest.raises(TypeError, match="cannot store object"):
        save_checkpoint(tmp_path / "copy.pt", {**content, "extra": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["copy.pt"]
    assert load_checkpoint(path)["epoch"] == content["epoch"]


def test_bad_training_options(store: Path) -> None:
    with pytest.raises(UserError, match="unknown training option.*epoch_count"):
        TrainConfig.from_dict({"epoch_count": 3})
    with pytest.raises(UserError, match="schedule must be one of"):
        TrainConfig.from_dict({"schedule": "linear"})


@pytest.mark.parametrize(("settings", "train_rows", "epochs"), [
    ({}, 24, 600),  # 3 classes x 8 videos at batch 64: one step per epoch
    ({"batch_size": 8}, 24, 200),  # three steps per epoch
    ({}, 9537, 30),  # UCF101's split 1: 150 steps per epoch, min_epochs decides
    ({"epochs": 2}, 24, 2),  # an explicit count is what the user asked for
    ({"min_steps": 0}, 24, 30),
])
def test_the_default_budget_depends_on_the_data(settings: dict, train_rows: int,
                                                epochs: int) -> None:
    assert TrainConfig.from_dict(settings).epochs_for(train_rows) == epochs


@pytest.mark.parametrize("settings", [{"min_steps": -1}, {"min_epochs": 0}, {"epochs": 0}])
def test_impossible_budgets_are_refused(settings: dict) -> None:
    with pytest.raises(UserError, match="must be at least"):
        TrainConfig.from_dict(settings)


def test_ties_go_to_the_epoch_with_the_lower_loss(tmp_path: Path) -> None:
    """Top-1 saturates after a few epochs while the loss keeps falling: the kept checkpoint is
    the most confident of the best-top-1 epochs, not the first (and least trained) of them."""
    clear = make_store(tmp_path / "clear.zarr", n=80, signal=8.0)
    result = train(clear, tmp_path, quick_config(epochs=8))
    top = max(h["val"]["top1"] for h in result.history)
    tied = [h for h in result.history if h["val"]["top1"] == top]
    lowest = min(tied, key=lambda h: h["val"]["loss"])
    assert len(tied) > 1 and lowest["epoch"] != tied[0]["epoch"]
    assert result.best_epoch == lowest["epoch"]
    assert load_checkpoint(result.checkpoint)["epoch"] == lowest["epoch"]
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history["best_epoch"] == lowest["epoch"]


def test_training_output_says_how_many_steps(store: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """epochs unset: raised from min_epochs to reach min_steps, and the output says so."""
    config = quick_config(epochs=None, min_epochs=2, min_steps=12, batch_size=32,
                          progress=True)
    result = train(store, tmp_path, config)
    printed = capsys.readouterr().out
    steps_per_epoch = result.history[0]["steps"]
    assert result.epochs == -(-12 // steps_per_epoch) > 2
    assert result.steps == result.epochs * steps_per_epoch == result.history[-1]["steps"]
    assert (f"{result.epochs} epochs x {steps_per_epoch} optimiser steps (batch 32) = "
            f"{result.steps} steps (epochs not set: raised from min_epochs 2") in printed, printed
    assert f"| {result.steps} steps" in printed
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == result.steps

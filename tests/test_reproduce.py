"""The Flash-MNIST reproduction chain on a tiny set: data -> LeNet -> store -> grid -> docs.

`cli.py reproduce` as a process (help, a bad value in one line): tests/system/test_cli.py.
"""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
import torch
import zarr

from extract.errors import UserError
from pipeline.datasets.generated.flash_mnist import CLASSES, NOISE
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from pipeline.study.attention import attention_mass
from pipeline.study.flash_features import class_names, frame_features
from pipeline.study.lenet import LeNet, load_lenet
from pipeline.study.run import reproduce
from pipeline.study.settings import (
    FULL,
    REDUCED,
    Schedule,
    Settings,
    grid,
    settings_from_options,
)

TINY = Schedule("tiny", per_class_train=1, per_class_test=1, epochs=1, lr=1e-2, hidden=8,
                lenet_steps=40, lenet_batch=64)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    root = tmp_path_factory.mktemp("reproduce")
    settings = Settings(schedule=TINY, sizes=(2,), units=("linear",), device="cpu",
                        data_dir=root / "data", runs_dir=root / "runs", docs_dir=root / "docs",
                        progress=False)
    return settings, reproduce(settings)


def test_lenet_tells_digits_from_noise(tiny_run: tuple[Settings, dict]) -> None:
    settings, report = tiny_run
    chance = 1 / 11
    assert report["lenet"]["test_accuracy"] > 4 * chance
    reloaded = load_lenet(settings.runs_dir / "lenet.pt")
    assert reloaded.test_accuracy == report["lenet"]["test_accuracy"]
    assert reloaded.config.steps == TINY.lenet_steps


def test_store_holds_the_lenet_features_of_every_frame(tiny_run: tuple[Settings, dict]) -> None:
    settings, _ = tiny_run
    store = open_store(settings.data_dir / "features.zarr")
    assert store.n == 2 * CLASSES
    assert store.classes == class_names() and store.classes[0] == "none"
    assert store.classes[0b1000000101] == "0+2+9"
    features, mask, times, status = store.read("digits")
    assert features.shape == (2 * CLASSES, 25, 50) and features.dtype == np.float16
    assert (status == Status.DONE).all() and mask.all()
    assert np.array_equal(times[0], np.arange(25, dtype=np.float32))
    assert list(np.unique(store.splits[:, 0], return_counts=True)[1]) == [CLASSES, CLASSES]
    # Row n_train + i is test video i: recompute its features with the saved LeNet.
    flash = zarr.open_group(str(settings.data_dir / "flash-mnist.zarr"), mode="r")
    lenet: LeNet = load_lenet(settings.runs_dir / "lenet.pt").model
    expected = frame_features(lenet, flash["test/frames"][5:8], torch.device("cpu"))
    np.testing.assert_allclose(features[CLASSES + 5 : CLASSES + 8], expected, rtol=1e-2,
                               atol=1e-2)
    assert np.array_equal(store.labels[CLASSES:], flash["test/label"][:])


def test_results_docs_and_figure_are_written(tiny_run: tuple[Settings, dict]) -> None:
    settings, report = tiny_run
    names = {r["name"] for r in report["results"]}
    assert names == {"avg-n001-noshift", "linear-n002-shift", "linear-n002-noshift"}
    saved = json.loads((settings.docs_dir / "reproduction.json").read_text())
    assert saved["results"] == report["results"]
    assert all(0 <= r["top1"] <= 1 and len(r["val_top1_per_epoch"]) == 1 for r in saved["results"])
    markdown = (settings.docs_dir / "reproduction.md").read_text()
    for row in ("| ours, linear (one layer), shifting |", "| ours, linear (one layer), no "
                "shifting |", "| ours, average pooling (any N) |",
                "| public reproduction, linear (one layer) | 65.8 |"):
        assert row in markdown
    assert "mlp" not in {r["unit"] for r in saved["results"]}
    figure = settings.docs_dir / "figures" / "flash_mnist_attention.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(figure)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 500


def test_attention_favours_digit_frames(tiny_run: tuple[Settings, dict]) -> None:
    _, report = tiny_run
    attention = report["attention"]
    attentive = [r for r in report["results"] if r["unit"] != "avg"]
    best = max(r["top1"] for r in attentive)
    assert attention["run"] in {r["name"] for r in attentive if r["top1"] == best}
    assert 0 < attention["digit_frame_share"] < 1
    assert attention["digit_attention_mass"] > attention["digit_frame_share"]


def test_rerun_resumes_without_retraining(tiny_run: tuple[Settings, dict]) -> None:
    settings, report = tiny_run
    results = sorted((settings.runs_dir / "results").glob("*.json"))
    before = {path: path.stat().st_mtime_ns for path in results}
    again = reproduce(settings)
    assert {path: path.stat().st_mtime_ns for path in results} == before
    assert again["results"] == report["results"]


def test_attention_mass_matches_its_definition() -> None:
    frame_digit = np.full((3, 25), NOISE, dtype=np.int8)
    frame_digit[0, [1, 2]] = 4
    frame_digit[1, 7] = 0  # video 2 shows no digit and is left out
    uniform = np.full((3, 2, 25), 1 / 25)
    stats = attention_mass(uniform, frame_digit)
    assert stats["videos"] == 2
    assert stats["digit_frame_share"] == pytest.approx(3 / 50)
    assert stats["digit_attention_mass"] == pytest.approx(3 / 50)
    peaked = np.zeros((3, 2, 25))
    peaked[:, 0, 2] = 1.0  # unit 0 always looks at frame 2, unit 1 at frame 7
    peaked[:, 1, 7] = 1.0
    stats = attention_mass(peaked, frame_digit)
    assert stats["digit_attention_mass"] == pytest.approx((0.5 + 0.5) / 2)
    assert stats["units_with_majority_on_digits"] == 0.0


def test_grid_and_options() -> None:
    cells = grid((1, 2), ("linear", "mlp"))
    assert len(grid((1, 2, 4, 8, 16, 32, 64, 128), ("linear", "mlp"))) == 33
    assert cells[0].name == "avg-n001-noshift" and len({c.name for c in cells}) == len(cells)
    default = settings_from_options()
    assert default.schedule == REDUCED and default == Settings()
    full = settings_from_options(full=True, device="cpu").schedule
    assert (full.per_class_train, full.per_class_test, full.epochs) == (100, 10, 100)
    assert full == FULL
    custom = settings_from_options(epochs=5, sizes="4,8")
    assert custom.schedule.epochs == 5 and custom.sizes == (4, 8)
    assert custom.schedule.per_class_train == REDUCED.per_class_train
    assert custom.schedule.name == "reduced (custom: {'epochs': 5})"
    with pytest.raises(UserError, match="--sizes"):
        settings_from_options(sizes="four")
    with pytest.raises(UserError, match="--sizes"):
        settings_from_options(sizes="0,4")
    with pytest.raises(UserError, match="--units"):
        settings_from_options(units="conv")
    with pytest.raises(UserError, match="--epochs"):
        settings_from_options(epochs=0)
    with pytest.raises(UserError, match="--lr"):
        settings_from_options(lr=-1e-3)
    with pytest.raises(UserError, match="--source"):
        settings_from_options(source="emnist")

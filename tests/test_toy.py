"""The toy dataset: deterministic, in UCF101's layout, and each factor really in its modality."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pytest

from extract.errors import UserError
from pipeline.datasets.generated.toy import (
    SOUNDS,
    class_names,
    disc_centres,
    generate_toy,
    plan_clips,
    render_audio,
    render_frames,
)

HAS_MANIFESTS = importlib.util.find_spec("pipeline.datasets.manifest") is not None
VIDEOS = 24  # two clips per class: the smallest set with training clips in every split


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = generate_toy(
        tmp_path_factory.mktemp("toy") / "toy", seed=7, videos=VIDEOS, progress=False
    )
    return root, json.loads((root / "toy.json").read_text())


def _clip_of_each_class(record: dict) -> list[dict]:
    first: dict[str, dict] = {}
    for clip in record["clips"]:
        first.setdefault(clip["class_name"], clip)
    assert sorted(first) == class_names()
    return list(first.values())


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray | None, dict]:
    """RGB frames, mono audio samples (or None) and stream facts of one clip."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        facts = {
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "fps": float(video.average_rate),
            "codec": video.codec_context.name,
            "duration": container.duration / av.time_base,
            "audio_streams": len(container.streams.audio),
        }
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    audio = None
    if facts["audio_streams"]:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            facts["sample_rate"] = stream.codec_context.sample_rate
            facts["audio_codec"] = stream.codec_context.name
            audio = np.concatenate(
                [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
            )
    return frames, audio, facts


def _disc_mask(frame: np.ndarray) -> np.ndarray:
    """Disc pixels: strongly coloured, where the background is nearly grey."""
    signed = frame.astype(np.int16)
    return signed.max(axis=2) - signed.min(axis=2) > 90


def test_same_seed_gives_identical_lists_parameters_and_content(tmp_path: Path, toy) -> None:
    root, record = toy
    again = generate_toy(tmp_path / "again", seed=7, videos=VIDEOS, progress=False)
    assert (again / "toy.json").read_bytes() == (root / "toy.json").read_bytes()
    for listing in sorted((root / "ucfTrainTestlist").iterdir()):
        assert (again / "ucfTrainTestlist" / listing.name).read_bytes() == listing.read_bytes()
    # This x264 build is not bit-exact from run to run (its macroblock-tree rate control), so
    # the same frames may encode to other bytes. Determinism therefore means: the same plan
    # renders to identical pixels and samples, and both files decode close to those pixels.
    plan = {clip.path: clip for clip in plan_clips(seed=7, videos=VIDEOS)}
    for clip in _clip_of_each_class(record):
        planned = plan[clip["path"]]
        rendered = np.stack(list(render_frames(planned))).astype(float)
        assert np.array_equal(rendered, np.stack(list(render_frames(planned))))
        sound = render_audio(planned)
        assert (sound is None) or np.array_equal(sound, render_audio(planned))
        for folder in (root, again):
            frames, _, _ = _decode(folder / clip["path"])
            mse = ((np.stack(frames) - rendered) ** 2).mean()
            assert 10 * np.log10(255**2 / mse) > 30, clip["path"]
    assert plan_clips(seed=8, videos=VIDEOS) != plan_clips(seed=7, videos=VIDEOS)


def test_layout_is_ucf101s(toy) -> None:
    root, record = toy
    lists = root / "ucfTrainTestlist"
    class_lines = (lists / "classInd.txt").read_text().splitlines()
    assert class_lines == [f"{i} {name}" for i, name in enumerate(class_names(), start=1)]
    label_of = {name: i for i, name in enumerate(class_names(), start=1)}
    all_paths = {clip["path"] for clip in record["clips"]}
    assert len(all_paths) == VIDEOS
    on_disk = {p.relative_to(root).as_posix() for p in root.glob("*/v_*_g*_c*.mp4")}
    assert on_disk == all_paths
    test_sets = []
    for split in (1, 2, 3):
        train = [
            line.split() for line in (lists / f"trainlist0{split}.txt").read_text().splitlines()
        ]
        test = (lists / f"testlist0{split}.txt").read_text().splitlines()
        for path, label in train:
            folder, name = path.split("/")
            assert name.startswith(f"v_{folder}_g") and int(label) == label_of[folder]
        train_paths = {path for path, _ in train}
        assert not train_paths & set(test) and train_paths | set(test) == all_paths
        # split s tests exactly the s-th third of the groups
        groups = {int(path.split("_g")[1][:2]) for path in test}
        assert groups and groups <= set(record["test_groups"][str(split)])
        test_sets.append(frozenset(test))
    assert len(set(test_sets)) == 3
    # every class keeps training clips in every split
    for split in (1, 2, 3):
        lines = (lists / f"trainlist0{split}.txt").read_text().splitlines()
        assert {line.split("/")[0] for line in lines} == set(class_names())


@pytest.mark.skipif(not HAS_MANIFESTS, reason="pipeline/manifests.py not written yet")
def test_ucf101_manifest_reads_the_toy_set(toy) -> None:
    from pipeline.datasets.manifest import is_valid, load_manifest
    from pipeline.store.format import Split

    root, record = toy
    manifest = load_manifest("ucf101", root)
    assert is_valid(manifest), manifest.problems
    assert manifest.classes == class_names()
    by_id = {entry.id: entry for entry in manifest.videos}
    assert set(by_id) == {clip["path"] for clip in record["clips"]}
    for clip in record["clips"]:
        entry = by_id[clip["path"]]
        assert entry.label == clip["label"] - 1
        tested = [s for s, members in record["test_groups"].items() if clip["group"] in members]
        expected = tuple(Split.TEST if str(s) in tested else Split.TRAIN for s in (1, 2, 3))
        assert entry.splits == expected


def test_each_class_decodes_with_its_size_duration_and_audio(toy) -> None:
    root, record = toy
    for clip in _clip_of_each_class(record):
        frames, audio, facts = _decode(root / clip["path"])
        assert facts["codec"] == "h264"
        assert (facts["width"], facts["height"]) == (clip["width"], clip["height"])
        assert 160 <= facts["width"] <= 320 and 120 <= facts["height"] <= 240
        assert len(frames) == clip["frames"]
        assert 2.0 <= len(frames) / facts["fps"] <= 4.0
        assert 1.9 <= facts["duration"] <= 4.2
        assert (audio is not None) == (clip["sound"] != "Silent")
        if audio is not None:
            assert facts["audio_codec"] == "aac" and facts["sample_rate"] == 16000
            assert abs(len(audio) / 16000 - clip["duration"]) < 0.2


def test_appearance_is_the_disc_colour_and_invisible_in_grey(toy) -> None:
    root, record = toy
    grey_disc_luma = {"Red": [], "Blue": []}
    for clip in _clip_of_each_class(record):
        frames, _, _ = _decode(root / clip["path"])
        frame = frames[len(frames) // 2]
        mask = _disc_mask(frame)
        assert mask.mean() > 0.01, clip["path"]
        red, _, blue = frame[mask].mean(axis=0)
        if clip["appearance"] == "Red":
            assert red > blue + 80
        else:
            assert blue > red + 80
        # what the flow sees: BT.601 luma, the same for both colours up to the shade nuisance
        inner = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1)
        luma = frame[inner].astype(float) @ np.array([0.299, 0.587, 0.114])
        shade = np.mean(clip["colour"]) / np.mean(
            record["factors"]["appearance"][clip["appearance"]]
        )
        grey_disc_luma[clip["appearance"]].append(luma.mean() / shade)
    assert abs(np.mean(grey_disc_luma["Red"]) - np.mean(grey_disc_luma["Blue"])) < 6


def test_discs_move_in_the_class_direction(toy) -> None:
    root, record = toy
    for clip in _clip_of_each_class(record):
        frames, _, _ = _decode(root / clip["path"])
        masks = [_disc_mask(frame) for frame in frames]
        reach = clip["width"] // 4
        shifts = []
        for before, after in zip(masks, masks[1:], strict=False):
            overlaps = [
                (np.roll(before, s, axis=1) & after).sum() for s in range(-reach, reach + 1)
            ]
            shifts.append(int(np.argmax(overlaps)) - reach)
        step = float(np.median(shifts))
        assert np.sign(step) == (1 if clip["motion"] == "Right" else -1), clip["path"]
        assert abs(step - clip["speed"]) <= 1.0


def test_sound_peak_is_at_the_class_pitch(toy) -> None:
    root, record = toy
    for clip in _clip_of_each_class(record):
        if clip["sound"] == "Silent":
            continue
        _, audio, _ = _decode(root / clip["path"])
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        frequencies = np.fft.rfftfreq(len(audio), d=1 / 16000)
        peak = frequencies[np.argmax(spectrum)]
        low, high = SOUNDS[clip["sound"]]
        assert low * 0.97 <= peak <= high * 1.03, clip["path"]
        assert abs(peak - clip["tone_hz"]) <= 0.03 * clip["tone_hz"]


def test_single_frames_do_not_reveal_the_direction() -> None:
    """Over the default toy set, disc positions in single frames follow one (uniform) law for
    both directions, so only motion between frames can tell Left from Right."""
    positions: dict[str, list[float]] = {"Left": [], "Right": []}
    for clip in plan_clips(seed=0, videos=288):
        for index in range(clip.frames):
            positions[clip.motion] += [x / clip.width for x, _ in disc_centres(clip, index)]
    for motion, xs in positions.items():
        share = np.histogram(xs, bins=5, range=(0, 1))[0] / len(xs)
        assert np.abs(share - 0.2).max() < 0.02, (motion, share)


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least 12 videos"):
        generate_toy(tmp_path / "few", videos=5, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        generate_toy(blocker, videos=12, progress=False)
    with pytest.raises(UserError, match="cannot write"):
        generate_toy(blocker / "sub", videos=12, progress=False)

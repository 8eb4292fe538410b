"""TSN fine-tuning pieces on real data: flow flips, partial BN, crops, errors, weights files.

The whole command (cache, epochs, kill -9 and resume, features from its weights) is in
tests/system/test_finetune_resume.py (slow).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from extract.backbones.registry import build_backbone
from extract.errors import UserError
from extract.flow.stacks import dequantize_flow, flow_stacks
from pipeline.features.extractor import VideoFeatureExtractor
from pipeline.finetune.augment import SCALES, flip, jitter_box, train_view
from pipeline.finetune.factors import factor_accuracy
from pipeline.finetune.loop import segment_choices
from pipeline.finetune.outputs import write_outputs
from pipeline.finetune.run import run_finetune
from pipeline.finetune.settings import FinetuneSettings
from pipeline.finetune.tsn import TSN, batch_norms
from pipeline.profiles import load_profile
from pipeline.store.format import Status


def test_a_flipped_flow_stack_is_the_flow_of_the_mirrored_video():
    """The flow (DIS: quick) of a mirrored clip moving right equals our flip of the clip's
    flow: the x planes change sign (255 - x in TSN's quantisation), the y planes mirror."""
    texture = ndimage.gaussian_filter(np.random.default_rng(0).uniform(0, 255, (72, 120)), 1.5)
    texture = np.interp(texture, (texture.min(), texture.max()), (0, 255)).astype(np.uint8)
    # frame t shows the texture from column 20 - 2t: everything moves 2 px right per frame
    frames = np.stack([texture[:, 20 - 2 * t : 116 - 2 * t] for t in range(3)])[None]
    stack = flow_stacks(frames, "dis")[0]
    mirrored = flow_stacks(np.ascontiguousarray(frames[..., ::-1]), "dis")[0]
    inner = (slice(None), slice(12, -12), slice(12, -12))  # away from the borders
    flipped = dequantize_flow(flip(stack, "flow")[inner])
    truth = dequantize_flow(mirrored[inner])
    assert np.median(truth[0::2]) == pytest.approx(-2.0, abs=0.3)  # moving left now
    assert np.abs(flipped - truth).mean() < 0.3
    unsigned = dequantize_flow(stack[..., ::-1][inner])  # a plain mirror keeps x's sign: wrong
    assert np.abs(unsigned[0::2] - truth[0::2]).mean() > 3.0
    assert np.array_equal(flip(stack, "rgb"), stack[..., ::-1])


def test_partial_batchnorm_keeps_all_but_the_first_layer_fixed():
    backbone = build_backbone({"name": "random", "seed": 1, "channels": 4}, "flow")
    model = TSN(backbone.network, backbone.dim, classes=5, dropout=0.5).train()
    first, *rest = batch_norms(model.backbone)
    before = [layer.running_mean.clone() for layer in (first, *rest)]
    model(torch.randn(2, 3, 4, 48, 48))
    assert first.training and not any(layer.training for layer in rest)
    assert not torch.equal(first.running_mean, before[0])
    assert all(torch.equal(layer.running_mean, old) for layer, old in zip(rest, before[1:],
                                                                         strict=True))
    assert not any(p.requires_grad for layer in rest for p in layer.parameters())
    assert all(p.requires_grad for p in first.parameters())
    assert model.head.weight.std() < 0.01  # TSN's head initialisation


def test_crops_and_segments_follow_tsn():
    rng = np.random.default_rng(0)
    sizes = {int(96 * s) for s in SCALES}
    for _ in range(200):
        top, left, h, w = jitter_box(rng, 96, 128)
        assert h in sizes and w in sizes and top + h <= 96 and left + w <= 128
        chosen = segment_choices(rng, positions=8, segments=3)
        assert 0 <= chosen[0] < 3 and 2 <= chosen[1] < 6 and 5 <= chosen[2] < 8
    assert segment_choices(np.random.default_rng(4), 4, 3) == segment_choices(
        np.random.default_rng(4), 4, 3)


def test_no_flip_keeps_the_direction_and_the_same_crops():
    """--no-flip (the toy set, where Left/Right is the class): every view is the unmirrored
    crop that the flipping run takes, so only the mirroring differs."""
    snippet = np.random.default_rng(1).integers(0, 256, (10, 48, 64), dtype=np.uint8)
    with_flips, without, boxes = (np.random.default_rng(7) for _ in range(3))
    mirrored = 0
    for _ in range(40):
        top, left, h, w = jitter_box(boxes, 48, 64)
        boxes.random()  # the flip draw
        crop = snippet[:, top : top + h, left : left + w]
        a, b = train_view(with_flips, snippet, "flow"), train_view(without, snippet, "flow",
                                                                    flips=False)
        assert np.array_equal(b, crop)
        assert np.array_equal(a, crop) or np.array_equal(a, flip(crop, "flow"))
        mirrored += not np.array_equal(a, crop)
    assert 5 < mirrored < 35  # the flipping run mirrored about half of the same views


def test_factor_accuracy_reads_toy_class_names():
    classes = ["BlueLeftHigh", "BlueRightHigh", "RedLeftHigh"]
    scores = np.eye(3)[[1, 2, 0]]  # predicted: BlueRight, RedLeft, BlueLeft
    labels = np.array([0, 0, 2])  # truth: BlueLeft, BlueLeft, RedLeft
    acc = factor_accuracy(scores, labels, classes)
    assert acc["appearance_acc"] == pytest.approx(1 / 3)
    assert acc["motion_acc"] == pytest.approx(2 / 3) and acc["sound_acc"] == 1.0
    assert factor_accuracy(scores, labels, ["a", "b", "c"]) == {}


@pytest.fixture
def toy_copy(toy_videos: Path, tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    shutil.copytree(toy_videos, root)
    return root


def test_user_mistakes_are_one_line_before_any_work(toy_copy: Path, tmp_path: Path,
                                                    toy_dataset: tuple[Path, Path]):
    profile = toy_dataset[1]
    with pytest.raises(UserError, match="rgb or flow backbone, not 'audio'"):
        FinetuneSettings(modality="audio")
    (toy_copy / "ucfTrainTestlist" / "trainlist01.txt").write_text("")
    with pytest.raises(UserError, match="split 1 has no training videos"):
        run_finetune(dataset="toy", root=toy_copy, modality="flow", out=tmp_path / "a",
                     profile=profile)
    with pytest.raises(UserError, match="has splits 1..3, not 4"):
        run_finetune(dataset="toy", root=toy_copy, modality="rgb", out=tmp_path / "a",
                     profile=profile, settings=FinetuneSettings(modality="rgb", split=4))
    other = tmp_path / "resnet18.pth"
    torch.save(build_backbone({"name": "torchvision:resnet18", "weights": "none"},
                              "rgb").network.state_dict(), other)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(profile.read_text().replace(
        "rgb: {positions: 3, resize_short: 64, crop: 56, backbone: {name: efficientnet_lite0}}",
        f"rgb: {{positions: 3, resize_short: 64, crop: 56, backbone: {{name: "
        f"efficientnet_lite0, weights_file: {other}}}}}"))
    with pytest.raises(UserError, match="does not match the EfficientNetLite architecture"):
        run_finetune(dataset="toy", root=toy_copy, modality="rgb", out=tmp_path / "b",
                     profile=wrong, settings=FinetuneSettings(modality="rgb", split=2))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_weights_file_is_what_features_and_classify_load(toy_dataset: tuple[Path, Path],
                                                             tmp_path: Path):
    """The written file loads through `backbone.weights_file`: the extraction record holds its
    sha256, the features are the trained network's, and a rebuild (classify) refuses a
    changed file."""
    root, profile_path = toy_dataset
    profile = load_profile(profile_path)
    base = build_backbone({"name": "efficientnet_lite0", "channels": 4}, "flow")
    with torch.no_grad():  # stands for training: weights that differ from the ImageNet ones
        base.network._conv_stem.weight.mul_(-1.5)
    record = write_outputs(tmp_path, base.network, {"modality": "flow", "base": base.config()})
    flow = {**profile["modalities"]["flow"], "backbone": record["profile_backbone"]}
    extractor = VideoFeatureExtractor({"flow": flow}, profile["limits"], "cpu")
    config = extractor.config("flow")
    assert config["backbone"]["sha256"] == record["sha256"]
    assert (tmp_path / "flow.pth.sha256").read_text().split()[0] == record["sha256"]
    video = root / "BlueLeftHigh" / next(p.name for p in (root / "BlueLeftHigh").iterdir())
    got = extractor.extract(video)["flow"]
    assert got["status"] == Status.DONE
    original = VideoFeatureExtractor({"flow": profile["modalities"]["flow"]},
                                     profile["limits"], "cpu").extract(video)["flow"]
    assert not np.allclose(got["features"], original["features"], atol=1e-2)
    rebuilt = VideoFeatureExtractor.from_record({"flow": config}, "cpu")
    assert np.array_equal(rebuilt.extract(video)["flow"]["features"], got["features"])
    state = torch.load(record["weights_file"], weights_only=True)
    state["_bn0.bias"] += 1
    torch.save(state, record["weights_file"])
    with pytest.raises(UserError, match="but the features were extracted with"):
        VideoFeatureExtractor.from_record({"flow": config}, "cpu")

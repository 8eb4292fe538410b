"""Pretrained networks from files: MMAction2 TSN ResNet checkpoints and timm models.

Every checkpoint is written here in the real key layout (MMAction2: `backbone.` + MMCV
ConvModule `conv`/`bn` names + `cls_head.fc_cls`; timm: its own state dict as the HF hub
holds it), from a seeded network, so nothing is downloaded and the loaded features can be
compared with the network that wrote the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from extract.backbones.image import inflate_first_conv, seeded
from extract.backbones.registry import build_backbone, rebuild_backbone
from extract.errors import UserError


def mmaction_name(tv_key: str) -> str:
    """torchvision ResNet key -> MMAction2 recogniser key, written out independently of the
    loader (its inverse) from MMAction2's ResNet: ConvModule conv1 and convN, downsample."""
    if tv_key.startswith("fc."):
        return "cls_head.fc_cls." + tv_key.removeprefix("fc.")
    key = re.sub(r"^conv1\.", "conv1.conv.", tv_key)
    key = re.sub(r"^bn1\.", "conv1.bn.", key)
    key = re.sub(r"^(layer\d+\.\d+)\.conv(\d)\.", r"\1.conv\2.conv.", key)
    key = re.sub(r"^(layer\d+\.\d+)\.bn(\d)\.", r"\1.conv\2.bn.", key)
    key = re.sub(r"\.downsample\.0\.", ".downsample.conv.", key)
    key = re.sub(r"\.downsample\.1\.", ".downsample.bn.", key)
    return "backbone." + key


def write_mmaction(path: Path, network: torch.nn.Module) -> Path:
    state = {mmaction_name(k): v for k, v in network.state_dict().items()}
    torch.save({"meta": {"mmaction2_version": "1.2.0"}, "state_dict": state}, path)
    return path


def reference_features(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    network.fc = torch.nn.Identity()
    with torch.inference_mode():
        return network.eval()(x)


def check_mmaction(tmp_path: Path, arch: str, modality: str) -> None:
    """A checkpoint written from a seeded torchvision ResNet gives that network's features."""
    depth = arch.removeprefix("tsn_r")
    network = seeded(1, lambda: torchvision.models.get_model(f"resnet{depth}", num_classes=101))
    if modality == "flow":
        inflate_first_conv(network, 10)  # a TSN flow checkpoint's stem: 10 input channels
    path = write_mmaction(tmp_path / f"{arch}_{modality}.pth", network)
    # built unseeded, so only weights taken from the file can give the writer's features
    backbone = build_backbone({"name": f"mmaction2:{arch}", "weights_file": str(path)},
                              modality, "cpu")
    channels = 10 if modality == "flow" else 3
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, channels), dtype=np.uint8)
    # MMAction2's TSN preprocessing: RGB ImageNet mean/std in 0..255, flow (x - 128) / 128
    mean = torch.tensor([128.0] * 10 if modality == "flow" else [123.675, 116.28, 103.53])
    std = torch.tensor([128.0] * 10 if modality == "flow" else [58.395, 57.12, 57.375])
    pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    expected = reference_features(network, (pixels - mean.view(1, -1, 1, 1))
                                  / std.view(1, -1, 1, 1))
    got = backbone(x)
    assert backbone.dim == (2048 if depth == "50" else 512)
    assert backbone.in_channels == channels
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)
    config = backbone.config()
    assert config["weights"].startswith("MMAction2 TSN") and len(config["sha256"]) == 64
    assert rebuild_backbone(config).config()["sha256"] == config["sha256"]


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_mmaction_tsn_r18_matches_the_network_that_wrote_it(tmp_path: Path, modality: str):
    check_mmaction(tmp_path, "tsn_r18", modality)


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_mmaction_tsn_r50_matches_the_network_that_wrote_it(tmp_path: Path, modality: str):
    check_mmaction(tmp_path, "tsn_r50", modality)


def test_mmaction_errors_are_one_line(tmp_path: Path):
    spec = {"name": "mmaction2:tsn_r18"}
    with pytest.raises(UserError, match="needs weights_file"):
        build_backbone(spec, "rgb")
    with pytest.raises(UserError, match="weights file not found"):
        build_backbone({**spec, "weights_file": str(tmp_path / "absent.pth")}, "rgb")
    rgb = write_mmaction(tmp_path / "rgb.pth",
                         seeded(0, lambda: torchvision.models.resnet18(num_classes=10)))
    with pytest.raises(UserError, match="an RGB checkpoint, but the flow backbone needs 10"):
        build_backbone({**spec, "weights_file": str(rgb)}, "flow")
    plain = tmp_path / "torchvision.pth"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    with pytest.raises(UserError, match="no 'backbone.' keys"):
        build_backbone({**spec, "weights_file": str(plain)}, "rgb")
    with pytest.raises(UserError, match="does not match the ResNet architecture"):
        build_backbone({"name": "mmaction2:tsn_r50", "weights_file": str(rgb)}, "rgb")
    with pytest.raises(UserError, match="unknown MMAction2 network"):
        build_backbone({"name": "mmaction2:i3d", "weights_file": str(rgb)}, "rgb")


def check_timm(tmp_path: Path, arch: str, size: int, crop_pct: float, fixed: bool) -> None:
    """A timm state dict (as the HF hub holds it, head included) loaded from a local file
    gives the writer's pooled features, and the record holds its pretrained_cfg."""
    network = seeded(3, lambda: timm.create_model(arch, pretrained=False))  # with its head
    path = tmp_path / "model.safetensors"
    save_file(network.state_dict(), str(path))
    backbone = build_backbone({"name": f"timm:{arch}", "weights_file": str(path)}, "rgb")
    x = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    network.reset_classifier(0)
    with torch.inference_mode():
        expected = network.eval()((torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
                                   - 0.5) / 0.5)  # this model's pretrained_cfg: mean/std 0.5
    torch.testing.assert_close(backbone(x), expected, rtol=1e-4, atol=1e-4)
    cfg = backbone.config()["pretrained_cfg"]
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == crop_pct
    assert tuple(cfg["input_size"]) == (3, size, size) and tuple(cfg["mean"]) == (0.5,) * 3
    if fixed:  # a ViT with a fixed patch grid: another input size is one line, no traceback
        with pytest.raises(UserError, match=f"{size // 2}x{size // 2} inputs do not fit it"):
            backbone(x[:, : size // 2, : size // 2])
    with pytest.raises(UserError, match="does not match the VisionTransformer"):
        other = tmp_path / "other.safetensors"
        save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(other))
        build_backbone({"name": f"timm:{arch}", "weights_file": str(other)}, "rgb")


def test_timm_test_vit_from_a_local_file(tmp_path: Path):
    check_timm(tmp_path, "test_vit.r160_in1k", 160, 0.95, fixed=False)  # 0.4 M parameters


@pytest.mark.slow
def test_timm_vit_tiny_from_a_local_file(tmp_path: Path):
    check_timm(tmp_path, "vit_tiny_patch16_224.augreg_in21k_ft_in1k", 224, 0.9, fixed=True)


@pytest.mark.slow
def test_clip_vit_b_from_a_local_file_uses_clip_preprocessing(tmp_path: Path):
    """The per-frame feature network of recent work (`timm:vit_base_patch16_clip_224.openai`),
    built from config (pretrained=False) and loaded from a local file: one ViT-B forward."""
    arch = "vit_base_patch16_clip_224.openai"
    network = seeded(0, lambda: timm.create_model(arch, pretrained=False))
    path = tmp_path / "open_clip_vit_b16.safetensors"
    save_file(network.state_dict(), str(path))
    backbone = build_backbone({"name": f"timm:{arch}", "weights_file": str(path)}, "rgb")
    cfg = backbone.config()["pretrained_cfg"]
    assert tuple(cfg["mean"]) == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert cfg["interpolation"] == "bicubic" and backbone.dim == 768
    x = np.random.default_rng(2).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    features = backbone(x)
    assert features.shape == (1, 768) and torch.isfinite(features).all()

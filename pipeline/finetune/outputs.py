"""What a finished fine-tuning run leaves: the weights file, its sha256, a JSON record.

Why this layout: the weights file is the head-less backbone's state dict in the base
family's own key layout (for flow with its 10-channel stem), exactly what the profile's
`backbone.weights_file` loads strictly, so `features` and `classify` need nothing new; the
sha256 file lets anyone check a copy (`sha256sum -c`), and the store records the same sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.atomic import json_text, write_atomic, write_json_atomic

RECORD_NAME = "finetune.json"


def weights_name(modality: str) -> str:
    return f"{modality}.pth"


def write_outputs(out_dir: Path, network: nn.Module, record: dict[str, Any]) -> dict[str, Any]:
    """Write <modality>.pth, <modality>.pth.sha256 and finetune.json; return the record."""
    name = weights_name(record["modality"])
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    path = write_atomic(out_dir / name, lambda stream: torch.save(state, stream))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    write_atomic(out_dir / f"{name}.sha256", lambda s: s.write(f"{digest}  {name}\n".encode()))
    spec = {**record["base"]["spec"], "weights_file": str(path)}
    spec.pop("channels", None)  # `features` sets a flow stem's channels from the profile
    full = {**record, "weights_file": str(path), "sha256": digest,
            "profile_backbone": spec}  # what to put under modalities.<m>.backbone
    write_json_atomic(out_dir / RECORD_NAME, full)
    return full


def summary_text(record: dict[str, Any]) -> str:
    """What `cli.py finetune` prints: validation per epoch, the file, how to use it."""
    shown = ", ".join(f"{100 * v:.1f}%" for v in record["val_top1"])
    spec = " ".join(json_text(record["profile_backbone"]).split())
    return (f"{record['modality']} backbone fine-tuned on split {record['split']}: validation "
            f"top-1 per epoch {shown}\nweights: {record['weights_file']} (sha256 "
            f"{record['sha256']})\nuse it in a profile: modalities.{record['modality']}."
            f"backbone: {spec}")

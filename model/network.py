"""The multimodal Attention Clusters network: one cluster per modality, concatenated, a head.

Absent modalities (a video without audio, say) are replaced by a learned "absent" embedding
of the cluster's output size; docs/model.md explains why this beats masking.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.attention import AttentionCluster

TASKS = ("single", "multi")
HEADS = ("linear", "mlp")

# One modality's input: features (B, L, D), mask (B, L) bool, present (B,) bool.
ModalityInput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def build_head(in_features: int, num_classes: int, head: str) -> nn.Module:
    """`linear` is the paper's classifier; `mlp` is the authors' YouTube-8M release."""
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    if head == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, 1024),
            nn.Tanh(),
            nn.Linear(1024, 4096),
            nn.Tanh(),
            nn.Linear(4096, num_classes),
        )
    raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")


class UniformDropout(nn.Module):
    """Inverted dropout drawn with torch.rand: same distribution as nn.Dropout, but on CPU
    torch.rand is vectorised and bernoulli_ is not, which made dropout on the wide (B, sum N*D)
    cluster output one of the costliest ops of a training step."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand_like(x).ge_(self.p).div_(1 - self.p)
        return x * keep


class AttentionClusterNet(nn.Module):
    """Attention clusters per modality -> concat -> dropout -> head.

    modalities: {name: (feature width D, number of units N)}, in a fixed order.
    forward(inputs: {name: (features, mask, present)}) -> (logits (B, C), {name: (B, N, L)}).
    """

    def __init__(
        self,
        modalities: dict[str, tuple[int, int]],
        num_classes: int,
        unit: str = "linear",
        shifting: bool = True,
        dropout: float = 0.5,
        head: str = "linear",
        task: str = "single",
        hidden: int = 128,
    ) -> None:
        super().__init__()
        if not modalities:
            raise ValueError("at least one modality is needed")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        self.config: dict[str, Any] = {
            "modalities": {name: [int(d), int(n)] for name, (d, n) in modalities.items()},
            "num_classes": int(num_classes),
            "unit": unit,
            "shifting": bool(shifting),
            "dropout": float(dropout),
            "head": head,
            "task": task,
            "hidden": int(hidden),
        }
        self.task = task
        self.clusters = nn.ModuleDict(
            {
                name: AttentionCluster(dim, units, unit=unit, shifting=shifting, hidden=hidden)
                for name, (dim, units) in modalities.items()
            }
        )
        # Norm ~1, like a shifted cluster output, so the head sees it on the same scale.
        self.absent = nn.ParameterDict(
            {
                name: nn.Parameter(torch.randn(dim * units) / (dim * units) ** 0.5)
                for name, (dim, units) in modalities.items()
            }
        )
        width = sum(dim * units for dim, units in modalities.values())
        self.dropout = UniformDropout(dropout)
        self.head = build_head(width, num_classes, head)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AttentionClusterNet:
        """Rebuild a network from `self.config` (as stored in a checkpoint)."""
        arguments = dict(config)
        arguments["modalities"] = {k: tuple(v) for k, v in config["modalities"].items()}
        return cls(**arguments)

    def encode(
        self, inputs: dict[str, ModalityInput]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Concatenated cluster outputs (B, sum N*D) and each modality's attention weights."""
        outputs, attentions = [], {}
        for name, cluster in self.clusters.items():
            if name not in inputs:
                raise KeyError(f"missing modality {name!r} in the network input")
            features, mask, present = inputs[name]
            present = present.to(torch.bool)
            all_present = bool(present.all())  # the common case skips two full-size copies
            if not all_present:
                # Zero absent rows: whatever they hold can then never leak NaN into gradients.
                features = features.masked_fill(~present[:, None, None], 0.0)
                mask = mask.to(torch.bool) & present[:, None]
            encoded, attention = cluster(features, mask.to(torch.bool))
            if not all_present:
                encoded = torch.where(present[:, None], encoded, self.absent[name][None, :])
            outputs.append(encoded)
            attentions[name] = attention
        return torch.cat(outputs, dim=1), attentions

    def classify(self, encoded: torch.Tensor) -> torch.Tensor:
        """Logits of the concatenated cluster outputs (dropout while training, then the head)."""
        return self.head(self.dropout(encoded))

    def forward(
        self, inputs: dict[str, ModalityInput]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoded, attentions = self.encode(inputs)
        return self.classify(encoded), attentions


def loss_fn(task: str) -> nn.Module:
    """Softmax cross-entropy (labels: class ids) or sigmoid BCE (labels: (B, C) 0/1 floats)."""
    if task == "single":
        return nn.CrossEntropyLoss()
    if task == "multi":
        return nn.BCEWithLogitsLoss()
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class scores in [0, 1]: softmax for single-label, independent sigmoids for multi-label."""
    return torch.softmax(logits, dim=-1) if task == "single" else torch.sigmoid(logits)

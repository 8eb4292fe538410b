"""The TSN training network: the profile's backbone, dropout, a new head, average consensus.

Why partial BatchNorm: with a few hundred videos and small batches, re-estimating every BN
layer's statistics overfits (Wang et al., TSN, sec. 3.2); all BN layers but the first keep
their ImageNet mean/variance and affine parameters frozen, and the first adapts to the new
input distribution (flow is far from RGB). The head is TSN's: dropout, then a Linear layer
initialised with std 0.001; the K snippet scores are averaged (the consensus) before the loss.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_INIT_STD = 0.001


def batch_norms(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The network's BatchNorm layers in module order (the first is the stem's)."""
    return [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class TSN(nn.Module):
    """(B, K, C, H, W) snippets -> (B, classes) logits, the mean of the K snippets' logits."""

    def __init__(self, backbone: nn.Module, dim: int, classes: int, dropout: float,
                 partial_bn: bool = True):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)
        nn.init.normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)
        self.frozen_bn = batch_norms(backbone)[1:] if partial_bn else []
        for layer in self.frozen_bn:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> TSN:
        """Training mode everywhere except the frozen BN layers, which keep their statistics."""
        super().train(mode)
        for layer in self.frozen_bn:
            layer.eval()
        return self

    def forward(self, snippets: torch.Tensor) -> torch.Tensor:
        batch, segments = snippets.shape[:2]
        features = self.backbone(snippets.flatten(0, 1))
        logits = self.head(self.dropout(features))
        return logits.view(batch, segments, -1).mean(dim=1)

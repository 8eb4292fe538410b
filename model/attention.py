"""Attention units, the shifting operation and the attention cluster (Long et al., CVPR 2018).

A cluster of N units over L local features of width D is computed as one batched operation:
every unit's scores come from a single einsum against an (N, D) weight (or an (N*H, D) hidden
layer for `mlp`, an (H, D) one shared by every unit for `mlp_shared`), and the weighted sums
from einsum('bnl,bld->bnd'), so nothing of size B x N x L x D is ever materialised and there
is no Python loop over units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

UNIT_KINDS = ("avg", "linear", "dot", "mlp", "mlp_shared")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where `mask` is false gets exactly zero weight.

    A finite fill value instead of -inf keeps rows whose positions are all masked free of NaN
    (they come out all-zero after the final multiplication), and keeps gradients finite.
    """
    fill = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, fill), dim=-1)
    return weights * mask.to(weights.dtype)


class AttentionCluster(nn.Module):
    """N attention units over one modality's local features, with optional shifting.

    forward(features (B, L, D), mask (B, L) bool) -> (output (B, N*D), attention (B, N, L)).
    """

    def __init__(
        self,
        dim: int,
        num_units: int,
        unit: str = "linear",
        shifting: bool = True,
        hidden: int = 128,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if unit not in UNIT_KINDS:
            raise ValueError(f"unknown attention unit {unit!r}; choose one of {UNIT_KINDS}")
        if dim < 1 or num_units < 1:
            raise ValueError("dim and num_units must be positive")
        self.dim, self.num_units, self.unit = dim, num_units, unit
        self.shifting, self.hidden, self.eps = shifting, hidden, eps
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default fan-in scale, per unit
        if unit in ("linear", "dot"):
            self.weight = nn.Parameter(torch.empty(num_units, dim).uniform_(-bound, bound))
        if unit == "linear":
            self.bias = nn.Parameter(torch.empty(num_units).uniform_(-bound, bound))
        if unit == "mlp":
            hidden_bound = 1.0 / math.sqrt(hidden)
            self.hidden_weight = nn.Parameter(
                torch.empty(num_units * hidden, dim).uniform_(-bound, bound)
            )
            self.hidden_bias = nn.Parameter(
                torch.empty(num_units * hidden).uniform_(-bound, bound)
            )
            self.out_weight = nn.Parameter(
                torch.empty(num_units, hidden).uniform_(-hidden_bound, hidden_bound)
            )
            self.out_bias = nn.Parameter(
                torch.empty(num_units).uniform_(-hidden_bound, hidden_bound)
            )
        if unit == "mlp_shared":
            # The public Flash-MNIST reproduction's two-layer scorer: one hidden layer for the
            # whole cluster (D -> H, tanh), then one output per unit (H -> N). Its cost does
            # not grow with N*H, unlike `mlp`'s private hidden layer per unit.
            hidden_bound = 1.0 / math.sqrt(hidden)
            self.hidden_weight = nn.Parameter(torch.empty(hidden, dim).uniform_(-bound, bound))
            self.hidden_bias = nn.Parameter(torch.empty(hidden).uniform_(-bound, bound))
            self.out_weight = nn.Parameter(
                torch.empty(num_units, hidden).uniform_(-hidden_bound, hidden_bound)
            )
            self.out_bias = nn.Parameter(
                torch.empty(num_units).uniform_(-hidden_bound, hidden_bound)
            )
        if shifting:
            # The authors' code: Normal(0, std = sqrt(1 / sqrt(N))) for both scalars of a unit.
            std = math.sqrt(1.0 / math.sqrt(num_units))
            self.alpha = nn.Parameter(torch.randn(num_units) * std)
            self.beta = nn.Parameter(torch.randn(num_units) * std)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention scores (B, N, L) of every unit at every position."""
        batch, length, _ = features.shape
        if self.unit == "avg":
            return features.new_zeros(batch, self.num_units, length)
        if self.unit == "linear":
            return torch.einsum("bld,nd->bnl", features, self.weight) + self.bias[:, None]
        if self.unit == "dot":
            return torch.einsum("bld,nd->bnl", features, self.weight) / math.sqrt(self.dim)
        hidden = torch.tanh(
            torch.nn.functional.linear(features, self.hidden_weight, self.hidden_bias)
        )
        if self.unit == "mlp_shared":
            return torch.einsum("blh,nh->bnl", hidden, self.out_weight) + self.out_bias[:, None]
        hidden = hidden.view(batch, length, self.num_units, self.hidden)
        return torch.einsum("blnh,nh->bnl", hidden, self.out_weight) + self.out_bias[:, None]

    def shift(self, pooled: torch.Tensor) -> torch.Tensor:
        """v' = (alpha v + beta) / (sqrt(N) ||alpha v + beta||): each unit has norm 1/sqrt(N)."""
        shifted = self.alpha[:, None] * pooled + self.beta[:, None]
        norm = shifted.norm(dim=-1, keepdim=True).clamp_min(self.eps)
        return shifted / (math.sqrt(self.num_units) * norm)

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attention = masked_softmax(self.scores(features), mask[:, None, :])
        pooled = torch.einsum("bnl,bld->bnd", attention, features)
        if self.shifting:
            pooled = self.shift(pooled)
        return pooled.flatten(1), attention

"""The TV-L1 inner iterations: the hot loop of extract/flow/tvl1_torch.py, one pure function.

It lives alone so that what gets compiled is exactly this file: the ahead-of-time artefact
(extract/flow/aot.py) is named by a hash of its source, so editing the loop invalidates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_FLT_EPSILON = float(torch.finfo(torch.float32).eps)
Scalar = float | torch.Tensor


def _shift_from_left(a: torch.Tensor) -> torch.Tensor:
    """a[..., x - 1] with zero at x = 0 (backward difference partner)."""
    return F.pad(a[..., :-1], (1, 0))


def _shift_from_top(a: torch.Tensor) -> torch.Tensor:
    """a[..., y - 1, :] with zero at y = 0."""
    return F.pad(a[..., :-1, :], (0, 0, 1, 0))


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences, zero on the last column/row (the adjoint of the divergence below)."""
    ux = F.pad(u[..., 1:] - u[..., :-1], (0, 1))
    uy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return ux, uy


def inner_iterations(
    u: torch.Tensor,
    px: torch.Tensor,
    py: torch.Tensor,
    active: torch.Tensor,
    i1w_grad: torch.Tensor,
    grad_sq: torch.Tensor,
    rho_c: torch.Tensor,
    l_t: Scalar,
    theta: Scalar,
    taut: Scalar,
    threshold: Scalar,
    count: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``count`` TV-L1 inner iterations on all pairs; frozen pairs (active False) stay put.

    u (B,2,H,W) flow; px, py (B,2,H,W) dual variable (x and y parts, per flow component);
    active (B,) bool; i1w_grad (B,2,H,W) warped gradient of I1; grad_sq, rho_c (B,1,H,W).
    The four parameters are floats, or 0-d tensors in the ahead-of-time artefact (so that one
    build serves every lambda, theta, tau and epsilon).
    """
    keep = active.view(-1, 1, 1, 1)
    for _ in range(count):
        # thresholding step: v = u + shift, the three cases of rho against lambda*theta*|grad|^2
        rho = rho_c + (i1w_grad * u).sum(dim=1, keepdim=True)
        bound = l_t * grad_sq
        middle = torch.where(grad_sq > _FLT_EPSILON, -rho / grad_sq, torch.zeros_like(rho))
        step = torch.where(rho < -bound, l_t, torch.where(rho > bound, -l_t, middle))
        v = u + step * i1w_grad
        # primal update with the divergence (backward differences) of the dual variable
        div = px - _shift_from_left(px) + py - _shift_from_top(py)
        u_new = v + theta * div
        change = (u_new - u).square().mean(dim=(1, 2, 3))
        u_new = torch.where(keep, u_new, u)
        # dual update with the forward gradient of the new flow
        ux, uy = _forward_gradient(u_new)
        norm = 1.0 + taut * torch.sqrt(ux.square() + uy.square())
        px = torch.where(keep, (px + taut * ux) / norm, px)
        py = torch.where(keep, (py + taut * uy) / norm, py)
        u = u_new
        keep = keep & (change > threshold).view(-1, 1, 1, 1)
    return u, px, py, keep.view(-1)

"""Reference nearest-code search: the full (N, K) distance matrix and an argmin.

This is the plain torch implementation every faster backend is tested against, and the one
`auto` picks for small problems where materializing (N, K) is cheap.
"""

from __future__ import annotations

import torch


def exact_sqdist(x: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(N,) float32 squared distance ||x_n - codebook[indices_n]||^2, computed from the difference.

    Computing the difference (rather than ||x||^2 - 2 x.c + ||c||^2) is exact up to rounding of the
    D-term sum and never negative, so every backend reports the same number for the same code (up to that
    rounding: the compiled and Triton kernels sum the D terms in their own order).
    """
    diff = x - codebook.index_select(0, indices)  # (N, D)
    return diff.square_().sum(dim=1, dtype=torch.float32)  # (N,)


def nearest_code_torch(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N,) int64 and squared distances (N,) float32 of the nearest code, via a full (N, K) matrix."""
    x_sq = x.square().sum(dim=1, keepdim=True)  # (N, 1)
    c_sq = codebook.square().sum(dim=1)  # (K,)
    dist = torch.addmm(c_sq, x, codebook.T, alpha=-2.0).add_(x_sq)  # (N, K) ||x||^2 - 2 x.c + ||c||^2
    indices = dist.argmin(dim=1)  # (N,)
    return indices, exact_sqdist(x, codebook, indices)

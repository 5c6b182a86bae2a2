"""What the quantizer returns, and the input checks every backend applies."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class QuantizeStats(NamedTuple):
    """Per-step statistics (0-d tensors, detached)."""

    perplexity: torch.Tensor
    """exp(entropy) of the code usage in this batch."""
    utilization: torch.Tensor
    """Share of codes used at least once in this batch."""
    commit_loss: torch.Tensor
    """||z - sg(q)||^2 (unweighted)."""
    codebook_loss: torch.Tensor
    """||sg(z) - q||^2 (unweighted; only trained on with update='grad')."""
    dead_codes: torch.Tensor
    """Codes that `Quantizer.dead_mask()` calls dead after this step."""
    resets: torch.Tensor
    """Codes re-seeded in this step."""


class QuantizeOutput(NamedTuple):
    quantized: torch.Tensor
    """(..., dim) quantized vectors in model space, straight-through gradient to the input."""
    indices: torch.Tensor
    """(...,) int64 code ids."""
    loss: torch.Tensor
    """() commitment loss (+ codebook loss with update='grad'), weighted; add to the model loss."""
    stats: QuantizeStats


def validate_input(x: Any, dim: int, check_finite: bool = True) -> None:
    """Raise TypeError/ValueError naming the problem if `x` is not a finite (..., dim) float tensor
    (`check_finite=False`: shape and dtype only; the caller checks finiteness itself, see `raise_if_not_finite`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Quantizer input must be a torch.Tensor of shape (..., {dim}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"Quantizer input must be a floating tensor (float32/float16/bfloat16/float64), got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"Quantizer input must have last dimension dim ({dim}), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"Quantizer input is an empty batch (shape {tuple(x.shape)}); expected at least one vector")
    if check_finite and not torch.isfinite(x.sum()):  # one cheap reduction; NaN/Inf (or overflow) -> exact count
        raise_if_not_finite(x)


def raise_if_not_finite(x: torch.Tensor) -> None:
    """Raise ValueError counting the NaN/Inf values of the Quantizer input `x` (nothing if there are none)."""
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise ValueError(f"Quantizer input has {bad} NaN/Inf value(s) out of {x.numel()}; expected finite values")


def validate_indices(indices: Any, codebook_size: int) -> None:
    """Raise TypeError/ValueError if `indices` is not an integer tensor with values in [0, codebook_size)."""
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
        got = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise TypeError(f"code indices must be an integer tensor, got {got}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= codebook_size):
        bad = indices[(indices < 0) | (indices >= codebook_size)].unique()[:8].tolist()
        raise ValueError(f"code indices must be in [0, {codebook_size}), got out-of-range values {bad}")

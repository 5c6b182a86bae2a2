"""Code usage: the one computation of utilization, perplexity, effective bits and dead codes.

`usage_from_counts` is used by the quantizer's per-step statistics, by `CodebookUsage` (a torchmetrics
Metric that accumulates over batches and syncs under DDP) and by the action tokenizers' bit reports.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchmetrics import Metric

from vqstudy.quantize.config import DEAD_CODE_THRESHOLD


class Usage(NamedTuple):
    """Usage of a codebook of K codes (0-d tensors except `histogram`)."""

    utilization: torch.Tensor
    """Share of codes used at least once."""
    perplexity: torch.Tensor
    """exp(entropy) of the usage distribution (K for uniform use of K codes, 0 when nothing was counted)."""
    effective_bits: torch.Tensor
    """log2(perplexity), clamped at 0."""
    dead_fraction: torch.Tensor
    """Share of codes whose usage share is below dead_threshold / K (unused codes are dead)."""
    histogram: torch.Tensor
    """(K,) usage counts."""


def code_counts(indices: torch.Tensor, codebook_size: int, check: bool = True) -> torch.Tensor:
    """(K,) float64 counts of the integer ids in `indices` (any shape); `check`: raise unless in [0, K)."""
    flat = indices.reshape(-1).long()
    if check and flat.numel() and (flat.min() < 0 or flat.max() >= codebook_size):
        raise ValueError(
            f"code indices must be in [0, {codebook_size}), got min {int(flat.min())} max {int(flat.max())}"
        )
    return torch.bincount(flat, minlength=codebook_size).double()


def perplexity_and_utilization(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(perplexity, utilization, probs) of per-code `counts` (K,), float64: the part of `usage_from_counts` the
    quantizer reports every step."""
    counts = counts.double()
    total = counts.sum()
    probs = counts / total.clamp_min(1)
    # exp(entropy) with 0 log 0 = 0, times 0 when nothing was counted (no host sync)
    perplexity = torch.special.xlogy(probs, probs).sum().neg_().exp_().mul_(total > 0)
    return perplexity, torch.count_nonzero(counts).double() / counts.numel(), probs


def usage_from_counts(counts: torch.Tensor, dead_threshold: float = DEAD_CODE_THRESHOLD) -> Usage:
    """Usage statistics of per-code `counts` (K,)."""
    counts = counts.double()
    k = counts.numel()
    perplexity, utilization, probs = perplexity_and_utilization(counts)
    return Usage(
        utilization=utilization,
        perplexity=perplexity,
        effective_bits=torch.log2(perplexity.clamp_min(1.0)),
        dead_fraction=torch.count_nonzero(probs < dead_threshold / k).double() / k,
        histogram=counts,
    )


def usage_of(indices: torch.Tensor, codebook_size: int, dead_threshold: float = DEAD_CODE_THRESHOLD) -> Usage:
    """Usage statistics of the ids in `indices` (any shape) over `codebook_size` codes."""
    return usage_from_counts(code_counts(indices, codebook_size), dead_threshold)


class CodebookUsage(Metric):
    """Code usage over a window of batches: utilization, perplexity, effective bits, dead fraction.

    update(indices) with integer code ids of any shape; compute() returns a dict of tensors with the
    fields of `Usage` (see there). Reset the metric to start a new window.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, codebook_size: int, dead_threshold: float = DEAD_CODE_THRESHOLD, **kwargs) -> None:
        super().__init__(**kwargs)
        if codebook_size < 1:
            raise ValueError(f"CodebookUsage codebook_size ({codebook_size}) must be >= 1")
        self.codebook_size = codebook_size
        self.dead_threshold = dead_threshold
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: torch.Tensor) -> None:  # type: ignore[override]
        try:
            self.counts += code_counts(indices, self.codebook_size).to(self.counts)
        except ValueError as err:
            raise ValueError(f"CodebookUsage.update: {err}") from None

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        usage = usage_from_counts(self.counts, self.dead_threshold)
        return {**usage._asdict(), "histogram": usage.histogram.clone()}

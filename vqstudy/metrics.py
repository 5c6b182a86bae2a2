"""Codebook metrics that accumulate over batches and sync under DDP (torchmetrics)."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class CodebookUsage(Metric):
    """Code usage over a window of batches: utilization, perplexity, effective bits, dead fraction.

    update(indices) with integer code ids of any shape; compute() returns a dict of tensors:
    - utilization: share of codes used at least once in the window;
    - perplexity: exp(entropy) of the usage distribution (K for uniform use of K codes);
    - effective_bits: log2(perplexity);
    - dead_fraction: share of codes whose usage share is below dead_threshold / K (0 counts -> dead);
    - histogram: (K,) usage counts.
    Reset the metric to start a new window.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, codebook_size: int, dead_threshold: float = 0.03, **kwargs) -> None:
        super().__init__(**kwargs)
        if codebook_size < 1:
            raise ValueError(f"CodebookUsage codebook_size ({codebook_size}) must be >= 1")
        self.codebook_size = codebook_size
        self.dead_threshold = dead_threshold
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: torch.Tensor) -> None:  # type: ignore[override]
        flat = indices.reshape(-1).long()
        if flat.numel() and (flat.min() < 0 or flat.max() >= self.codebook_size):
            raise ValueError(
                f"CodebookUsage.update: indices must be in [0, {self.codebook_size}), "
                f"got min {int(flat.min())} max {int(flat.max())}"
            )
        self.counts += torch.bincount(flat, minlength=self.codebook_size).to(self.counts)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        counts = self.counts
        total = counts.sum()
        probs = counts / total.clamp_min(1)
        entropy = -(probs * probs.clamp_min(1e-300).log()).sum()
        perplexity = entropy.exp() if total > 0 else torch.zeros((), dtype=counts.dtype, device=counts.device)
        return {
            "utilization": (counts > 0).double().mean(),
            "perplexity": perplexity,
            "effective_bits": torch.log2(perplexity.clamp_min(1.0)),
            "dead_fraction": (probs < self.dead_threshold / self.codebook_size).double().mean(),
            "histogram": counts.clone(),
        }


def nominal_bits(codebook_size: int) -> float:
    """log2(K): bits per code if every code were used equally."""
    return math.log2(codebook_size)

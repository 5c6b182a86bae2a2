"""k-means++ seeding and Lloyd iterations (data init of codebooks), on the shared nearest-code search."""

from __future__ import annotations

from typing import NamedTuple

import torch

from vqstudy.kernels import nearest_code


class KMeansResult(NamedTuple):
    centers: torch.Tensor  # (K, D)
    counts: torch.Tensor  # (K,) vectors assigned to each center after the last iteration
    inertia: torch.Tensor  # () mean squared distance to the assigned center


def canonical_order(data: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rows of `data` (N, D) sorted by a fixed random projection.

    The result depends only on the set of rows, not their order, so every rank of a
    distributed job (and a single process seeing the same global batch) draws the same
    random choices from it.
    """
    g = torch.Generator().manual_seed(seed + 7919)
    direction = torch.randn(data.shape[1], generator=g, dtype=torch.float64).to(data.device)
    key = data.double() @ direction  # (N,)
    return data[torch.argsort(key, stable=True)]


def kmeans_plusplus(data: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): k rows of `data` (N, D), D^2-weighted."""
    n = data.shape[0]
    first = int(torch.randint(n, (1,), generator=generator).item())
    centers = [data[first]]
    closest = ((data - data[first]) ** 2).sum(dim=1)  # (N,) squared distance to nearest chosen center
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point already coincides with a center
            idx = int(torch.randint(n, (1,), generator=generator).item())
        else:
            idx = int(torch.multinomial((closest / total).cpu(), 1, generator=generator).item())
        centers.append(data[idx])
        closest = torch.minimum(closest, ((data - data[idx]) ** 2).sum(dim=1))
    return torch.stack(centers)


def kmeans(
    data: torch.Tensor, k: int, iters: int = 10, seed: int = 0, search_backend: str = "auto"
) -> KMeansResult:
    """Cluster `data` (N, D) into k centers: k-means++ seeding, then `iters` Lloyd iterations.

    Requires N >= k. An empty cluster keeps its previous center.
    """
    if data.ndim != 2:
        raise ValueError(f"kmeans expects data of shape (N, D), got {tuple(data.shape)}")
    if data.shape[0] < k:
        raise ValueError(f"kmeans needs at least k ({k}) vectors, got {data.shape[0]}")
    data = data.float()
    g = torch.Generator().manual_seed(seed)
    centers = kmeans_plusplus(data, k, g)
    counts = torch.zeros(k, device=data.device)
    for _ in range(max(iters, 1)):
        idx, _ = nearest_code(data, centers, backend=search_backend)
        counts = torch.bincount(idx, minlength=k).to(data.dtype)
        sums = torch.zeros_like(centers).index_add_(0, idx, data)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    idx, sqdist = nearest_code(data, centers, backend=search_backend)
    counts = torch.bincount(idx, minlength=k).to(data.dtype)
    return KMeansResult(centers, counts, sqdist.mean())

"""Ordered token ids: renumber a codebook so that nearby ids mean nearby actions.

Spec-VLA (arXiv 2507.22424) accepts a drafted action token when |draft id - verified id| <= r. That
relaxation is safe for uniform bins, whose ids are ordered by construction, but not for a learned
codebook whose ids are arbitrary. `seriate` finds a 1-D order of the codes (a short path through
their vectors); `ActionTokenizer(order=...)` (vqstudy.actions.export) applies it as an id permutation.

Conventions: an `order` is a (K,) permutation listing the native codes in their new order:
`order[new_id] = code`, and `new_id = argsort(order)[code]`. For tokenizers with several token
groups (coarse/fine) the order permutes ids within each group only.

What a code "means" (`code_vectors`): by default (`space="latent"`) the vectors the tokenizer's
decoder receives for it (the Quantizer's `codebook_vectors()`; FSQ grid points after FSQ's output
projection; for residual VQ the concatenation of an id's vectors at every level; bin centres for
uniform bins). With `space="action"` a code's vector is its effect on the decoded chunk: for every
position l of its group, decode(reference ids with position l set to the code) - decode(reference),
concatenated over l (reference = the group's first id everywhere). For a decoder that is linear in
its latents both give the same geometry up to a linear map.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from vqstudy.actions.tokenizers import ChunkTokenizer

ORDER_CHOICES = ("seriate_action", "seriate", "none")
"""Id orders of an exported tokenizer: seriate each code's effect on the decoded chunk, seriate the latent code
vectors, or keep native ids."""
DEFAULT_ORDER = "seriate_action"
"""The order new exports use (ordered better than 'seriate' in results/actions)."""

logger = logging.getLogger(__name__)

CodeSpace = Literal["latent", "action"]


# ------------------------------------------------------------------------------------------------
# Seriation
# ------------------------------------------------------------------------------------------------


def _pairwise(vectors: np.ndarray) -> np.ndarray:
    sq = (vectors**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * vectors @ vectors.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def _spectral_order(dist: np.ndarray, knn: int) -> np.ndarray:
    """Order by the Fiedler vector of a symmetric kNN Gaussian affinity (+ a weak global term)."""
    k = dist.shape[0]
    nn_k = min(knn, k - 1)
    kth = np.sort(dist, axis=1)[:, nn_k]  # (K,) distance to the nn_k-th neighbour
    sigma = float(np.median(kth)) or float(dist.max()) or 1.0
    affinity = np.exp(-((dist / sigma) ** 2))
    mask = dist <= kth[:, None]
    affinity = np.where(mask | mask.T, affinity, 1e-6 * affinity)  # weak global term keeps the graph connected
    np.fill_diagonal(affinity, 0.0)
    degree = affinity.sum(1)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-300))
    laplacian = np.eye(k) - inv_sqrt[:, None] * affinity * inv_sqrt[None, :]  # normalized Laplacian
    _, vecs = np.linalg.eigh(laplacian)
    fiedler = vecs[:, 1] * inv_sqrt  # (K,) random-walk embedding
    return np.argsort(fiedler, kind="stable")


def _path_length(path: np.ndarray, dist: np.ndarray) -> float:
    return float(dist[path[:-1], path[1:]].sum())


def _two_opt(path: np.ndarray, dist: np.ndarray, max_passes: int) -> np.ndarray:
    """Reverse segments of the open path while that shortens it (first-improvement 2-opt)."""
    path = path.copy()
    k = len(path)
    for _ in range(max_passes):
        improved = False
        for i in range(k - 1):
            # reverse path[i..j] for j in (i, k): edges (i-1, i) and (j, j+1) become (i-1, j) and (i, j+1)
            js = np.arange(i + 1, k)
            a, b = path[i - 1] if i > 0 else -1, path[i]
            c, d = path[js], np.where(js + 1 < k, path[np.minimum(js + 1, k - 1)], -1)
            old = (dist[a, b] if a >= 0 else 0.0) + np.where(d >= 0, dist[c, np.maximum(d, 0)], 0.0)
            new = (dist[a, c] if a >= 0 else 0.0) + np.where(d >= 0, dist[b, np.maximum(d, 0)], 0.0)
            gain = old - new
            best = int(np.argmax(gain))
            if gain[best] > 1e-12:
                j = int(js[best])
                path[i : j + 1] = path[i : j + 1][::-1]
                improved = True
        if not improved:
            break
    return path


def _greedy_order(dist: np.ndarray) -> np.ndarray:
    """Nearest-neighbour path started at an end of the diameter."""
    k = dist.shape[0]
    start = int(np.argmax(dist.max(1)))
    path, seen = [start], np.zeros(k, dtype=bool)
    seen[start] = True
    for _ in range(k - 1):
        row = np.where(seen, np.inf, dist[path[-1]])
        nxt = int(np.argmin(row))
        path.append(nxt)
        seen[nxt] = True
    return np.asarray(path)


def seriate(
    vectors: Tensor,
    method: Literal["spectral", "greedy"] = "spectral",
    two_opt: bool = True,
    knn: int = 10,
    max_passes: int = 20,
) -> Tensor:
    """(K, F) vectors -> (K,) int64 order: a short path through the vectors (`order[new_id] = code`).

    'spectral' sorts by the Fiedler vector of a kNN Gaussian affinity; 'greedy' walks to the nearest
    unvisited vector. `two_opt` then shortens the open path. The result is oriented so that
    order[0] < order[-1] (a reversed path is equally good; this keeps ordered inputs unchanged).
    """
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(f"vectors must be (K, F) with K >= 1, got shape {tuple(vectors.shape)}")
    if method not in ("spectral", "greedy"):
        raise ValueError(f"method ({method!r}) must be 'spectral' or 'greedy'")
    k = vectors.shape[0]
    if k <= 2:
        return torch.arange(k)
    v = vectors.detach().double().cpu().numpy()
    dist = _pairwise(v)
    path = _spectral_order(dist, knn) if method == "spectral" else _greedy_order(dist)
    if two_opt:
        before = _path_length(path, dist)
        path = _two_opt(path, dist, max_passes)
        logger.debug("2-opt path length %.4g -> %.4g", before, _path_length(path, dist))
    if path[0] > path[-1]:
        path = path[::-1]
    return torch.from_numpy(np.ascontiguousarray(path)).long()


def inverse_order(order: Tensor) -> Tensor:
    """(K,) order -> (K,) rank with rank[order[i]] = i (native code -> ordered id)."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank


def check_order(order: Tensor, tokenizer: ChunkTokenizer) -> None:
    """Raise ValueError unless `order` is a permutation of [0, K) that keeps every token group's ids inside it."""
    k = tokenizer.vocab_size
    if order.ndim != 1 or order.shape[0] != k or order.is_floating_point():
        raise ValueError(f"order must be an integer (K,) = ({k},) permutation, got {order.dtype} {tuple(order.shape)}")
    if not torch.equal(torch.sort(order.cpu()).values, torch.arange(k)):
        raise ValueError(f"order must be a permutation of [0, {k})")
    for g in tokenizer.token_groups():
        part = order[g.start : g.start + g.size]
        if part.numel() and (part.min() < g.start or part.max() >= g.start + g.size):
            raise ValueError(f"order must keep ids of group [{g.start}, {g.start + g.size}) inside it")


# ------------------------------------------------------------------------------------------------
# Code vectors and codebook orders of a tokenizer
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def code_vectors(tokenizer: ChunkTokenizer, space: CodeSpace = "latent") -> list[Tensor]:
    """Per token group, (size, F) vectors standing for its codes (see the module docstring)."""
    if space == "latent":
        return tokenizer.code_vectors()
    if space != "action":
        raise ValueError(f"space ({space!r}) must be 'latent' or 'action'")
    device = next(iter(tokenizer.parameters()), torch.empty(0)).device
    groups = tokenizer.token_groups()
    ref = torch.tensor([[g.start for g in groups for _ in range(g.positions.stop - g.positions.start)]],
                       device=device)  # (1, L): every position at its group's first id
    base = tokenizer.decode(ref)  # (1, H, A)
    out = []
    for g in groups:
        effects = []
        for pos in range(g.positions.start, g.positions.stop):
            ids = ref.repeat(g.size, 1)  # (size, L)
            ids[:, pos] = torch.arange(g.start, g.start + g.size, device=device)
            effects.append((tokenizer.decode(ids) - base).flatten(1))  # (size, H*A)
        out.append(torch.cat(effects, dim=1))  # (size, L_g*H*A)
    return out


def codebook_order(tokenizer: ChunkTokenizer, space: CodeSpace = "latent", **seriate_kwargs) -> Tensor:
    """(K,) order of all ids of `tokenizer`: each token group seriated on its code vectors."""
    parts = [seriate(v, **seriate_kwargs) + g.start
             for g, v in zip(tokenizer.token_groups(), code_vectors(tokenizer, space))]
    return torch.cat(parts)


def rank_correlation(order: Tensor, vectors: Tensor, max_pairs: int = 200_000, seed: int = 0) -> float:
    """Spearman correlation over code pairs between |id_i - id_j| (ids after `order`) and ||v_i - v_j||.

    1 means nearby ids are nearby vectors; about 0 for a random order. Pairs are subsampled above max_pairs.
    """
    from scipy.stats import spearmanr

    if vectors.ndim != 2 or order.shape != (vectors.shape[0],):
        raise ValueError(f"order ({tuple(order.shape)}) and vectors ({tuple(vectors.shape)}) must be (K,) and (K, F)")
    k = vectors.shape[0]
    rank = inverse_order(order.cpu()).double()
    i, j = torch.triu_indices(k, k, offset=1)
    if i.numel() > max_pairs:
        pick = torch.randperm(i.numel(), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        i, j = i[pick], j[pick]
    id_gap = (rank[i] - rank[j]).abs().numpy()
    v = vectors.detach().double().cpu()
    dist = (v[i] - v[j]).norm(dim=1).numpy()
    return float(spearmanr(id_gap, dist).statistic)


# ------------------------------------------------------------------------------------------------
# Error of accepting a neighbouring id
# ------------------------------------------------------------------------------------------------


class NeighbourError(NamedTuple):
    r: Tensor
    """(R,) id distances."""
    mse: Tensor
    """(R,) MSE between the decode of perturbed ids and the decode of the true ids (normalized units)."""
    mae: Tensor
    """(R,) same, mean absolute error."""


@torch.no_grad()
def neighbour_error(
    tokenizer: ChunkTokenizer,
    chunks: Tensor,
    r_values: Iterable[int] = range(17),
    ordered: bool = True,
    order: Tensor | None = None,
    mode: Literal["exact", "within"] = "exact",
    seed: int = 0,
) -> NeighbourError:
    """Action error from replacing every true token by one at ordered-id distance r (Spec-VLA acceptance).

    Ids are those of `order` if given, else of `codebook_order(tokenizer)` when `ordered`, else the
    tokenizer's native ids. mode 'exact': distance exactly r (random side, the other side at a group's
    edge; clamped when the group has fewer than r ids on both sides); 'within': uniform in [-r, r].
    Errors are against the decode of the true ids, so r=0 gives 0.
    """
    if mode not in ("exact", "within"):
        raise ValueError(f"mode ({mode!r}) must be 'exact' or 'within'")
    if order is None:
        order = codebook_order(tokenizer) if ordered else torch.arange(tokenizer.vocab_size)
    check_order(order, tokenizer)
    ids = tokenizer.encode(chunks)  # (B, L) native
    order = order.to(ids.device)
    ranked = inverse_order(order)[ids]  # (B, L) ordered ids
    clean = tokenizer.decode(ids)
    lows = torch.zeros_like(ranked)
    highs = torch.zeros_like(ranked)
    for g in tokenizer.token_groups():
        lows[:, g.positions], highs[:, g.positions] = g.start, g.start + g.size - 1
    gen = torch.Generator().manual_seed(seed)
    rs, mses, maes = [], [], []
    for r in r_values:
        if mode == "exact":
            step = torch.full(ranked.shape, int(r))
            sign = torch.where(torch.rand(ranked.shape, generator=gen) < 0.5, -1, 1)
        else:
            step = torch.randint(0, int(r) + 1, ranked.shape, generator=gen)
            sign = torch.where(torch.rand(ranked.shape, generator=gen) < 0.5, -1, 1)
        cand = ranked + (sign * step).to(ranked.device)
        flipped = ranked - (sign * step).to(ranked.device)
        outside = (cand < lows) | (cand > highs)
        cand = torch.where(outside, flipped, cand)
        cand = torch.minimum(torch.maximum(cand, lows), highs)
        recon = tokenizer.decode(order[cand])
        rs.append(int(r))
        mses.append(((recon - clean) ** 2).mean())
        maes.append((recon - clean).abs().mean())
    return NeighbourError(torch.tensor(rs), torch.stack(mses).cpu(), torch.stack(maes).cpu())

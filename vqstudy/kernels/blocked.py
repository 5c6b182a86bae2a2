"""Blocked nearest-code search for the CPU: never materializes the (N, K) distance matrix.

Rows of x are processed in blocks of `block_rows`. Per block:
1. one GEMM writes s = ||c||^2 - 2 x.c into a preallocated (B, Kp) buffer. The ||c||^2 term is
   folded into the GEMM by augmenting x with a ones column and the codebook with a ||c||^2 column,
   so there is no separate pass to add a bias:  [x, 1] @ [-2c, ||c||^2]^T;
2. a two-level argmin. A value-only `amin` over G interleaved groups, (B, G, Kp/G) -> (B, Kp/G),
   is a vectorized streaming pass; only the G-times smaller result goes through the slow
   min-with-index, and the winning group is found among G gathered candidates. Rows with a tie
   (more than one minimal entry) are rescanned so that the lowest code index wins, as in the reference.
   (torch's `min(dim)` with indices runs at ~1/4 the speed of `amin`; over the full block it would
   cost about as much as the GEMM itself.)
3. the exact ||x - c||^2 of the chosen code, from the difference.
The codebook is padded to Kp = ceil(K / G) * G with codes at distance +inf.

Parallelism (CPU): one worker thread per torch thread, each with its own buffers, pulling blocks from
a shared queue while torch runs single-threaded ops. Compared with splitting every small op across
cores (one OpenMP barrier per op), this keeps each block in one core's cache and degrades gracefully
when another process takes a core: measured 2-3x faster on a loaded 2-core machine. During the call
`torch.set_num_threads(1)` is in effect process-wide (restored afterwards).

Memory: the scratch buffers are bounded by `TARGET_BUFFER_BYTES` per worker (see `blocked_plan`),
independent of N.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch

from vqstudy.kernels.reference import exact_sqdist

TARGET_BUFFER_BYTES = 8 * 2**20
"""Size of one worker's (B, Kp) distance block; B = TARGET_BUFFER_BYTES / (Kp * itemsize). Swept on the idle
2-core Xeon (4/8/16/32/64 MiB): 8 MiB was best or near-best at (65536, 4096, 32), (32768, 1024, 64) and
(65536, 16384, 32); fewer, larger blocks cost less per-block overhead than they lose to cache misses."""
GROUPS = 16
"""G: codes are split into G interleaved groups for the two-level argmin."""
MIN_CODES_FOR_GROUPS = 256
"""Below this many codes the plain min-with-index is used (G = 1)."""
ROW_ALIGN = 16
"""block_rows is rounded down to a multiple of this (when larger), which keeps the GEMM on its fast path."""
MIN_WORK_FOR_WORKERS = 1 << 25
"""Below this N*K, search in the calling thread with torch's own intra-op threads: switching torch to one
thread and back restarts the OpenMP pool, which costs more than a small search (and slows the next op)."""


class BlockedPlan(NamedTuple):
    """Block sizes chosen for one call and the scratch memory they need."""

    block_rows: int
    """B: rows of x per block."""
    groups: int
    """G: interleaved code groups of the two-level argmin (1 = plain min)."""
    padded_codes: int
    """Kp: K rounded up to a multiple of G."""
    workers: int
    """Worker threads, each with its own scratch buffers."""
    buffer_bytes: int
    """All scratch allocated by one call: per worker the distance block, group minima, augmented rows,
    per-block index/value/difference buffers; plus the augmented codebook (outputs excluded)."""


def blocked_plan(n: int, k: int, d: int, itemsize: int = 4, workers: int = 1) -> BlockedPlan:
    """Block sizes for searching n vectors of width d among k codes (itemsize = bytes per element)."""
    if min(n, k, d, itemsize, workers) < 1:
        raise ValueError(
            f"blocked_plan needs n, k, d, itemsize, workers >= 1, got n={n}, k={k}, d={d}, "
            f"itemsize={itemsize}, workers={workers}"
        )
    groups = GROUPS if k >= MIN_CODES_FOR_GROUPS else 1
    padded = math.ceil(k / groups) * groups
    rows = max(1, min(math.ceil(n / workers), TARGET_BUFFER_BYTES // (padded * itemsize)))
    if ROW_ALIGN < rows < n:
        rows -= rows % ROW_ALIGN
    workers = min(workers, math.ceil(n / rows))
    per_row = padded + (padded // groups if groups > 1 else 0) + 2 * (d + 1)  # scratch elements per block row
    per_worker = itemsize * rows * per_row + (8 + 8) * rows  # + int64 column ids, float32/64 best values
    scratch = workers * per_worker + itemsize * padded * (d + 1)
    return BlockedPlan(block_rows=rows, groups=groups, padded_codes=padded, workers=workers, buffer_bytes=scratch)


def _augmented_codebook(codebook: torch.Tensor, padded: int) -> torch.Tensor:
    """(Kp, D+1) rows [-2 c, ||c||^2]; padding rows [0, +inf] can never win."""
    k, d = codebook.shape
    aug = codebook.new_zeros(padded, d + 1)
    torch.mul(codebook, -2.0, out=aug[:k, :d])
    torch.sum(codebook.square(), dim=1, out=aug[:k, d])
    aug[k:, d] = math.inf
    return aug


@contextlib.contextmanager
def _torch_threads(num: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _search_blocks(
    x: torch.Tensor,
    codebook: torch.Tensor,
    c_aug_t: torch.Tensor,
    plan: BlockedPlan,
    next_start: Iterator[int],
    lock: threading.Lock,
    indices: torch.Tensor,
    sqdist: torch.Tensor,
) -> None:
    """One worker: allocate its scratch, then search blocks until `next_start` is exhausted."""
    n, d = x.shape
    k = codebook.shape[0]
    rows, groups, padded = plan.block_rows, plan.groups, plan.padded_codes
    per_group = padded // groups
    x_aug = x.new_empty(rows, d + 1)  # (B, D+1) = [x_blk, 1]
    x_aug[:, d] = 1.0
    dist = x.new_empty(rows, padded)  # (B, Kp) ||c||^2 - 2 x.c
    group_min = x.new_empty(rows, per_group) if groups > 1 else None  # (B, Kp/G)
    best_val = x.new_empty(rows)  # (B,)
    best_col = torch.empty(rows, dtype=torch.long, device=x.device)  # (B,)
    diff = x.new_empty(rows, d)  # (B, D) for the exact distance of the chosen code
    with torch.no_grad():
        while True:
            with lock:
                start = next(next_start, None)
            if start is None:
                return
            m = min(rows, n - start)
            x_blk = x[start : start + m]  # (m, D)
            idx = indices[start : start + m]  # (m,) view into the output
            x_aug[:m, :d].copy_(x_blk)
            blk = dist[:m]
            torch.mm(x_aug[:m], c_aug_t, out=blk)  # (m, Kp)
            if group_min is None:
                torch.min(blk, dim=1, out=(best_val[:m], idx))
            else:
                grouped = blk.view(m, groups, per_group)  # (m, G, Kp/G): code = g * Kp/G + j
                torch.amin(grouped, dim=1, out=group_min[:m])  # (m, Kp/G) best over groups, per column j
                torch.min(group_min[:m], dim=1, out=(best_val[:m], best_col[:m]))  # (m,) best column j
                cand = grouped.gather(2, best_col[:m].view(m, 1, 1).expand(m, groups, 1)).view(m, groups)  # (m, G)
                best_group = cand.min(dim=1).indices  # (m,); min() beats argmin() here
                torch.add(best_col[:m], best_group, alpha=per_group, out=idx)
                # Ties go to the lowest code index, as in the reference. The lookup above prefers the lowest column j,
                # not the lowest code g * Kp/G + j, so rows with more than one minimal entry (one minimal column
                # and one minimal group is the only tie-free case) are redone with a first-match scan.
                best = best_val[:m, None]  # (m, 1)
                tied = (group_min[:m] == best).sum(dim=1) + (cand == best).sum(dim=1) > 2  # (m,)
                if bool(tied.any()):
                    rows_t = tied.nonzero().squeeze(1)  # (T,)
                    idx[rows_t] = (blk[rows_t] == best[rows_t]).byte().argmax(dim=1)  # first minimal code
            if padded > k:
                idx.clamp_(max=k - 1)  # only reachable when every real distance is +inf/NaN
            torch.index_select(codebook, 0, idx, out=diff[:m])
            diff[:m].sub_(x_blk).square_()
            torch.sum(diff[:m], dim=1, dtype=torch.float32, out=sqdist[start : start + m])


@torch.no_grad()
def nearest_code_blocked(
    x: torch.Tensor, codebook: torch.Tensor, plan: BlockedPlan | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N,) int64 and squared distances (N,) float32 of the nearest code, block by block."""
    n, d = x.shape
    k = codebook.shape[0]
    if plan is None:
        workers = torch.get_num_threads() if x.device.type == "cpu" and n * k >= MIN_WORK_FOR_WORKERS else 1
        plan = blocked_plan(n, k, d, x.element_size(), workers)
    c_aug_t = _augmented_codebook(codebook, plan.padded_codes).T  # (D+1, Kp)
    indices = torch.empty(n, dtype=torch.long, device=x.device)
    sqdist = torch.empty(n, dtype=torch.float32, device=x.device)
    args = (x, codebook, c_aug_t, plan, iter(range(0, n, plan.block_rows)), threading.Lock(), indices, sqdist)
    if plan.workers == 1:
        _search_blocks(*args)
        return indices, sqdist
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            _search_blocks(*args)
        except BaseException as err:  # re-raised in the calling thread below
            errors.append(err)

    threads = [threading.Thread(target=worker, name=f"vqstudy-nearest-{i}") for i in range(plan.workers - 1)]
    with _torch_threads(1):
        for t in threads:
            t.start()
        try:
            _search_blocks(*args)  # the calling thread is a worker too
        finally:
            for t in threads:
                t.join()
    if errors:
        raise errors[0]
    return indices, sqdist


__all__ = ["BlockedPlan", "blocked_plan", "nearest_code_blocked", "exact_sqdist"]

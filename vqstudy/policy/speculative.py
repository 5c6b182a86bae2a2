"""Speculative decoding of action tokens with relaxed acceptance (Spec-VLA, arXiv 2507.22424).

A cheap draft model proposes `gamma` ids; one pass of the target model scores them all; the longest
prefix of draft ids that each lie within `r` of the target's own greedy id (distance measured in an id
*order*: `rank[id]`) is accepted, and the target's id is taken at the first rejection (or, when every
draft id is accepted, the target's next id comes free from the same pass). With r = 0 the output is
exactly the target's greedy decode; with r > 0 it is only as good as the order makes nearby ids mean
nearby actions, which is the question the package asks of learned codebooks.

Models implement `TokenModel`: teacher-forced next-id logits for every prefix length in one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class ParallelDraft(Protocol):
    """A Medusa-style draft (arXiv 2401.10774): all L ids of a chunk from the condition in one pass, no prefix."""

    vocab_size: int
    num_tokens: int

    def forward(self, cond: Tensor) -> Tensor:
        """cond (B, C) -> (B, L, K) logits of every position."""
        ...


@runtime_checkable
class TokenModel(Protocol):
    """An autoregressive model over the L ids of one action chunk, conditioned on a vector."""

    vocab_size: int
    """K, ids per position."""
    num_tokens: int
    """L, ids per chunk."""

    def logits(self, cond: Tensor, ids: Tensor) -> Tensor:
        """cond (B, C), ids (B, T) with T < L -> (B, T + 1, K): logits of id t given ids[:, :t], t = 0..T."""
        ...


class SpecResult(NamedTuple):
    ids: Tensor
    """(B, L) decoded ids."""
    target_passes: int
    """Target forward passes over the whole batch (each scores gamma draft ids)."""
    draft_passes: int
    """Draft forward passes."""
    accepted: Tensor
    """(B,) draft ids accepted per chunk (summed over rounds)."""
    rounds: Tensor
    """(B,) verification rounds per chunk (= target passes that chunk needed)."""


@torch.no_grad()
def greedy_decode(model: TokenModel, cond: Tensor) -> tuple[Tensor, int]:
    """Plain autoregressive greedy decoding: L target passes. Returns ((B, L) ids, passes)."""
    ids = torch.zeros(cond.shape[0], 0, dtype=torch.long, device=cond.device)
    for _ in range(model.num_tokens):
        nxt = model.logits(cond, ids)[:, -1].argmax(-1)  # (B,)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids, model.num_tokens


def check_rank(rank: Tensor, vocab_size: int) -> Tensor:
    """`rank` (K,) must be a permutation of [0, K): rank[id] is the id's position in the order."""
    rank = torch.as_tensor(rank)
    if rank.ndim != 1 or rank.shape[0] != vocab_size or rank.is_floating_point():
        raise ValueError(f"rank must be an integer ({vocab_size},) permutation, got {rank.dtype} {tuple(rank.shape)}")
    if not torch.equal(torch.sort(rank.cpu()).values, torch.arange(vocab_size)):
        raise ValueError(f"rank must be a permutation of [0, {vocab_size})")
    return rank.long()


@torch.no_grad()
def speculative_decode(target: TokenModel, draft: TokenModel | ParallelDraft, cond: Tensor, gamma: int, r: int | Tensor = 0,
                       rank: Tensor | None = None, draft_cond: Tensor | None = None) -> SpecResult:
    """Decode (B, L) ids: the draft proposes `gamma` ids (g autoregressive passes, or one pass of a parallel
    draft), one target pass verifies them.

    A draft id d at a position is accepted when |rank[d] - rank[t]| <= r, t the target's greedy id there
    given the same prefix; decoding continues from the accepted prefix plus the target's id at the first
    rejection (or the target's next id after a fully accepted draft). `r` is an int or a (B,) tensor (a
    per-chunk tolerance, e.g. phase-adaptive); `rank` None means native ids. Every returned id is one
    the target or the draft produced, so it lies in [0, K).
    """
    if gamma < 1:
        raise ValueError(f"gamma ({gamma}) must be >= 1")
    if target.vocab_size != draft.vocab_size or target.num_tokens != draft.num_tokens:
        raise ValueError(f"draft (K={draft.vocab_size}, L={draft.num_tokens}) must match the target "
                         f"(K={target.vocab_size}, L={target.num_tokens})")
    b, length, k = cond.shape[0], target.num_tokens, target.vocab_size
    rank = torch.arange(k) if rank is None else check_rank(rank, k)
    rank = rank.to(cond.device)
    tol = torch.as_tensor(r, device=cond.device).long().expand(b).clone()  # (B,)
    if (tol < 0).any():
        raise ValueError(f"r must be >= 0, got {tol.min().item()}")
    draft_cond = cond if draft_cond is None else draft_cond
    out = torch.zeros(b, length, dtype=torch.long, device=cond.device)
    filled = torch.zeros(b, dtype=torch.long, device=cond.device)  # ids decoded per row
    accepted = torch.zeros(b, dtype=torch.long, device=cond.device)
    rounds = torch.zeros(b, dtype=torch.long, device=cond.device)
    target_passes = draft_passes = 0
    while bool((filled < length).any()):
        live = (filled < length).nonzero().squeeze(1)  # rows still decoding
        n = int(filled[live].min())  # rows advance unevenly: work on the rows at the shortest prefix
        rows = live[filled[live] == n]
        g = min(gamma, length - n)
        prefix = out[rows, :n]  # (R, n)
        if isinstance(draft, TokenModel):
            proposal = prefix
            for _ in range(g):  # autoregressive draft: g cheap greedy passes
                nxt = draft.logits(draft_cond[rows], proposal)[:, -1].argmax(-1)
                proposal = torch.cat([proposal, nxt[:, None]], dim=1)
            draft_passes += g
        else:  # parallel draft: one pass proposes positions n..n+g-1 (it does not see the prefix)
            proposal = torch.cat([prefix, draft(draft_cond[rows])[:, n : n + g].argmax(-1)], dim=1)
            draft_passes += 1
        scores = target.logits(cond[rows], proposal[:, : n + g - (1 if n + g == length else 0)])  # one pass
        target_passes += 1
        target_ids = scores[:, n:].argmax(-1)  # (R, g) or (R, g + 1): target's id at each drafted position
        drafted = proposal[:, n:]  # (R, g)
        ok = (rank[drafted] - rank[target_ids[:, :g]]).abs() <= tol[rows, None]  # (R, g)
        run = ok.long().cumprod(dim=1).sum(dim=1)  # (R,) accepted prefix length
        for i, row in enumerate(rows.tolist()):
            a = int(run[i])
            take = drafted[i, :a]
            if a < g or target_ids.shape[1] > g:  # a rejection, or a free target id after a full accept
                take = torch.cat([take, target_ids[i, a : a + 1]])
            take = take[: length - n]
            out[row, n : n + len(take)] = take
            filled[row] = n + len(take)
            accepted[row] += a
            rounds[row] += 1
    return SpecResult(out, target_passes, draft_passes, accepted, rounds)


class Timed(NamedTuple):
    seconds: float
    """Median wall time of one call."""
    value: object


def time_call(fn: Callable[[], object], repeats: int = 5) -> Timed:
    """Median wall time of `fn()` over `repeats` calls (after one warm-up), and its last value."""
    fn()
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return Timed(sorted(times)[len(times) // 2], value)


def hand_speed(obs: Tensor) -> Tensor:
    """Hand speed per step from Meta-World's 39-D observation (B, 39): |hand now - hand one step ago|,
    where obs[:, 0:3] is the hand position and obs[:, 18:21] the previous frame's (B,)."""
    if obs.ndim != 2 or obs.shape[1] != 39:
        raise ValueError(f"obs must be (B, 39) Meta-World observations, got {tuple(obs.shape)}")
    return (obs[:, 0:3] - obs[:, 18:21]).norm(dim=1)


def phase_tolerance(speed: Tensor, threshold: float, r_coarse: int) -> Tensor:
    """Phase-adaptive relaxation (arXiv 2509.05614's coarse/fine phases): r_coarse where the measured hand
    speed marks a coarse phase (speed > threshold), exact acceptance (r = 0) in fine phases. (B,) long."""
    return torch.where(speed > threshold, torch.full_like(speed, r_coarse), torch.zeros_like(speed)).long()

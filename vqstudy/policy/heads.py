"""Policy heads on top of frozen encoder features (B, F): continuous regression and token classification.

- `ContinuousHead`: MLP -> (B, H, A) normalized chunk, trained by MSE (the Diffusion-Policy side of the
  comparison, reduced to plain regression; no flow/diffusion head here).
- `FlowHead`: conditional flow matching (rectified flow, arXiv 2210.02747 / 2209.03003) on the whole
  chunk, integrated with a few Euler steps: the Diffusion Policy / pi0 analogue.
- `DiscreteHead`: MLP -> (B, L, d) per-position embeddings -> logits (B, L, K) against a shared (K, d)
  output embedding plus a per-position bias, trained by cross-entropy on a tokenizer's ids and decoded
  by the tokenizer (the OAT side). Positions are predicted in parallel (no autoregression); when a
  tokenizer's positions use different id ranges (`token_groups`), logits outside a position's range
  are masked.
- `AutoregressiveHead`: a causal masked MLP over [condition, id_1, ..., id_L]: next-id logits for
  any prefix, teacher-forced logits for every position in one pass, greedy decoding. Its interface
  (`next_logits`, `logits`, `greedy`) is what a speculative decoder needs from a target model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@dataclass
class HeadConfig:
    """Size and training of every policy head (the same for all heads of a grid)."""

    hidden: int = 256
    """Hidden width of the head's MLP."""
    layers: int = 2
    """Hidden layers of the head's MLP."""
    token_dim: int = 32
    """Discrete heads: width d of the per-position embedding scored against the (K, d) output table."""
    flow_steps: int = 5
    """Flow head: Euler steps from noise to a chunk at inference (training is simulation-free)."""
    ar_dim: int = 16
    """Autoregressive head: width of each previous id's embedding in the causal MLP's input."""
    steps: int = 400
    """Adam steps."""
    batch_size: int = 128
    """Samples per step (drawn with replacement)."""
    lr: float = 1e-3
    """Adam learning rate (cosine-decayed to 0)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "token_dim", "steps", "batch_size", "flow_steps", "ar_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HeadConfig.{name} ({value!r}) must be a positive integer")
        if not self.lr > 0:
            raise ValueError(f"HeadConfig.lr ({self.lr}) must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"HeadConfig.weight_decay ({self.weight_decay}) must be >= 0")


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    """in_dim -> (Linear, GELU) x layers -> out_dim."""
    blocks: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, out_dim))


class ContinuousHead(nn.Module):
    """(B, F) -> (B, H, A) normalized chunk."""

    def __init__(self, in_dim: int, horizon: int, action_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.net = mlp(in_dim, cfg.hidden, cfg.layers, horizon * action_dim)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.net(x), "b (h a) -> b h a", h=self.horizon)  # (B, H*A) -> (B, H, A)

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        """MSE to normalized chunks (B, H, A)."""
        return F.mse_loss(self(x), target)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """(B, F) -> (B, H, A) normalized chunk."""
        return self(x)


class FlowHead(nn.Module):
    """Conditional flow matching on normalized chunks: v(x, a_t, t) regresses a_1 - a_0 along
    a_t = (1 - t) a_0 + t a_1, a_0 ~ N(0, I); `predict` integrates from noise with `flow_steps` Euler steps."""

    def __init__(self, in_dim: int, horizon: int, action_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.horizon, self.action_dim, self.steps = horizon, action_dim, cfg.flow_steps
        self.net = mlp(in_dim + horizon * action_dim + 1, cfg.hidden, cfg.layers + 1, horizon * action_dim)

    def velocity(self, x: Tensor, a: Tensor, t: Tensor) -> Tensor:
        """x (B, F), a_t (B, H, A), t (B,) -> velocity (B, H, A)."""
        flat = rearrange(a, "b h a -> b (h a)")
        v = self.net(torch.cat([x, flat, t[:, None]], dim=1))  # (B, H*A)
        return rearrange(v, "b (h a) -> b h a", h=self.horizon)

    def loss(self, x: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching MSE for normalized chunks `target` (B, H, A)."""
        a0 = torch.randn(target.shape, generator=generator)
        t = torch.rand(len(target), generator=generator)  # (B,)
        at = (1 - t[:, None, None]) * a0 + t[:, None, None] * target
        return F.mse_loss(self.velocity(x, at, t), target - a0)

    @torch.no_grad()
    def predict(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, F) -> (B, H, A) normalized chunk, Euler-integrated from N(0, I) noise."""
        a = torch.randn((len(x), self.horizon, self.action_dim), generator=generator)
        dt = 1.0 / self.steps
        for i in range(self.steps):
            a = a + dt * self.velocity(x, a, torch.full((len(x),), i * dt))
        return a


def allowed_ids(num_tokens: int, vocab_size: int, groups: Sequence[tuple[int, int, int, int]] | None) -> Tensor:
    """(L, K) bool: which ids each position may take; `groups` as (first position, end position, first id, count)."""
    allowed = torch.ones(num_tokens, vocab_size, dtype=torch.bool)
    if groups is not None:
        allowed.zero_()
        for p0, p1, start, size in groups:
            allowed[p0:p1, start:start + size] = True
    return allowed


class DiscreteHead(nn.Module):
    """(B, F) -> logits (B, L, K) over a tokenizer's ids; `predict` gives the argmax ids (B, L)."""

    def __init__(self, in_dim: int, num_tokens: int, vocab_size: int, cfg: HeadConfig,
                 groups: Sequence[tuple[int, int, int, int]] | None = None) -> None:
        """`groups`: (first position, end position, first id, number of ids) per token group; None: all ids
        allowed at every position."""
        super().__init__()
        self.num_tokens, self.vocab_size = num_tokens, vocab_size
        self.net = mlp(in_dim, cfg.hidden, cfg.layers, num_tokens * cfg.token_dim)
        self.table = nn.Parameter(torch.randn(vocab_size, cfg.token_dim) / cfg.token_dim**0.5)  # (K, d)
        self.bias = nn.Parameter(torch.zeros(num_tokens, vocab_size))  # (L, K)
        allowed = allowed_ids(num_tokens, vocab_size, groups)
        self.register_buffer("allowed", allowed)  # (L, K)
        self.masked = not bool(allowed.all())

    def forward(self, x: Tensor) -> Tensor:
        z = rearrange(self.net(x), "b (l d) -> b l d", l=self.num_tokens)  # (B, L, d)
        logits = F.linear(z, self.table) + self.bias  # (B, L, d) @ (d, K) + (L, K) -> (B, L, K)
        return logits.masked_fill(~self.allowed, float("-inf")) if self.masked else logits

    def loss(self, x: Tensor, ids: Tensor) -> Tensor:
        """Cross-entropy to ids (B, L), averaged over positions."""
        logits = self(x)
        return F.cross_entropy(rearrange(logits, "b l k -> (b l) k"), rearrange(ids, "b l -> (b l)"))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """(B, F) -> (B, L) int64 most likely id per position."""
        return self(x).argmax(-1)


class AutoregressiveHead(nn.Module):
    """p(id_1..id_L | c) = prod_l p(id_l | c, id_<l), with c the (B, F) conditioning vector: position j
    is scored from trunk(c) + W [embeddings of id_1..id_{j-1}, zeros for later slots] + pos_j through a
    GELU and a linear readout (a causal masked MLP in the spirit of MADE, arXiv 1502.03509; with L <= 8
    it is enough here, several times cheaper than a transformer on a CPU, and trains all positions in
    one pass).

    Target-model interface for speculative decoding (all ids are the tokenizer's, in [0, K)):
    - `next_logits(x, prefix (B, l))` -> (B, K) logits of id_{l+1}, 0 <= l < L;
    - `logits(x, ids (B, l))` -> (B, min(l + 1, L), K) logits for positions 1..l+1 in one pass (row j
      conditions on ids[:, :j]): verifies l drafted ids at once, plus the next guess when l < L;
    - `greedy(x)` -> (B, L) argmax decoding, one position at a time.
    Ids outside a position's id range (`token_groups`) get -inf logits.
    """

    def __init__(self, in_dim: int, num_tokens: int, vocab_size: int, cfg: HeadConfig,
                 groups: Sequence[tuple[int, int, int, int]] | None = None) -> None:
        super().__init__()
        self.num_tokens, self.vocab_size = num_tokens, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.ar_dim)
        self.trunk = mlp(in_dim, cfg.hidden, cfg.layers, cfg.hidden)  # the condition, computed once per sample
        self.prefix = nn.Linear((num_tokens - 1) * cfg.ar_dim, cfg.hidden)
        self.pos = nn.Parameter(torch.zeros(num_tokens, cfg.hidden))  # (L, hidden)
        self.out = nn.Linear(cfg.hidden, vocab_size)
        self.register_buffer("allowed", allowed_ids(num_tokens, vocab_size, groups))  # (L, K)
        causal = torch.tril(torch.ones(num_tokens, num_tokens), diagonal=-1)[:, : num_tokens - 1]  # (L, L-1): i < j
        self.register_buffer("causal", causal, persistent=False)

    def logits(self, x: Tensor, ids: Tensor) -> Tensor:
        """x (B, F), ids (B, l) with 0 <= l <= L -> (B, min(l + 1, L), K) next-id logits at every prefix."""
        if ids.ndim != 2 or ids.shape[1] > self.num_tokens or len(ids) != len(x):
            raise ValueError(f"ids must have shape ({len(x)}, l) with l <= {self.num_tokens}, got {tuple(ids.shape)}")
        b, n = len(x), min(ids.shape[1] + 1, self.num_tokens)
        emb = x.new_zeros(b, self.num_tokens - 1, self.embed.embedding_dim)  # (B, L-1, e)
        emb[:, : n - 1] = self.embed(ids[:, : n - 1])
        prefix = torch.einsum("jl,ble->bjle", self.causal[:n], emb)  # (B, n, L-1, e): slot i kept for rows j > i
        z = self.trunk(x)[:, None] + self.prefix(prefix.flatten(2)) + self.pos[:n]  # (B, n, hidden)
        return self.out(F.gelu(z)).masked_fill(~self.allowed[:n], float("-inf"))  # (B, n, K)

    def next_logits(self, x: Tensor, prefix: Tensor) -> Tensor:
        """x (B, F), prefix (B, l) with l < L -> (B, K) logits of the next id."""
        if prefix.shape[-1] >= self.num_tokens:
            raise ValueError(f"prefix length ({prefix.shape[-1]}) must be < L ({self.num_tokens})")
        return self.logits(x, prefix)[:, -1]

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, K) for the full id sequence `ids` (B, L)."""
        return self.logits(x, ids)

    def loss(self, x: Tensor, ids: Tensor) -> Tensor:
        """Cross-entropy of every position given the true prefix."""
        logits = self.logits(x, ids)
        return F.cross_entropy(rearrange(logits, "b l k -> (b l) k"), rearrange(ids, "b l -> (b l)"))

    @torch.no_grad()
    def greedy(self, x: Tensor) -> Tensor:
        """(B, F) -> (B, L) int64 ids, each the argmax given the ids before it."""
        ids = torch.zeros(len(x), 0, dtype=torch.long)
        for _ in range(self.num_tokens):
            ids = torch.cat([ids, self.next_logits(x, ids).argmax(-1, keepdim=True)], dim=1)
        return ids

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Greedy ids (B, L)."""
        return self.greedy(x)


def train_head(head: nn.Module, inputs: Callable[[Tensor], Tensor], targets: Tensor,
               cfg: HeadConfig, seed: int = 0) -> list[float]:
    """Fit `head` with AdamW on `targets` (chunks (N, H, A) or ids (N, L)); `inputs(idx)` gives the (B, F)
    inputs of samples `idx` (so noisy encoders draw fresh noise every step). Returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    head.train()
    losses = []
    n = len(targets)
    for _ in range(cfg.steps):
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
        loss = (head.loss(inputs(idx), targets[idx], gen) if isinstance(head, FlowHead)
                else head.loss(inputs(idx), targets[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    head.eval()
    logger.debug("%s: loss %.4f -> %.4f", type(head).__name__, losses[0], losses[-1])
    return losses

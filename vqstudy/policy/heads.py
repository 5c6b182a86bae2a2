"""Policy heads on top of frozen encoder features (B, F): continuous regression and token classification.

- `ContinuousHead`: MLP -> (B, H, A) normalized chunk, trained by MSE (the Diffusion-Policy side of the
  comparison, reduced to plain regression; no flow/diffusion head here).
- `DiscreteHead`: MLP -> (B, L, d) per-position embeddings -> logits (B, L, K) against a shared (K, d)
  output embedding plus a per-position bias, trained by cross-entropy on a tokenizer's ids and decoded
  by the tokenizer (the OAT side). Positions are predicted in parallel (no autoregression); when a
  tokenizer's positions use different id ranges (`token_groups`), logits outside a position's range
  are masked.
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
    steps: int = 400
    """Adam steps."""
    batch_size: int = 128
    """Samples per step (drawn with replacement)."""
    lr: float = 1e-3
    """Adam learning rate (cosine-decayed to 0)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "token_dim", "steps", "batch_size"):
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
        allowed = torch.ones(num_tokens, vocab_size, dtype=torch.bool)
        if groups is not None:
            allowed.zero_()
            for p0, p1, start, size in groups:
                allowed[p0:p1, start:start + size] = True
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


def train_head(head: ContinuousHead | DiscreteHead, inputs: Callable[[Tensor], Tensor], targets: Tensor,
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
        loss = head.loss(inputs(idx), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    head.eval()
    logger.debug("%s: loss %.4f -> %.4f", type(head).__name__, losses[0], losses[-1])
    return losses

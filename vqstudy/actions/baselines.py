"""Baseline action-chunk tokenizers behind the `ChunkTokenizer` interface.

- `UniformBinTokenizer`: OpenVLA-style (arXiv 2406.09246) per-dimension uniform bins over [-1, 1];
  L = H x A tokens of log2(num_bins) bits, no training.
- `FSQTokenizer`: MLP encoder -> finite scalar quantization (arXiv 2309.15505; levels [8, 5, 5, 5] as in
  QueST, arXiv 2409.12514, and OAT) -> MLP decoder. Wraps `vector_quantize_pytorch.FSQ`.
- `ResidualVQTokenizer`: MLP encoder -> residual VQ with Q levels per latent token -> MLP decoder;
  ids are `(B, L x Q)` with the Q residual ids of a latent token adjacent. Wraps
  `vector_quantize_pytorch.ResidualVQ`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vqstudy.actions.defaults import CODEBOOK_SIZE
from vqstudy.actions.tokenizers import (
    ChunkConfig,
    ChunkMLPConfig,
    ChunkDecoder,
    ChunkEncoder,
    ChunkTokenizer,
    TokenizerOutput,
    TokenizerStats,
    check_int,
)


def _vqp():
    try:
        import vector_quantize_pytorch
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("FSQ/ResidualVQ tokenizers need vector-quantize-pytorch: pip install vector-quantize-pytorch") from err
    return vector_quantize_pytorch


# ------------------------------------------------------------------------------------------------
# Uniform bins (OpenVLA)
# ------------------------------------------------------------------------------------------------


@dataclass
class UniformBinConfig(ChunkConfig):
    """Per-dimension uniform bins over [low, high]; values outside are clipped to the end bins."""

    num_bins: int = CODEBOOK_SIZE
    """Bins per dimension (OpenVLA: 256, i.e. 8 bits per token)."""
    low: float = -1.0
    """Lower edge of the first bin (normalized units)."""
    high: float = 1.0
    """Upper edge of the last bin (normalized units)."""

    def __post_init__(self) -> None:
        check_int("UniformBinConfig", self, ("horizon", "action_dim"))
        check_int("UniformBinConfig", self, ("num_bins",), minimum=2)
        if not self.low < self.high:
            raise ValueError(f"UniformBinConfig.low ({self.low}) must be < high ({self.high})")


class UniformBinTokenizer(ChunkTokenizer):
    """Token (h, a) = bin of chunk[h, a]; decode returns bin centres (error <= half a bin width inside range)."""

    kind = "bins"
    config_class = UniformBinConfig

    @property
    def num_tokens(self) -> int:
        return self.horizon * self.action_dim

    @property
    def vocab_size(self) -> int:
        return self.config.num_bins

    @property
    def bin_width(self) -> float:
        return (self.config.high - self.config.low) / self.config.num_bins

    def encode(self, chunks: Tensor) -> Tensor:
        self.check_chunks(chunks)
        c = self.config
        bins = torch.floor((chunks - c.low) / self.bin_width).long().clamp(0, c.num_bins - 1)  # (B, H, A)
        return rearrange(bins, "b h a -> b (h a)")

    def decode(self, ids: Tensor) -> Tensor:
        self.check_ids(ids)
        centres = self.config.low + (ids.double() + 0.5) * self.bin_width
        return rearrange(centres.float(), "b (h a) -> b h a", h=self.horizon)

    def forward(self, chunks: Tensor) -> TokenizerOutput:
        ids = self.encode(chunks)
        recon = self.decode(ids)
        recon_loss = F.mse_loss(recon, chunks)
        perplexity, utilization = self.usage_stats(ids)
        zero = torch.zeros((), device=chunks.device)
        return TokenizerOutput(recon, recon_loss, ids, TokenizerStats(recon_loss, zero, perplexity, utilization))

    def code_vectors(self) -> list[Tensor]:
        centres = self.config.low + (torch.arange(self.vocab_size, dtype=torch.float64) + 0.5) * self.bin_width
        return [centres.float()[:, None]]  # (K, 1)


# ------------------------------------------------------------------------------------------------
# Finite scalar quantization
# ------------------------------------------------------------------------------------------------


@dataclass
class FSQTokenizerConfig(ChunkMLPConfig):
    """MLP encoder -> L latent tokens -> FSQ (K = prod(levels) ids) -> MLP decoder."""

    num_tokens: int = 4
    """L, tokens per chunk."""
    levels: tuple[int, ...] = (8, 5, 5, 5)
    """FSQ levels per code dimension; K = prod(levels) (8,5,5,5 -> 1000 ids, ~10 bits)."""

    def __post_init__(self) -> None:
        check_int("FSQTokenizerConfig", self, ("horizon", "action_dim", "num_tokens", "latent_dim", "hidden"))
        self.levels = tuple(self.levels)
        if not self.levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in self.levels):
            raise ValueError(f"FSQTokenizerConfig.levels ({list(self.levels)}) must be a non-empty list of integers >= 2")


class FSQTokenizer(ChunkTokenizer):
    kind = "fsq"
    config_class = FSQTokenizerConfig

    def __init__(self, config: FSQTokenizerConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = ChunkEncoder(c.horizon, c.action_dim, c.num_tokens, c.latent_dim, c.hidden, "mlp")
        self.fsq = _vqp().FSQ(levels=list(c.levels), dim=c.latent_dim)
        self.decoder = ChunkDecoder(c.horizon, c.action_dim, c.num_tokens, c.latent_dim, c.hidden, "mlp")

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def vocab_size(self) -> int:
        return math.prod(self.config.levels)

    def forward(self, chunks: Tensor) -> TokenizerOutput:
        self.check_chunks(chunks)
        quantized, ids = self.fsq(self.encoder(chunks))  # (B, L, D), (B, L)
        recon = self.decoder(quantized)
        recon_loss = F.mse_loss(recon, chunks)
        ids = ids.long()
        perplexity, utilization = self.usage_stats(ids)
        zero = torch.zeros((), device=chunks.device)
        return TokenizerOutput(recon, recon_loss, ids, TokenizerStats(recon_loss.detach(), zero, perplexity, utilization))

    @torch.no_grad()
    def encode(self, chunks: Tensor) -> Tensor:
        self.check_chunks(chunks)
        return self.fsq(self.encoder(chunks))[1].long()

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        self.check_ids(ids)
        return self.decoder(self.fsq.indices_to_codes(ids.long()))

    def code_vectors(self) -> list[Tensor]:
        # the latent each id stands for, as the decoder sees it (after FSQ's output projection)
        return [self.fsq.indices_to_codes(torch.arange(self.vocab_size)).detach()]


# ------------------------------------------------------------------------------------------------
# Residual VQ
# ------------------------------------------------------------------------------------------------


@dataclass
class ResidualVQTokenizerConfig(ChunkMLPConfig):
    """MLP encoder -> L latent tokens -> Q-level residual VQ (shared id range [0, K)) -> MLP decoder.

    Tokens per chunk = num_tokens x num_quantizers.
    """

    num_tokens: int = 2
    """Latent tokens per chunk (each gives num_quantizers ids)."""
    num_quantizers: int = 2
    """Q, residual levels."""
    codebook_size: int = CODEBOOK_SIZE
    """K, codes per residual level."""
    decay: float = 0.99
    """EMA decay of the residual codebooks."""
    commitment_weight: float = 0.25
    """Commitment loss weight."""
    kmeans_init: bool = True
    """k-means initialisation of the codebooks on the first batch."""
    threshold_ema_dead_code: int = 2
    """Re-seed codes whose EMA count falls below this (0 disables)."""

    def __post_init__(self) -> None:
        owner = "ResidualVQTokenizerConfig"
        check_int(owner, self, ("horizon", "action_dim", "num_tokens", "num_quantizers", "latent_dim", "hidden"))
        check_int(owner, self, ("codebook_size",), minimum=2)
        check_int(owner, self, ("threshold_ema_dead_code",), minimum=0)
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"{owner}.decay ({self.decay}) must be in (0, 1)")
        if self.commitment_weight < 0:
            raise ValueError(f"{owner}.commitment_weight ({self.commitment_weight}) must be >= 0")


class ResidualVQTokenizer(ChunkTokenizer):
    kind = "rvq"
    config_class = ResidualVQTokenizerConfig

    def __init__(self, config: ResidualVQTokenizerConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = ChunkEncoder(c.horizon, c.action_dim, c.num_tokens, c.latent_dim, c.hidden, "mlp")
        self.rvq = _vqp().ResidualVQ(
            dim=c.latent_dim, num_quantizers=c.num_quantizers, codebook_size=c.codebook_size, decay=c.decay,
            commitment_weight=c.commitment_weight, kmeans_init=c.kmeans_init,
            threshold_ema_dead_code=c.threshold_ema_dead_code,
        )
        self.decoder = ChunkDecoder(c.horizon, c.action_dim, c.num_tokens, c.latent_dim, c.hidden, "mlp")

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens * self.config.num_quantizers

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def forward(self, chunks: Tensor) -> TokenizerOutput:
        self.check_chunks(chunks)
        quantized, ids, losses = self.rvq(self.encoder(chunks))  # (B, L, D), (B, L, Q), (Q,)
        recon = self.decoder(quantized)
        recon_loss = F.mse_loss(recon, chunks)
        quant_loss = losses.sum()
        ids = rearrange(ids.long(), "b l q -> b (l q)")
        perplexity, utilization = self.usage_stats(ids)
        stats = TokenizerStats(recon_loss.detach(), quant_loss.detach(), perplexity, utilization)
        return TokenizerOutput(recon, recon_loss + quant_loss, ids, stats)

    @torch.no_grad()
    def encode(self, chunks: Tensor) -> Tensor:
        self.check_chunks(chunks)
        was_training = self.training
        self.eval()
        ids = self.rvq(self.encoder(chunks))[1]  # (B, L, Q)
        self.train(was_training)
        return rearrange(ids.long(), "b l q -> b (l q)")

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        self.check_ids(ids)
        ids = rearrange(ids.long(), "b (l q) -> b l q", q=self.config.num_quantizers)
        return self.decoder(self.rvq.get_output_from_indices(ids))

    def code_vectors(self) -> list[Tensor]:
        # one id means code k at whichever residual level its position has: concatenate the levels' vectors
        return [rearrange(self.rvq.codebooks.detach(), "q k d -> k (q d)")]

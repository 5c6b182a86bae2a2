"""Tokenizers for normalized robot action chunks `(B, H, A)`: the common interface and the VQ-VAEs.

Every tokenizer maps a normalized chunk (values roughly in [-1, 1], see
`vqstudy.actions.data.normalize.QuantileNormalizer`) to `L` integer tokens and back:

    ids = tok.encode(chunks)        # (B, H, A) float -> (B, L) int64, each id in [0, tok.vocab_size)
    recon = tok.decode(ids)         # (B, L) int64 -> (B, H, A)
    out = tok(chunks)               # TokenizerOutput(recon, loss, indices, stats), for training

so that tokenizers can be compared at equal `bits_per_chunk` (nominal `L x log2 K`). The baselines
(uniform bins, FSQ, residual VQ) live in `vqstudy.actions.baselines`.

Ids of a tokenizer may come in groups (`token_groups()`): positions whose ids share one range of
the vocabulary. Single-level tokenizers have one group `[0, K)`; the hierarchical VQ-VAE has coarse
ids in `[0, K_c)` followed by fine ids in `[K_c, K_c + K_f)`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vqstudy.actions.defaults import ACTION_DIM, CODEBOOK_SIZE, HIDDEN, HORIZON, LATENT_DIM
from vqstudy.quantize import Quantizer, QuantizerConfig, usage_of
from vqstudy.quantize.config import LevelQuantizerConfig

logger = logging.getLogger(__name__)

EncoderKind = Literal["mlp", "conv"]


class TokenizerStats(NamedTuple):
    """0-d tensors describing one training batch."""

    recon_loss: Tensor
    """MSE between the reconstruction and the normalized input chunk."""
    quant_loss: Tensor
    """Quantizer losses (commitment, codebook); 0 for tokenizers without one."""
    perplexity: Tensor
    """exp(entropy) of the usage of all ids in this batch (all positions together)."""
    utilization: Tensor
    """Fraction of the vocabulary used at least once in this batch."""


class TokenizerOutput(NamedTuple):
    recon: Tensor
    """(B, H, A) reconstruction in normalized units."""
    loss: Tensor
    """Scalar training loss (reconstruction + quantizer losses)."""
    indices: Tensor
    """(B, L) int64 token ids."""
    stats: TokenizerStats


class TokenGroup(NamedTuple):
    """Token positions `positions` whose ids lie in `[start, start + size)`."""

    positions: slice
    start: int
    size: int


def check_int(owner: str, obj: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """Raise ValueError unless each field in `names` is an int >= minimum."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{owner}.{name} ({value!r}) must be an integer >= {minimum}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} ({value!r}) must be one of {list(choices)}")


def as_quantizer_config(owner: str, name: str, value: QuantizerConfig | dict, dim: int) -> QuantizerConfig:
    """A QuantizerConfig (from a config or a YAML dict) with its `dim` set to the model's latent width."""
    if isinstance(value, dict):
        value = LevelQuantizerConfig(**value)  # dim stays open until the latent width is known
    if not isinstance(value, QuantizerConfig):
        raise ValueError(f"{owner}.{name} must be a QuantizerConfig or a dict, got {type(value).__name__}")
    return value.with_dim(dim)


@dataclass
class ChunkConfig:
    """The chunk shape every tokenizer config starts from."""

    horizon: int = HORIZON
    """H, steps per chunk."""
    action_dim: int = ACTION_DIM
    """A, action dimensions (LIBERO/robosuite: 3 position deltas, 3 rotation deltas, gripper)."""


@dataclass
class ChunkMLPConfig(ChunkConfig):
    """Chunk shape plus the widths of an encoder -> latent tokens -> decoder tokenizer."""

    latent_dim: int = LATENT_DIM
    """Width D of each latent token (the quantizer's dim)."""
    hidden: int = HIDDEN
    """Hidden width of the encoder and decoder."""


class ChunkTokenizer(nn.Module):
    """Base class: normalized action chunks `(B, H, A)` <-> token ids `(B, L)` int64."""

    kind: ClassVar[str]
    """Name under which the tokenizer is saved (`vqstudy.actions.export` whitelists these)."""
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.horizon: int = config.horizon
        self.action_dim: int = config.action_dim

    # --- sizes -------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """L, tokens per chunk."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """K, number of distinct ids (ids lie in [0, K))."""
        raise NotImplementedError

    def token_groups(self) -> list[TokenGroup]:
        """Which id range each token position uses (one group `[0, K)` unless overridden)."""
        return [TokenGroup(slice(0, self.num_tokens), 0, self.vocab_size)]

    @property
    def bits_per_chunk(self) -> float:
        """Nominal bits per chunk: sum over positions of log2(ids available there) (= L x log2 K)."""
        return sum((g.positions.stop - g.positions.start) * math.log2(g.size) for g in self.token_groups())

    # --- interface ---------------------------------------------------------------------------
    def encode(self, chunks: Tensor) -> Tensor:
        """(B, H, A) normalized chunks -> (B, L) int64 ids."""
        raise NotImplementedError

    def decode(self, ids: Tensor) -> Tensor:
        """(B, L) int64 ids -> (B, H, A) normalized chunks."""
        raise NotImplementedError

    def forward(self, chunks: Tensor) -> TokenizerOutput:
        raise NotImplementedError

    def code_vectors(self) -> list[Tensor]:
        """Per token group, the `(size, F)` vectors that codes stand for (used to order ids, see
        `vqstudy.actions.ordering`): the quantizer's code vectors in latent space for learned tokenizers."""
        raise NotImplementedError

    # --- checks ------------------------------------------------------------------------------
    def check_chunks(self, chunks: Tensor) -> None:
        """Raise ValueError unless `chunks` is a float (B, H, A) tensor matching this tokenizer."""
        if chunks.ndim != 3 or tuple(chunks.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(
                f"{type(self).__name__}: chunks must have shape (B, {self.horizon}, {self.action_dim}) "
                f"(B, horizon, action_dim), got {tuple(chunks.shape)}"
            )
        if not chunks.is_floating_point():
            raise ValueError(f"{type(self).__name__}: chunks must be a float tensor, got {chunks.dtype}")

    def check_ids(self, ids: Tensor) -> None:
        """Raise ValueError unless `ids` is an integer (B, L) tensor with every id in its group's range."""
        if ids.ndim != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(
                f"{type(self).__name__}: ids must have shape (B, {self.num_tokens}), got {tuple(ids.shape)}"
            )
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"{type(self).__name__}: ids must be an integer tensor, got {ids.dtype}")
        for g in self.token_groups():
            part = ids[:, g.positions]
            bad = part[(part < g.start) | (part >= g.start + g.size)]
            if bad.numel():
                raise ValueError(
                    f"{type(self).__name__}: ids at positions [{g.positions.start}, {g.positions.stop}) must lie in "
                    f"[{g.start}, {g.start + g.size}), got {sorted(set(bad.tolist()))[:10]}"
                )

    def usage_stats(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        usage = usage_of(ids, self.vocab_size)
        return usage.perplexity.float(), usage.utilization.float()


# ------------------------------------------------------------------------------------------------
# Encoders / decoders over time
# ------------------------------------------------------------------------------------------------


class ChunkEncoder(nn.Module):
    """(B, H, A) -> (B, L, D): an MLP over the flattened chunk, or 1-D convs over time + pooling to L."""

    def __init__(self, horizon: int, in_dim: int, num_tokens: int, latent_dim: int, hidden: int, kind: str) -> None:
        super().__init__()
        self.kind, self.num_tokens, self.latent_dim = kind, num_tokens, latent_dim
        if kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(horizon * in_dim, hidden), nn.GELU(),
                nn.Linear(hidden, hidden), nn.GELU(),
                nn.Linear(hidden, num_tokens * latent_dim),
            )
        else:
            self.net = nn.Sequential(
                nn.Conv1d(in_dim, hidden, 3, padding=1), nn.GELU(),
                nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
            )
            self.out = nn.Conv1d(hidden, latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "mlp":
            z = self.net(rearrange(x, "b h a -> b (h a)"))  # (B, L*D)
            return rearrange(z, "b (l d) -> b l d", l=self.num_tokens)
        h = self.net(rearrange(x, "b h a -> b a h"))  # (B, hidden, H)
        h = F.adaptive_avg_pool1d(h, self.num_tokens)  # (B, hidden, L)
        return rearrange(self.out(h), "b d l -> b l d")


class ChunkDecoder(nn.Module):
    """(B, L, D) -> (B, H, A): an MLP, or a 1x1 conv + linear upsampling to H + 1-D convs over time."""

    def __init__(self, horizon: int, action_dim: int, num_tokens: int, latent_dim: int, hidden: int, kind: str) -> None:
        super().__init__()
        self.kind, self.horizon, self.action_dim = kind, horizon, action_dim
        if kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(num_tokens * latent_dim, hidden), nn.GELU(),
                nn.Linear(hidden, hidden), nn.GELU(),
                nn.Linear(hidden, horizon * action_dim),
            )
        else:
            self.inp = nn.Conv1d(latent_dim, hidden, 1)
            self.net = nn.Sequential(
                nn.GELU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(), nn.Conv1d(hidden, action_dim, 1)
            )

    def forward(self, z: Tensor) -> Tensor:
        if self.kind == "mlp":
            y = self.net(rearrange(z, "b l d -> b (l d)"))  # (B, H*A)
            return rearrange(y, "b (h a) -> b h a", h=self.horizon)
        h = self.inp(rearrange(z, "b l d -> b d l"))  # (B, hidden, L)
        h = F.interpolate(h, size=self.horizon, mode="linear", align_corners=True)  # (B, hidden, H)
        return rearrange(self.net(h), "b a h -> b h a")


# ------------------------------------------------------------------------------------------------
# Single-level action VQ-VAE
# ------------------------------------------------------------------------------------------------


@dataclass
class ActionVQConfig(ChunkMLPConfig):
    """Single-level action VQ-VAE: L latent tokens per chunk, each quantized by the shared Quantizer."""

    num_tokens: int = 4
    """L, tokens per chunk."""
    encoder: EncoderKind = "mlp"
    """'mlp' over the flattened chunk, or 'conv' (1-D convolutions over time)."""
    quantizer: LevelQuantizerConfig = field(default_factory=lambda: LevelQuantizerConfig(codebook_size=CODEBOOK_SIZE))
    """Quantizer options; its dim is set to latent_dim."""

    def __post_init__(self) -> None:
        check_int("ActionVQConfig", self, ("horizon", "action_dim", "num_tokens", "latent_dim", "hidden"))
        check_choice("ActionVQConfig", "encoder", self.encoder, ("mlp", "conv"))
        if self.encoder == "conv" and self.num_tokens > self.horizon:
            raise ValueError(f"ActionVQConfig.num_tokens ({self.num_tokens}) must be <= horizon ({self.horizon}) "
                             "with encoder='conv'")
        self.quantizer = as_quantizer_config("ActionVQConfig", "quantizer", self.quantizer, self.latent_dim)


class ActionVQVAE(ChunkTokenizer):
    """Encoder over time -> L tokens -> shared Quantizer -> decoder back to (B, H, A)."""

    kind = "vq"
    config_class = ActionVQConfig

    def __init__(self, config: ActionVQConfig) -> None:
        super().__init__(config)
        c = config
        self.encoder = ChunkEncoder(c.horizon, c.action_dim, c.num_tokens, c.latent_dim, c.hidden, c.encoder)
        self.quantizer = Quantizer(c.quantizer)
        self.decoder = ChunkDecoder(c.horizon, c.action_dim, c.num_tokens, c.latent_dim, c.hidden, c.encoder)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def vocab_size(self) -> int:
        return self.config.quantizer.codebook_size

    def forward(self, chunks: Tensor) -> TokenizerOutput:
        self.check_chunks(chunks)
        q = self.quantizer(self.encoder(chunks))  # quantized (B, L, D), indices (B, L)
        recon = self.decoder(q.quantized)
        recon_loss = F.mse_loss(recon, chunks)
        perplexity, utilization = self.usage_stats(q.indices)
        stats = TokenizerStats(recon_loss.detach(), q.loss.detach(), perplexity, utilization)
        return TokenizerOutput(recon, recon_loss + q.loss, q.indices.long(), stats)

    @torch.no_grad()
    def encode(self, chunks: Tensor) -> Tensor:
        self.check_chunks(chunks)
        was_training = self.training
        self.eval()
        ids = self.quantizer(self.encoder(chunks)).indices.long()
        self.train(was_training)
        return ids

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        self.check_ids(ids)
        return self.decoder(self.quantizer.decode_indices(ids.long()))

    def code_vectors(self) -> list[Tensor]:
        return [self.quantizer.codebook_vectors().detach()]


# ------------------------------------------------------------------------------------------------
# Hierarchical (coarse + fine) action VQ-VAE
# ------------------------------------------------------------------------------------------------


@dataclass
class HierarchicalActionVQConfig(ChunkMLPConfig):
    """Coarse tokens from a time-downsampled chunk, then fine tokens conditioned on the coarse decode."""

    coarse_tokens: int = 2
    """L_c, coarse tokens per chunk (first in the id sequence)."""
    fine_tokens: int = 2
    """L_f, fine tokens per chunk (after the coarse ones)."""
    coarse_stride: int = 2
    """The coarse encoder sees the chunk average-pooled over time by this factor (must divide horizon)."""
    coarse_weight: float = 0.5
    """Weight of the coarse-only reconstruction loss (keeps the coarse tokens meaningful alone)."""
    coarse_quantizer: LevelQuantizerConfig = field(default_factory=lambda: LevelQuantizerConfig(codebook_size=CODEBOOK_SIZE))
    """Quantizer options of the coarse level; dim is set to latent_dim."""
    fine_quantizer: LevelQuantizerConfig = field(default_factory=lambda: LevelQuantizerConfig(codebook_size=CODEBOOK_SIZE))
    """Quantizer options of the fine level; dim is set to latent_dim."""

    def __post_init__(self) -> None:
        owner = "HierarchicalActionVQConfig"
        check_int(owner, self, ("horizon", "action_dim", "coarse_tokens", "fine_tokens", "coarse_stride",
                                "latent_dim", "hidden"))
        if self.horizon % self.coarse_stride:
            raise ValueError(f"{owner}.coarse_stride ({self.coarse_stride}) must divide horizon ({self.horizon})")
        if self.coarse_weight < 0:
            raise ValueError(f"{owner}.coarse_weight ({self.coarse_weight}) must be >= 0")
        self.coarse_quantizer = as_quantizer_config(owner, "coarse_quantizer", self.coarse_quantizer, self.latent_dim)
        self.fine_quantizer = as_quantizer_config(owner, "fine_quantizer", self.fine_quantizer, self.latent_dim)


class HierarchicalActionVQVAE(ChunkTokenizer):
    """ids = [L_c coarse ids in [0, K_c)] + [L_f fine ids in [K_c, K_c + K_f)]; vocab_size = K_c + K_f.

    coarse: avg-pool over time -> MLP encoder -> Quantizer_c -> coarse decode (B, H, A)
    fine:   MLP encoder of [chunk, coarse decode] -> Quantizer_f -> residual decoder of [fine, coarse] latents
    recon = coarse decode + residual.
    """

    kind = "hvq"
    config_class = HierarchicalActionVQConfig

    def __init__(self, config: HierarchicalActionVQConfig) -> None:
        super().__init__(config)
        c = config
        h_coarse = c.horizon // c.coarse_stride
        self.coarse_encoder = ChunkEncoder(h_coarse, c.action_dim, c.coarse_tokens, c.latent_dim, c.hidden, "mlp")
        self.coarse_quantizer = Quantizer(c.coarse_quantizer)
        self.coarse_decoder = ChunkDecoder(c.horizon, c.action_dim, c.coarse_tokens, c.latent_dim, c.hidden, "mlp")
        self.fine_encoder = ChunkEncoder(c.horizon, 2 * c.action_dim, c.fine_tokens, c.latent_dim, c.hidden, "mlp")
        self.fine_quantizer = Quantizer(c.fine_quantizer)
        self.fine_decoder = ChunkDecoder(
            c.horizon, c.action_dim, c.coarse_tokens + c.fine_tokens, c.latent_dim, c.hidden, "mlp"
        )

    @property
    def num_tokens(self) -> int:
        return self.config.coarse_tokens + self.config.fine_tokens

    @property
    def vocab_size(self) -> int:
        return self.config.coarse_quantizer.codebook_size + self.config.fine_quantizer.codebook_size

    def token_groups(self) -> list[TokenGroup]:
        c = self.config
        k_c = c.coarse_quantizer.codebook_size
        return [
            TokenGroup(slice(0, c.coarse_tokens), 0, k_c),
            TokenGroup(slice(c.coarse_tokens, self.num_tokens), k_c, c.fine_quantizer.codebook_size),
        ]

    def _coarse_input(self, chunks: Tensor) -> Tensor:
        pooled = F.avg_pool1d(rearrange(chunks, "b h a -> b a h"), self.config.coarse_stride)  # (B, A, H/s)
        return rearrange(pooled, "b a h -> b h a")

    def _decode_latents(self, zq_c: Tensor, zq_f: Tensor) -> tuple[Tensor, Tensor]:
        coarse = self.coarse_decoder(zq_c)  # (B, H, A)
        return coarse, coarse + self.fine_decoder(torch.cat([zq_c, zq_f], dim=1))  # latents (B, L_c + L_f, D)

    def _quantize(self, chunks: Tensor):
        qc = self.coarse_quantizer(self.coarse_encoder(self._coarse_input(chunks)))  # (B, L_c, D)
        coarse = self.coarse_decoder(qc.quantized)
        qf = self.fine_quantizer(self.fine_encoder(torch.cat([chunks, coarse], dim=-1)))  # input (B, H, 2A)
        return qc, qf

    def forward(self, chunks: Tensor) -> TokenizerOutput:
        self.check_chunks(chunks)
        qc, qf = self._quantize(chunks)
        coarse, recon = self._decode_latents(qc.quantized, qf.quantized)
        recon_loss = F.mse_loss(recon, chunks)
        quant_loss = qc.loss + qf.loss
        loss = recon_loss + self.config.coarse_weight * F.mse_loss(coarse, chunks) + quant_loss
        ids = self._join(qc.indices, qf.indices)
        perplexity, utilization = self.usage_stats(ids)
        stats = TokenizerStats(recon_loss.detach(), quant_loss.detach(), perplexity, utilization)
        return TokenizerOutput(recon, loss, ids, stats)

    def _join(self, ids_c: Tensor, ids_f: Tensor) -> Tensor:
        k_c = self.config.coarse_quantizer.codebook_size
        return torch.cat([ids_c.long(), ids_f.long() + k_c], dim=1)  # (B, L_c + L_f)

    @torch.no_grad()
    def encode(self, chunks: Tensor) -> Tensor:
        self.check_chunks(chunks)
        was_training = self.training
        self.eval()
        qc, qf = self._quantize(chunks)
        self.train(was_training)
        return self._join(qc.indices, qf.indices)

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        self.check_ids(ids)
        c = self.config
        ids = ids.long()
        zq_c = self.coarse_quantizer.decode_indices(ids[:, : c.coarse_tokens])
        zq_f = self.fine_quantizer.decode_indices(ids[:, c.coarse_tokens:] - c.coarse_quantizer.codebook_size)
        return self._decode_latents(zq_c, zq_f)[1]

    @torch.no_grad()
    def decode_coarse(self, ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, H, A) decode from the coarse tokens alone (the fine ids are ignored)."""
        self.check_ids(ids)
        return self.coarse_decoder(self.coarse_quantizer.decode_indices(ids[:, : self.config.coarse_tokens].long()))

    def code_vectors(self) -> list[Tensor]:
        return [self.coarse_quantizer.codebook_vectors().detach(), self.fine_quantizer.codebook_vectors().detach()]

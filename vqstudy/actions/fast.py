"""FAST action tokenizer (arXiv 2501.09747): a DCT over time of each normalized chunk, per action
dimension, scaled and rounded to integers, then byte-pair encoding of the integer sequence.

    x (B, H, A) -> c = DCT_H(x) (B, H, A), orthonormal DCT-II along time
               -> q = round(scale * c) clipped to [low, high] (the alphabet, fixed when fitted)
               -> flattened low frequency first, all dimensions of a frequency together: "b k a -> b (k a)"
               -> one character per integer -> BPE ids (Hugging Face `tokenizers`)

FAST gives a variable number of tokens per chunk; to fit the fixed-length `ChunkTokenizer`
interface, `encode` pads every chunk's ids to `max_tokens` with `pad_id = vocab_size - 1`. A
chunk whose BPE sequence is longer is cut to `max_tokens` ids (its highest frequencies are lost)
and counted in `truncated`. `decode` drops pads, inverts BPE and the IDCT; a sequence that does
not give exactly H x A integers is zero-filled or cut (as FAST does for malformed model output).

`token_counts(ids)` gives the real (non-pad) tokens per chunk; `bits_per_chunk` is the nominal
`max_tokens x log2(vocab_size)`, an upper bound: report mean tokens per chunk beside it.

The rounding error is bounded: with an orthonormal DCT, the chunk's squared error per dimension
equals that of its coefficients, so MSE <= (0.5 / scale)^2 when nothing is clipped or cut.

The tokenizer must be fitted (`fit(chunks)`: alphabet from the training coefficients, BPE trained
on their strings) before use. Its fitted state is the BPE tokenizer's JSON, kept as a uint8 buffer
`bpe_json` (saved by safetensors with the weights; loading parses JSON, nothing is unpickled).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vqstudy.actions.tokenizers import ChunkConfig, ChunkTokenizer, TokenizerOutput, TokenizerStats, check_int

logger = logging.getLogger(__name__)

CHAR_BASE = 0x4E00
"""Code point of the character standing for the smallest integer of the alphabet (CJK block: no whitespace,
no control characters, one code point per character)."""


def _tokenizers():
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("the FAST tokenizer needs Hugging Face tokenizers: pip install tokenizers") from err
    return tokenizers


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """(n, n) orthonormal DCT-II matrix D: coefficients = D @ x, x = D.T @ coefficients."""
    k = torch.arange(n, dtype=dtype)[:, None]
    t = torch.arange(n, dtype=dtype)[None, :]
    d = torch.cos(math.pi * (t + 0.5) * k / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


@dataclass
class FastConfig(ChunkConfig):
    """FAST: DCT per dimension, scale + round, BPE over the integers (arXiv 2501.09747)."""

    scale: float = 10.0
    """DCT coefficients are multiplied by this before rounding (FAST's default 10); error per value <= 0.5 / scale."""
    vocab_size: int = 1024
    """Ids per position including the pad id (vocab_size - 1); the BPE gets vocab_size - 1 tokens."""
    max_tokens: int = 32
    """L, ids per chunk after padding; longer BPE sequences are cut (counted in `truncated`)."""
    min_frequency: int = 2
    """A pair must occur this often in the training strings to be merged."""

    def __post_init__(self) -> None:
        check_int("FastConfig", self, ("horizon", "action_dim", "max_tokens", "min_frequency"))
        check_int("FastConfig", self, ("vocab_size",), minimum=3)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale > 0:
            raise ValueError(f"FastConfig.scale ({self.scale!r}) must be a number > 0")
        self.scale = float(self.scale)


class FastTokenizer(ChunkTokenizer):
    """Normalized chunks (B, H, A) <-> padded FAST ids (B, max_tokens); see the module docstring."""

    kind = "fast"
    config_class = FastConfig

    def __init__(self, config: FastConfig) -> None:
        super().__init__(config)
        self.register_buffer("dct", dct_matrix(config.horizon).float())  # (H, H)
        self.register_buffer("bpe_json", torch.zeros(0, dtype=torch.uint8))  # (bytes,) the fitted BPE, empty until fit
        self.register_buffer("alphabet", torch.zeros(2, dtype=torch.int64))  # [low, high] integers with a character
        self.truncated = 0
        """Chunks whose ids were cut to max_tokens since construction."""
        self._bpe: Any = None
        self._pieces: list[str] = []

    # --- sizes -------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.config.max_tokens

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def pad_id(self) -> int:
        return self.config.vocab_size - 1

    @property
    def fitted(self) -> bool:
        return self.bpe_json.numel() > 0

    def token_counts(self, ids: Tensor) -> Tensor:
        """(B, L) ids -> (B,) real (non-pad) tokens per chunk."""
        return (ids != self.pad_id).sum(dim=1)

    # --- DCT + rounding ----------------------------------------------------------------------
    def coefficients(self, chunks: Tensor) -> Tensor:
        """(B, H, A) -> (B, H*A) int64 rounded, clipped coefficients, low frequency first."""
        c = torch.einsum("kh,bha->bka", self.dct.double(), chunks.double())  # (B, H, A) frequency k
        q = torch.round(c * self.config.scale).long()
        if self.fitted:
            q = q.clamp(int(self.alphabet[0]), int(self.alphabet[1]))
        return rearrange(q, "b k a -> b (k a)")

    def from_coefficients(self, q: Tensor) -> Tensor:
        """(B, H*A) integer coefficients -> (B, H, A) float chunks (IDCT)."""
        c = rearrange(q.double() / self.config.scale, "b (k a) -> b k a", a=self.action_dim)  # (B, H, A)
        return torch.einsum("kh,bka->bha", self.dct.double(), c).float()

    def _strings(self, q: Tensor) -> list[str]:
        low = int(self.alphabet[0])
        return ["".join(chr(CHAR_BASE + v - low) for v in row) for row in q.tolist()]

    # --- fitting -----------------------------------------------------------------------------
    def fit(self, chunks: Tensor) -> FastTokenizer:
        """Fix the alphabet from the training chunks' coefficients (N, H, A) and train the BPE on them."""
        self.check_chunks(chunks)
        if chunks.shape[0] == 0:
            raise ValueError("FastTokenizer.fit: chunks is empty")
        if not torch.isfinite(chunks).all():
            raise ValueError(f"FastTokenizer.fit: chunks has {int((~torch.isfinite(chunks)).sum())} non-finite values")
        self.bpe_json = torch.zeros(0, dtype=torch.uint8)
        q = self.coefficients(chunks)  # (N, H*A), not clipped yet
        low, high = min(int(q.min()), 0), max(int(q.max()), 0)
        size = high - low + 1
        if size > self.config.vocab_size - 1:
            raise ValueError(f"FastConfig.vocab_size ({self.config.vocab_size}) must exceed the {size} integers the "
                             f"coefficients take at scale {self.config.scale} (from {low} to {high}); raise vocab_size "
                             f"or lower scale")
        self.alphabet = torch.tensor([low, high], dtype=torch.int64)
        tk = _tokenizers()
        bpe = tk.Tokenizer(tk.models.BPE())
        trainer = tk.trainers.BpeTrainer(
            vocab_size=self.config.vocab_size - 1, min_frequency=self.config.min_frequency, show_progress=False,
            initial_alphabet=[chr(CHAR_BASE + i) for i in range(size)], special_tokens=[])
        bpe.train_from_iterator(self._strings(q), trainer)
        self.bpe_json = torch.tensor(list(bpe.to_str().encode()), dtype=torch.uint8)
        self._load_bpe()
        logger.info("FAST fitted on %d chunks: alphabet %d..%d, %d BPE tokens", len(chunks), low, high,
                    bpe.get_vocab_size())
        return self

    def _load_bpe(self) -> None:
        tk = _tokenizers()
        text = bytes(self.bpe_json.tolist()).decode()
        json.loads(text)  # a clear error for a corrupted buffer before tokenizers parses it
        self._bpe = tk.Tokenizer.from_str(text)
        vocab = self._bpe.get_vocab()
        if max(vocab.values(), default=-1) >= self.pad_id:
            raise ValueError(f"FastTokenizer: the saved BPE has ids up to {max(vocab.values())}, beyond the pad id "
                             f"{self.pad_id} of vocab_size {self.config.vocab_size}")
        self._pieces = [""] * self.pad_id
        for piece, i in vocab.items():
            self._pieces[i] = piece

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "bpe_json"
        if key in state_dict:  # the fitted buffer's length is only known from the file
            self.bpe_json = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted:
            self._load_bpe()

    def _check_fitted(self) -> None:
        if not self.fitted or self._bpe is None:
            raise RuntimeError("FastTokenizer is not fitted: call fit(training chunks) first (or load a saved one)")

    # --- interface ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, chunks: Tensor) -> Tensor:
        self.check_chunks(chunks)
        self._check_fitted()
        if not torch.isfinite(chunks).all():
            raise ValueError(f"FastTokenizer: chunks has {int((~torch.isfinite(chunks)).sum())} non-finite values")
        encodings = self._bpe.encode_batch(self._strings(self.coefficients(chunks)))
        ids = torch.full((len(encodings), self.num_tokens), self.pad_id, dtype=torch.int64)  # (B, L)
        for b, enc in enumerate(encodings):
            row = enc.ids[: self.num_tokens]
            self.truncated += len(enc.ids) > self.num_tokens
            ids[b, : len(row)] = torch.tensor(row, dtype=torch.int64)
        return ids.to(chunks.device)

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        self.check_ids(ids)
        self._check_fitted()
        low, n = int(self.alphabet[0]), self.horizon * self.action_dim
        q = torch.zeros(ids.shape[0], n, dtype=torch.int64)  # (B, H*A); missing coefficients are 0
        for b, row in enumerate(ids.tolist()):
            text = "".join(self._pieces[i] for i in row if i != self.pad_id)
            values = [ord(ch) - CHAR_BASE + low for ch in text[:n]]
            q[b, : len(values)] = torch.tensor(values, dtype=torch.int64)
        return self.from_coefficients(q).to(ids.device)

    def forward(self, chunks: Tensor) -> TokenizerOutput:
        ids = self.encode(chunks)
        recon = self.decode(ids)
        recon_loss = F.mse_loss(recon, chunks)
        perplexity, utilization = self.usage_stats(ids[ids != self.pad_id])
        zero = torch.zeros((), device=chunks.device)
        return TokenizerOutput(recon, recon_loss, ids, TokenizerStats(recon_loss, zero, perplexity, utilization))

    def code_vectors(self) -> list[Tensor]:
        raise ValueError("FAST ids are BPE merges of DCT coefficients, not codes with vectors: id orders do not apply "
                         "(use export.order 'none')")

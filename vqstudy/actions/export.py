"""`ActionTokenizer`: the exported, user-facing action tokenizer for the action head of a VLA model.

It bundles a trained `ChunkTokenizer` with its normalization statistics, an optional id order
(vqstudy.actions.ordering) and a mapping into a language model's vocabulary:

    tok = ActionTokenizer(chunk_tokenizer, normalizer, id_mode="last_n", lm_vocab_size=32000)
    ids = tok.encode(actions)            # (B, H, A) original units -> (B, L) language-model token ids
    actions = tok.decode(ids)            # (B, L) -> (B, H, A) original units; out-of-range ids are refused
    tok.save_pretrained("out/tok"); tok = ActionTokenizer.from_pretrained("out/tok")

Id modes: 'offset' maps code c to `token_offset + c`; 'last_n' is OpenVLA's (arXiv 2406.09246) use of
the last ids of the vocabulary, `lm_vocab_size - 1 - c`.

Saved format (directory): `tokenizer_config.json` (format name and version, tokenizer kind and its
config dataclass as a dict, id mapping, sha256 of the weights file) and `model.safetensors` (tokenizer
weights `tokenizer.*`, normalizer statistics `normalizer.*`, and the id order `order`). Loading only
parses JSON and safetensors: nothing is unpickled or executed, and the tokenizer class comes from a
whitelist of kinds (`TOKENIZER_KINDS`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.actions.ordering import check_order, codebook_order, inverse_order
from vqstudy.actions.registry import TOKENIZER_KINDS, build_tokenizer
from vqstudy.actions.tokenizers import ChunkTokenizer
from vqstudy.config import to_dict
from vqstudy.files import save_weights_and_manifest, sha256_file

logger = logging.getLogger(__name__)

FORMAT_NAME = "vqstudy-action-tokenizer"
FORMAT_VERSION = 1
CONFIG_FILE = "tokenizer_config.json"
WEIGHTS_FILE = "model.safetensors"
IdMode = Literal["offset", "last_n"]

class ActionTokenizer(nn.Module):
    """Actions in original units (B, H, A) <-> language-model token ids (B, L)."""

    def __init__(
        self,
        tokenizer: ChunkTokenizer,
        normalizer: Any | None = None,
        id_mode: IdMode = "offset",
        token_offset: int = 0,
        lm_vocab_size: int | None = None,
        order: Tensor | Literal["seriate", "seriate_action"] | None = None,
    ) -> None:
        """`normalizer`: a fitted `vqstudy.actions.data.normalize.QuantileNormalizer` (None: actions are already
        normalized). `order`: an id permutation (see vqstudy.actions.ordering), "seriate" (seriate the latent code
        vectors), "seriate_action" (seriate each code's effect on the decoded chunk), or None."""
        super().__init__()
        k = tokenizer.vocab_size
        if id_mode not in ("offset", "last_n"):
            raise ValueError(f"id_mode ({id_mode!r}) must be 'offset' or 'last_n'")
        if isinstance(token_offset, bool) or not isinstance(token_offset, int) or token_offset < 0:
            raise ValueError(f"token_offset ({token_offset!r}) must be an integer >= 0")
        if id_mode == "last_n" and lm_vocab_size is None:
            raise ValueError("lm_vocab_size is required with id_mode='last_n'")
        if lm_vocab_size is not None:
            need = k + (token_offset if id_mode == "offset" else 0)
            if lm_vocab_size < need:
                raise ValueError(f"lm_vocab_size ({lm_vocab_size}) must be >= {need} to hold {k} action ids"
                                 + (f" after token_offset {token_offset}" if id_mode == "offset" else ""))
        if tokenizer.kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer kind {tokenizer.kind!r} is not exportable; known: {sorted(TOKENIZER_KINDS)}")
        if normalizer is not None and normalizer.action_dim != tokenizer.action_dim:
            raise ValueError(f"normalizer action_dim ({normalizer.action_dim}) must equal the tokenizer's "
                             f"action_dim ({tokenizer.action_dim})")
        self.tokenizer = tokenizer.eval()
        self.normalizer = normalizer
        self.id_mode, self.token_offset, self.lm_vocab_size = id_mode, token_offset, lm_vocab_size
        if isinstance(order, str):
            spaces = {"seriate": "latent", "seriate_action": "action"}
            if order not in spaces:
                raise ValueError(f"order ({order!r}) must be a tensor, one of {sorted(spaces)}, or None")
            order = codebook_order(tokenizer, space=spaces[order])
        if order is not None:
            order = torch.as_tensor(order)
            if order.is_floating_point() or order.is_complex() or order.dtype == torch.bool:
                raise ValueError(f"order must be an integer (K,) permutation, got dtype {order.dtype}")
            order = order.long().cpu()
            check_order(order, tokenizer)
        self.register_buffer("order", order)  # (K,) order[ordered id] = native code, or None
        self.register_buffer("rank", inverse_order(order) if order is not None else None)

    # --- sizes -------------------------------------------------------------------------------
    @property
    def horizon(self) -> int:
        return self.tokenizer.horizon

    @property
    def action_dim(self) -> int:
        return self.tokenizer.action_dim

    @property
    def num_tokens(self) -> int:
        """L, ids per chunk."""
        return self.tokenizer.num_tokens

    @property
    def vocab_size(self) -> int:
        """K, number of action ids."""
        return self.tokenizer.vocab_size

    @property
    def bits_per_chunk(self) -> float:
        return self.tokenizer.bits_per_chunk

    @property
    def id_range(self) -> tuple[int, int]:
        """[low, high): the language-model ids that are action tokens."""
        if self.id_mode == "offset":
            return self.token_offset, self.token_offset + self.vocab_size
        return self.lm_vocab_size - self.vocab_size, self.lm_vocab_size

    # --- ids ---------------------------------------------------------------------------------
    def ids_from_codes(self, codes: Tensor) -> Tensor:
        """Ordered codes in [0, K) -> language-model ids."""
        if self.id_mode == "offset":
            return codes + self.token_offset
        return self.lm_vocab_size - 1 - codes

    def codes_from_ids(self, ids: Tensor) -> Tensor:
        """Language-model ids (B, L) -> ordered codes (B, L) in [0, K); refuses ids that are not action
        tokens at their position, naming them and the valid range."""
        if ids.ndim != 2 or ids.shape[1] != self.num_tokens:
            raise ValueError(f"ids must have shape (B, {self.num_tokens}), got {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor, got {ids.dtype}")
        ids = ids.long()
        codes = ids - self.token_offset if self.id_mode == "offset" else self.lm_vocab_size - 1 - ids
        for g in self.tokenizer.token_groups():
            part = codes[:, g.positions]
            bad = (part < g.start) | (part >= g.start + g.size)
            if bad.any():
                edges = self.ids_from_codes(torch.tensor([g.start, g.start + g.size - 1]))
                low, high = int(edges.min()), int(edges.max())
                values = sorted(set(ids[:, g.positions][bad].tolist()))
                where = "" if g.positions == slice(0, self.num_tokens) else (
                    f" at token positions [{g.positions.start}, {g.positions.stop})")
                raise ValueError(
                    f"ActionTokenizer: ids {values[:20]}{' ...' if len(values) > 20 else ''} are not action tokens"
                    f"{where}; valid ids are [{low}, {high}] ({self.id_mode} mode)"
                )
        return codes

    # --- encode / decode ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, actions: Tensor) -> Tensor:
        """(B, H, A) actions in original units -> (B, L) int64 language-model ids."""
        x = torch.as_tensor(actions, dtype=torch.float32)
        x = self.normalizer.normalize(x) if self.normalizer is not None else x
        codes = self.tokenizer.encode(x)  # (B, L) native codes
        if self.rank is not None:
            codes = self.rank.to(codes.device)[codes]
        return self.ids_from_codes(codes)

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """(B, L) language-model ids -> (B, H, A) actions in original units."""
        codes = self.codes_from_ids(torch.as_tensor(ids))
        if self.order is not None:
            codes = self.order.to(codes.device)[codes]
        x = self.tokenizer.decode(codes)
        return self.normalizer.unnormalize(x) if self.normalizer is not None else x

    # --- save / load -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `model.safetensors`, then `tokenizer_config.json` (holding its sha256) into `directory`, each
        atomically (a reader sees a whole file or none; an interrupted save never leaves a torn file); returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"tokenizer.{k}": v.detach().cpu().contiguous().clone()
                   for k, v in self.tokenizer.state_dict().items()}
        if self.normalizer is not None:
            tensors.update({f"normalizer.{k}": v.contiguous().clone() for k, v in self.normalizer.state_dict().items()})
        if self.order is not None:
            tensors["order"] = self.order.clone()
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": self.tokenizer.kind,
            "config": to_dict(self.tokenizer.config),
            "id_mode": self.id_mode,
            "token_offset": self.token_offset,
            "lm_vocab_size": self.lm_vocab_size,
            "normalizer": "quantile" if self.normalizer is not None else None,
            "ordered": self.order is not None,
            "weights_file": WEIGHTS_FILE,
        }
        save_weights_and_manifest(out, tensors, meta, WEIGHTS_FILE, CONFIG_FILE)
        logger.info("saved %s tokenizer (%d ids x %d tokens) to %s", self.tokenizer.kind, self.vocab_size,
                    self.num_tokens, out)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ActionTokenizer:
        """Load what `save_pretrained` wrote; refuses tampered/truncated files and unknown versions."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        src = Path(directory)
        config_path = src / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no {CONFIG_FILE} (not a saved ActionTokenizer directory?)")
        try:
            meta = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_path}: not valid JSON (truncated or corrupted?): {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{config_path}: format is {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"expected {FORMAT_NAME!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {meta.get('format_version')!r} is not supported "
                             f"(this vqstudy reads version {FORMAT_VERSION})")
        for key in ("kind", "config", "weights_file", "weights_sha256", "id_mode", "token_offset"):
            if key not in meta:
                raise ValueError(f"{config_path}: missing key {key!r}")
        weights = src / Path(str(meta["weights_file"])).name  # never leave the directory
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: weights file named in {config_path} is missing")
        digest = sha256_file(weights)
        if digest != meta["weights_sha256"]:
            raise ValueError(f"{weights}: sha256 {digest} does not match {meta['weights_sha256']} recorded in "
                             f"{config_path}; the file was modified or truncated")
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{weights}: not a readable safetensors file: {err}") from err

        tokenizer = build_tokenizer(meta["kind"], meta["config"])
        state = {k[len("tokenizer."):]: v for k, v in tensors.items() if k.startswith("tokenizer.")}
        try:
            tokenizer.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{weights}: weights do not fit a {meta['kind']!r} tokenizer with the saved config: {err}") from err
        normalizer = None
        if meta.get("normalizer") == "quantile":
            normalizer = QuantileNormalizer.from_state_dict(
                {k[len("normalizer."):]: v for k, v in tensors.items() if k.startswith("normalizer.")})
        elif meta.get("normalizer") is not None:
            raise ValueError(f"{config_path}: unknown normalizer {meta['normalizer']!r}; known: 'quantile' or null")
        order = tensors.get("order") if meta.get("ordered") else None
        if meta.get("ordered") and order is None:
            raise ValueError(f"{weights}: config says ordered but the file has no 'order' tensor")
        return cls(tokenizer, normalizer, id_mode=meta["id_mode"], token_offset=meta["token_offset"],
                   lm_vocab_size=meta.get("lm_vocab_size"), order=order)

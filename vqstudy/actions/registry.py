"""The one registry of action tokenizer kinds: training, the policy experiments and export all build
tokenizers through `build_tokenizer`, and `ActionTokenizer.from_pretrained` builds only these kinds."""

from __future__ import annotations

from typing import Any

from vqstudy.actions.baselines import FSQTokenizer, ResidualVQTokenizer, UniformBinTokenizer
from vqstudy.actions.fast import FastTokenizer
from vqstudy.actions.tokenizers import ActionVQVAE, ChunkTokenizer, HierarchicalActionVQVAE
from vqstudy.config import from_dict

TOKENIZER_KINDS: dict[str, type[ChunkTokenizer]] = {
    cls.kind: cls
    for cls in (ActionVQVAE, HierarchicalActionVQVAE, UniformBinTokenizer, FSQTokenizer, ResidualVQTokenizer,
                FastTokenizer)
}
"""The only tokenizer classes `from_pretrained` will build, by saved kind."""


def build_tokenizer(kind: str, config: Any) -> ChunkTokenizer:
    """A tokenizer of a whitelisted `kind` from its config dataclass (or a dict of its fields)."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {sorted(TOKENIZER_KINDS)}")
    cls = TOKENIZER_KINDS[kind]
    if isinstance(config, dict):
        config = from_dict(cls.config_class, config, where=f"{cls.config_class.__name__} (kind {kind!r})")
    return cls(config)

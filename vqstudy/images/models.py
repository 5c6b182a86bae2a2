"""`build_model`: the image model a typed config describes."""

from __future__ import annotations

from torch import nn

from vqstudy.images.config import HierarchicalVQVAEConfig, VQVAEConfig
from vqstudy.images.hierarchical import HierarchicalVQVAE
from vqstudy.images.vqvae import VQVAE


def build_model(config: VQVAEConfig | HierarchicalVQVAEConfig) -> nn.Module:
    """The image model a config describes: VQVAEConfig -> VQVAE, HierarchicalVQVAEConfig -> HierarchicalVQVAE."""
    if isinstance(config, HierarchicalVQVAEConfig):
        return HierarchicalVQVAE(config)
    if isinstance(config, VQVAEConfig):
        return VQVAE(config)
    raise TypeError(
        f"build_model: config must be a VQVAEConfig or HierarchicalVQVAEConfig, got {type(config).__name__}"
    )

"""Image VQ-VAEs: single-level `VQVAE` and two-level `HierarchicalVQVAE`, built from typed configs."""

from __future__ import annotations

from torch import nn

from vqstudy.images.config import MODEL_CONFIGS, HierarchicalVQVAEConfig, LevelSpec, VQVAEConfig
from vqstudy.images.hierarchical import HierarchicalVQVAE
from vqstudy.images.vqvae import VQVAE, VQVAEOutput

__all__ = [
    "MODEL_CONFIGS",
    "HierarchicalVQVAE",
    "HierarchicalVQVAEConfig",
    "LevelSpec",
    "VQVAE",
    "VQVAEConfig",
    "VQVAEOutput",
    "build_model",
]


def build_model(config: VQVAEConfig | HierarchicalVQVAEConfig) -> nn.Module:
    """The image model a config describes: VQVAEConfig -> VQVAE, HierarchicalVQVAEConfig -> HierarchicalVQVAE."""
    if isinstance(config, HierarchicalVQVAEConfig):
        return HierarchicalVQVAE(config)
    if isinstance(config, VQVAEConfig):
        return VQVAE(config)
    raise TypeError(
        f"build_model: config must be a VQVAEConfig or HierarchicalVQVAEConfig, got {type(config).__name__}"
    )

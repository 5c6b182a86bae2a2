"""The image study: capacity-matched single-level vs hierarchical (VQ-VAE-2) image VQ-VAEs.

data/          embedded photos, ImageFolder, parquet (Lightning data module)
config.py      VQVAEConfig / HierarchicalVQVAEConfig; blocks.py, vqvae.py, hierarchical.py, models.py (build_model)
capacity.py    bits per image, parameter counts, capacity matching
train.py       the Lightning module and fit_model; pair.py: one capacity-matched pair; study.py: the study
metrics.py     PSNR, SSIM, LPIPS, rFID; plots.py: figures of a run
"""

from vqstudy.images.capacity import bits_per_sample, match_single_level
from vqstudy.images.config import HierarchicalVQVAEConfig, LevelSpec, VQVAEConfig
from vqstudy.images.hierarchical import HierarchicalVQVAE
from vqstudy.images.models import build_model
from vqstudy.images.vqvae import VQVAE, VQVAEOutput

__all__ = [
    "HierarchicalVQVAE",
    "HierarchicalVQVAEConfig",
    "LevelSpec",
    "VQVAE",
    "VQVAEConfig",
    "VQVAEOutput",
    "bits_per_sample",
    "build_model",
    "match_single_level",
]

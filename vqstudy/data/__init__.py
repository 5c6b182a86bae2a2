"""Datasets for the study. Exports are lazy so ``import vqstudy.data`` stays cheap.

Images: :mod:`vqstudy.data.images` (embedded scikit-image/scikit-learn photos, ImageFolder, parquet).
"""

from importlib import import_module

_LAZY = {
    "ImageDataConfig": "vqstudy.data.images",
    "ImageDataModule": "vqstudy.data.images",
    "build_datasets": "vqstudy.data.images",
    "BadImageError": "vqstudy.data.images_common",
    "EMBEDDED_IMAGES": "vqstudy.data.images_embedded",
}
"""Public name -> module that defines it."""

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqstudy.data' has no attribute {name!r}")

"""Image data: the embedded photos, ImageFolder trees and parquet (streamed with `datasets`), as random crops."""

from vqstudy.images.data.common import BadImageError
from vqstudy.images.data.embedded import EMBEDDED_IMAGES
from vqstudy.images.data.module import ImageDataConfig, ImageDataModule, build_datasets

__all__ = ["EMBEDDED_IMAGES", "BadImageError", "ImageDataConfig", "ImageDataModule", "build_datasets"]

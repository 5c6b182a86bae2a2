"""Image data for the VQ-VAE study: config, ``build_datasets`` and a Lightning DataModule.

Sources:

- ``embedded`` (default, offline): the photographs inside scikit-image and scikit-learn
  (:data:`~vqstudy.images.data.embedded.EMBEDDED_IMAGES`). Training draws ``samples_per_epoch``
  seeded random crops from the training images; validation is a fixed grid of non-overlapping tiles
  of the held-out ``val_images``, so no validation pixel is ever trained on.
- ``imagefolder``: ``root/<split>/<class>/*.JPEG`` (torchvision ImageFolder layout).
- ``parquet``: Hugging Face ``imagenet-1k`` shards (``root/data/<split>-*.parquet``), optionally streamed.

Items are float (3, crop_size, crop_size) tensors in [0, 1]; batches are (B, 3, crop, crop).

Image policy: grayscale/RGBA/palette/CMYK images become RGB (alpha over white). An image that cannot
be decoded, or is smaller than ``crop_size`` (after ``resize_short_side``, if set), is skipped,
counted (``dataset.num_skipped``, ``dataset.skipped_files``) and logged; with ``strict=True`` it raises
:class:`~vqstudy.images.data.common.BadImageError` naming the file (and the sizes). Small images are
never silently upscaled: set ``resize_short_side >= crop_size`` to resize every image (ImageNet-style).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vqstudy.images.data.common import EpochSampler, SkipLog
from vqstudy.images.data.embedded import (
    DEFAULT_VAL_IMAGES,
    RandomCropDataset,
    TiledCropDataset,
    load_embedded_images,
    split_embedded,
)
from vqstudy.images.data.files import ImageFolderCrops, ParquetCrops, ParquetStream

logger = logging.getLogger(__name__)

SOURCES = ("embedded", "imagefolder", "parquet")


@dataclass
class ImageDataConfig:
    """Where images come from and how they are cropped and batched."""

    source: Literal["embedded", "imagefolder", "parquet"] = "embedded"
    """'embedded' (offline scikit-image/scikit-learn photos), 'imagefolder', or 'parquet' (HF imagenet-1k shards)."""
    root: str | None = None
    """Dataset folder for 'imagefolder' and 'parquet' (unused for 'embedded')."""
    crop_size: int = 64
    """Side of the square crops, in pixels."""
    resize_short_side: int | None = None
    """Resize each file image's short side to this before cropping (>= crop_size); None keeps native size."""
    flip: bool = True
    """Randomly flip training crops left-right."""
    samples_per_epoch: int = 4096
    """Random training crops per epoch for 'embedded' (file sources make one pass over the files)."""
    val_images: tuple[str, ...] = DEFAULT_VAL_IMAGES
    """Embedded images held out whole for validation (tiled into non-overlapping crops)."""
    train_split: str = "train"
    """Training split name (folder name, or parquet shard prefix)."""
    val_split: str | None = None
    """Validation split name; None picks 'val' for 'imagefolder' and 'validation' for 'parquet'."""
    max_val_images: int | None = None
    """Use only the first N validation images of a file source (None: all)."""
    streaming: bool = False
    """Stream parquet shards with `datasets` (an IterableDataset, nothing cached); 'parquet' only."""
    shuffle_buffer: int = 10_000
    """Rows in the streaming shuffle buffer."""
    cache_dir: str | None = None
    """`datasets` Arrow cache for non-streaming parquet; None uses HF_DATASETS_CACHE."""
    strict: bool = False
    """Raise on the first corrupt/too-small image instead of skipping and counting it."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the main process)."""
    batch_size: int = 32
    """Images per batch."""
    seed: int = 0
    """Seed of the crops, flips and shuffles; a run is reproducible given the seed."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source ({self.source!r}) must be one of {SOURCES}")
        if self.source != "embedded" and not self.root:
            raise ValueError(f"root ({self.root!r}) must be a folder when source is {self.source!r}")
        for name in ("crop_size", "samples_per_epoch", "batch_size", "shuffle_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} ({value!r}) must be a positive int")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers ({self.num_workers!r}) must be an int >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed ({self.seed!r}) must be an int >= 0")
        if self.resize_short_side is not None and self.resize_short_side < self.crop_size:
            raise ValueError(f"resize_short_side ({self.resize_short_side}) must be >= crop_size ({self.crop_size}) or None")
        if self.max_val_images is not None and self.max_val_images <= 0:
            raise ValueError(f"max_val_images ({self.max_val_images}) must be > 0 or None")
        if self.streaming and self.source != "parquet":
            raise ValueError(f"streaming ({self.streaming}) needs source 'parquet', not {self.source!r}")
        if isinstance(self.val_images, str):
            raise ValueError(f"val_images ({self.val_images!r}) must be a list of names, not one string")
        self.val_images = tuple(self.val_images)
        if self.source == "embedded":
            if not self.val_images:
                raise ValueError(f"val_images ({self.val_images}) must name at least one embedded image")
            split_embedded(self.val_images)  # raises ValueError naming unknown names

    @property
    def resolved_val_split(self) -> str:
        """The validation split name actually used."""
        if self.val_split is not None:
            return self.val_split
        return "validation" if self.source == "parquet" else "val"


def build_datasets(cfg: ImageDataConfig) -> tuple[Dataset, Dataset]:
    """(train_ds, val_ds) for ``cfg``; items are float (3, crop, crop) in [0, 1].

    Map-style training sets take draw indices from :class:`EpochSampler` (used by
    :class:`ImageDataModule`); streaming parquet gives IterableDatasets.
    """
    common = dict(crop_size=cfg.crop_size, strict=cfg.strict)
    if cfg.source == "embedded":
        train_names, val_names = split_embedded(cfg.val_images)
        log = SkipLog(cfg.strict)
        train_ds = RandomCropDataset(load_embedded_images(train_names, log), samples_per_epoch=cfg.samples_per_epoch,
                                     seed=cfg.seed, flip=cfg.flip, **common)
        val_ds = TiledCropDataset(load_embedded_images(val_names, log), **common)
        logger.info("embedded images: %d train %s, %d val tiles from %s", len(train_ds.names), train_ds.names, len(val_ds), val_names)
        return train_ds, val_ds
    files = dict(root=cfg.root, seed=cfg.seed, flip=cfg.flip, resize_short_side=cfg.resize_short_side, **common)
    if cfg.source == "imagefolder":
        train_ds = ImageFolderCrops(split=cfg.train_split, train=True, **files)
        val_ds = ImageFolderCrops(split=cfg.resolved_val_split, train=False, max_images=cfg.max_val_images, **files)
    elif cfg.streaming:
        train_ds = ParquetStream(split=cfg.train_split, train=True, shuffle_buffer=cfg.shuffle_buffer, **files)
        val_ds = ParquetStream(split=cfg.resolved_val_split, train=False, max_images=cfg.max_val_images, **files)
    else:
        train_ds = ParquetCrops(split=cfg.train_split, train=True, cache_dir=cfg.cache_dir, **files)
        val_ds = ParquetCrops(split=cfg.resolved_val_split, train=False, max_images=cfg.max_val_images, cache_dir=cfg.cache_dir, **files)
    logger.info("%s images from %s: train split %r, val split %r", cfg.source, cfg.root, cfg.train_split, cfg.resolved_val_split)
    return train_ds, val_ds


class ImageDataModule(pl.LightningDataModule):
    """Lightning wrapper around :func:`build_datasets`; batches are float (B, 3, crop, crop) in [0, 1]."""

    def __init__(self, cfg: ImageDataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_ds: Dataset | None = None
        self.val_ds: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets once (idempotent)."""
        if self.train_ds is None:
            self.train_ds, self.val_ds = build_datasets(self.cfg)

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        cfg = self.cfg
        sampler = None
        if not isinstance(ds, IterableDataset):
            sampler = EpochSampler(len(ds), shuffle=train and cfg.source != "embedded", seed=cfg.seed) if train else None
        return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                          persistent_workers=cfg.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Training crops; the sampler's ``set_epoch`` (called by Lightning) gives fresh crops per epoch."""
        self.setup("fit")
        return self._loader(self.train_ds, train=True)

    def val_dataloader(self) -> DataLoader:
        """Fixed validation crops, in a fixed order."""
        self.setup("validate")
        return self._loader(self.val_ds, train=False)

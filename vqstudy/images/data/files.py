"""Image datasets read from disk: a torchvision ImageFolder tree or Hugging Face parquet shards.

Layouts (ImageNet as the example):

- ImageFolder: ``root/<split>/<class>/*.JPEG`` (``train`` and ``val``).
- Parquet (Hugging Face ``imagenet-1k``): ``root/data/<split>-00000-of-00257.parquet`` (or the
  shards directly in ``root``), columns ``image`` (struct ``{bytes, path}``) and ``label``;
  split names ``train`` / ``validation``. Read with ``datasets`` from local files, optionally streamed.

Items are float (3, crop, crop) tensors in [0, 1]: random (flipped) crops for training, a centre crop
for validation, after an optional resize of the short side. Bad images are skipped and counted
(see :class:`~vqstudy.images.data.common.SkipLog`), or raise when ``strict``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vqstudy.images.data.common import (
    MAX_CONSECUTIVE_SKIPS,
    ImageSource,
    SkipCounted,
    SkipLog,
    center_crop_pil,
    prepare,
    random_crop_pil,
    try_decode,
)

logger = logging.getLogger(__name__)

_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+\.parquet$")


def _require_datasets():
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a declared dependency
        raise ImportError("reading parquet images needs the `datasets` package: pip install 'datasets>=2.19'") from err
    return datasets


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image root folder {str(root)!r} does not exist or is not a folder")
    return root


def imagefolder_files(root: str | Path, split: str) -> list[str]:
    """Sorted image paths under ``root/<split>/<class>/``; clear errors for a missing split or empty folder."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = _check_root(root)
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"split {split!r} not found in image folder {str(root)!r} (expected {str(split_dir)!r}/<class>/*.JPEG); "
            f"sub-folders found: {found or 'none'}"
        )
    try:
        _, class_to_idx = find_classes(split_dir)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image folder {str(split_dir)!r} has no class sub-folders (expected <class>/*.JPEG)") from err
    samples = make_dataset(split_dir, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileNotFoundError(f"image folder {str(split_dir)!r} holds no images with extensions {', '.join(IMG_EXTENSIONS)}")
    return [path for path, _ in samples]


def parquet_files(root: str | Path, split: str) -> list[str]:
    """Sorted ``<split>-*.parquet`` shards in ``root/data`` or ``root``; clear errors when none match."""
    root = _check_root(root)
    dirs = [d for d in (root / "data", root) if d.is_dir()]
    files = sorted(str(p) for d in dirs for p in d.glob(f"{split}-*.parquet"))
    if files:
        return files
    shards = [p.name for d in dirs for p in d.glob("*.parquet")]
    if not shards:
        raise FileNotFoundError(f"no .parquet files in {str(root)!r} or {str(root / 'data')!r}")
    found = sorted({m["split"] if (m := _SHARD.match(n)) else n for n in shards})
    raise FileNotFoundError(
        f"split {split!r} not found: no {split}-*.parquet in {str(root)!r} or {str(root / 'data')!r}; splits found: {found}"
    )


class _CropDataset(SkipCounted, Dataset):
    """Map-style base: item ``k`` is source ``k % n``; a bad image is replaced by the next one."""

    def __init__(self, n: int, crop_size: int, train: bool, seed: int, flip: bool, resize_short_side: int | None, strict: bool) -> None:
        self.n, self.crop_size, self.train, self.seed, self.flip = n, crop_size, train, seed, flip
        self.resize_short_side = resize_short_side
        self.log = SkipLog(strict)

    def source(self, i: int) -> tuple[ImageSource, str]:
        """The encoded image (path or bytes) of item ``i`` and a name for messages."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> torch.Tensor:
        if k < 0:
            raise IndexError(f"index ({k}) must be >= 0")
        for attempt in range(min(MAX_CONSECUTIVE_SKIPS, self.n)):
            src, name = self.source((k + attempt) % self.n)
            img = try_decode(src, name, self.log)
            if img is not None:
                img = prepare(img, name, self.crop_size, self.resize_short_side, self.log)
            if img is None:
                continue
            if not self.train:
                return center_crop_pil(img, self.crop_size)
            return random_crop_pil(img, np.random.default_rng((self.seed, k)), self.crop_size, self.flip)
        raise RuntimeError(f"{attempt + 1} unusable images in a row from index {k % self.n}; last: {name!r} (see the warnings above)")


class ImageFolderCrops(_CropDataset):
    """Crops of the images under ``root/<split>/<class>/`` (torchvision ImageFolder layout)."""

    def __init__(self, root: str | Path, split: str, crop_size: int, train: bool, seed: int = 0, flip: bool = True,
                 resize_short_side: int | None = None, strict: bool = False, max_images: int | None = None) -> None:
        self.files = imagefolder_files(root, split)[:max_images]
        super().__init__(len(self.files), crop_size, train, seed, flip, resize_short_side, strict)

    def source(self, i: int) -> tuple[ImageSource, str]:
        return self.files[i], self.files[i]


def _row_source(row: dict, split: str, i: int) -> tuple[ImageSource, str]:
    image = row["image"]
    name = image.get("path") or f"{split}[{i}]"
    return image["bytes"], name


class ParquetCrops(_CropDataset):
    """Crops of the images in parquet shards, loaded (and Arrow-cached) by ``datasets``."""

    def __init__(self, root: str | Path, split: str, crop_size: int, train: bool, seed: int = 0, flip: bool = True,
                 resize_short_side: int | None = None, strict: bool = False, max_images: int | None = None,
                 cache_dir: str | None = None) -> None:
        datasets = _require_datasets()
        self.files, self.split = parquet_files(root, split), split
        hf = datasets.load_dataset("parquet", data_files={split: self.files}, split=split, cache_dir=cache_dir)
        hf = hf.cast_column("image", datasets.Image(decode=False))  # we decode, to skip bad images
        if max_images is not None:
            hf = hf.select(range(min(max_images, len(hf))))
        if len(hf) == 0:
            raise FileNotFoundError(f"split {split!r} in {str(root)!r} has no rows")
        self.hf = hf.select_columns(["image"])
        super().__init__(len(self.hf), crop_size, train, seed, flip, resize_short_side, strict)

    def source(self, i: int) -> tuple[ImageSource, str]:
        return _row_source(self.hf[i], self.split, i)


class ParquetStream(SkipCounted, IterableDataset):
    """Streams crops from parquet shards with ``datasets`` streaming; nothing is cached on disk.

    Training shuffles shard order and a ``shuffle_buffer`` of rows, reseeded per epoch. The epoch
    advances at every ``iter()`` of this object, which covers ``num_workers=0`` and persistent
    workers (what :class:`~vqstudy.images.data.module.ImageDataModule` uses); with non-persistent workers
    every epoch replays epoch 0 unless :meth:`set_epoch` is called before it. Workers split the shards.
    """

    def __init__(self, root: str | Path, split: str, crop_size: int, train: bool, seed: int = 0, flip: bool = True,
                 resize_short_side: int | None = None, strict: bool = False, max_images: int | None = None,
                 shuffle_buffer: int = 10_000) -> None:
        self.files, self.split = parquet_files(root, split), split
        self.crop_size, self.train, self.seed, self.flip = crop_size, train, seed, flip
        self.resize_short_side, self.max_images, self.shuffle_buffer = resize_short_side, max_images, shuffle_buffer
        self.log = SkipLog(strict)
        self.epoch = 0
        self._next_epoch: int | None = None
        self._stream = None  # the `datasets` IterableDataset, built at first iteration

    @property
    def num_rows(self) -> int:
        """Rows in the shards (read from parquet metadata), capped by ``max_images``."""
        import pyarrow.parquet as pq

        rows = sum(pq.read_metadata(f).num_rows for f in self.files)
        return rows if self.max_images is None else min(rows, self.max_images)

    def set_epoch(self, epoch: int) -> None:
        """Use this epoch's shuffle and crops for the next iteration."""
        self._next_epoch = epoch

    def _hf(self, epoch: int):
        # `datasets` keeps the epoch in a torch tensor created at the first set_epoch and updated in place;
        # created inside Lightning's validation (inference mode) it would be an inference tensor that a later
        # iteration outside inference mode may not update, so it is always made and updated as a normal tensor.
        with torch.inference_mode(False):
            return self._hf_stream(epoch)

    def _hf_stream(self, epoch: int):
        if self._stream is None:
            datasets = _require_datasets()
            hf = datasets.load_dataset("parquet", data_files={self.split: self.files}, split=self.split, streaming=True)
            hf = hf.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
            if self.train:  # note: datasets 5.x sleeps 5 s after each shuffled pass (an Arrow workaround)
                hf = hf.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            if self.max_images is not None:
                hf = hf.take(self.max_images)
            self._stream = hf
        self._stream.set_epoch(epoch)
        return self._stream

    def __iter__(self):
        if self._next_epoch is not None:
            self.epoch, self._next_epoch = self._next_epoch, None
        epoch = self.epoch
        self.epoch += 1
        info = get_worker_info()
        rng = np.random.default_rng((self.seed, epoch, info.id if info else 0))
        for i, row in enumerate(self._hf(epoch)):
            src, name = _row_source(row, self.split, i)
            img = try_decode(src, name, self.log)
            if img is not None:
                img = prepare(img, name, self.crop_size, self.resize_short_side, self.log)
            if img is None:
                continue
            yield random_crop_pil(img, rng, self.crop_size, self.flip) if self.train else center_crop_pil(img, self.crop_size)

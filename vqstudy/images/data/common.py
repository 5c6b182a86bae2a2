"""Shared pieces of the image datasets: robust decoding, crops, skip bookkeeping, epoch sampler.

Every training crop is drawn from a numpy generator seeded by ``(seed, k)``, where ``k`` is the
"draw index" the dataset receives. :class:`EpochSampler` hands out ``k = epoch * n + i``, so a run is
reproducible, every epoch sees fresh crops, and this holds with any number of DataLoader workers.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from typing import Union

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

ImageSource = Union[str, os.PathLike, bytes]
"""A file path, or the encoded bytes of an image (a parquet row)."""

MAX_CONSECUTIVE_SKIPS = 64
"""A map-style dataset gives up (RuntimeError) after this many unusable images in a row."""

_KEEP_SKIPPED_NAMES = 1000


class BadImageError(ValueError):
    """An image could not be used (corrupt, truncated, or smaller than the crop) in strict mode."""


class SkipLog:
    """Counts and logs images that were skipped; raises :class:`BadImageError` instead when strict.

    Each bad image is counted and warned about once, however often it is met (epochs, retries).
    Counters are per process: with DataLoader workers each worker counts (and logs) its own skips.
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self._seen: set[str] = set()
        self.skipped_files: list[str] = []
        """Names of the skipped images (the first 1000)."""

    @property
    def num_skipped(self) -> int:
        """How many distinct images were skipped so far (in this process)."""
        return len(self._seen)

    def skip(self, name: str, reason: str) -> None:
        """Record that image ``name`` is unusable; raise in strict mode, else log and count."""
        if self.strict:
            raise BadImageError(f"image {name!r}: {reason}")
        if name in self._seen:
            logger.debug("skipped image %r again: %s", name, reason)
            return
        self._seen.add(name)
        if len(self.skipped_files) < _KEEP_SKIPPED_NAMES:
            self.skipped_files.append(name)
        logger.warning("skipped image %r: %s (%d skipped so far)", name, reason, self.num_skipped)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited over white."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(source: ImageSource) -> Image.Image:
    """Fully decode a path or encoded bytes into an RGB PIL image (raises on corrupt/truncated)."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp) as img:
        img.load()  # force the decode here so truncation raises now, not later
        return to_rgb(img)


def try_decode(source: ImageSource, name: str, log: SkipLog) -> Image.Image | None:
    """:func:`decode_image`, but a failure is skipped+counted (or raised when ``log.strict``)."""
    try:
        return decode_image(source)
    except Exception as err:  # PIL raises OSError, SyntaxError, zlib.error, ... on bad files
        log.skip(name, f"cannot decode ({type(err).__name__}: {err})")
        return None


def prepare(
    img: Image.Image,
    name: str,
    crop_size: int,
    resize_short_side: int | None,
    log: SkipLog,
) -> Image.Image | None:
    """Optionally resize the short side, then check the image is at least ``crop_size`` both ways."""
    if resize_short_side is not None:
        img = TF.resize(img, resize_short_side, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    w, h = img.size
    if min(h, w) < crop_size:
        log.skip(name, f"size {h}x{w} (HxW) is smaller than crop_size {crop_size}; set resize_short_side >= crop_size to upscale")
        return None
    return img


def crop_params(rng: np.random.Generator, h: int, w: int, crop_size: int, flip: bool) -> tuple[int, int, bool]:
    """Uniform random (top, left) of a ``crop_size`` square inside an (h, w) image, and a coin flip."""
    top = int(rng.integers(0, h - crop_size + 1))
    left = int(rng.integers(0, w - crop_size + 1))
    do_flip = bool(flip and rng.random() < 0.5)
    return top, left, do_flip


def random_crop_pil(img: Image.Image, rng: np.random.Generator, crop_size: int, flip: bool) -> torch.Tensor:
    """Random (flipped) square crop of a PIL image -> float (3, crop, crop) in [0, 1]."""
    top, left, do_flip = crop_params(rng, img.height, img.width, crop_size, flip)
    out = pil_to_float(TF.crop(img, top, left, crop_size, crop_size))
    return out.flip(-1) if do_flip else out


def center_crop_pil(img: Image.Image, crop_size: int) -> torch.Tensor:
    """Deterministic center crop of a PIL image -> float (3, crop, crop) in [0, 1]."""
    return pil_to_float(TF.center_crop(img, [crop_size, crop_size]))


def pil_to_float(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float (3, H, W) in [0, 1]."""
    return TF.pil_to_tensor(img).float().div_(255.0)


class SkipCounted:
    """Mixin for datasets that keep a `SkipLog` in `self.log`: exposes its counters."""

    log: SkipLog

    @property
    def num_skipped(self) -> int:
        """How many bad images were skipped so far (in this process)."""
        return self.log.num_skipped

    @property
    def skipped_files(self) -> list[str]:
        """Names of the skipped images (the first 1000, in this process)."""
        return self.log.skipped_files


class EpochSampler(Sampler[int]):
    """Yields draw indices ``epoch * n + i`` for i in a (seeded, per-epoch) permutation of range(n).

    Lightning calls :meth:`set_epoch` before every epoch. Datasets read item ``k % n`` and seed the
    crop with ``(seed, k)``, so epochs differ but any run is reproducible.
    """

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        if n <= 0:
            raise ValueError(f"n ({n}) must be > 0")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n) if self.shuffle else np.arange(self.n)
        base = self.epoch * self.n
        return iter((base + order).tolist())

"""The offline default image set: photographs shipped inside scikit-image and scikit-learn.

Only images whose files are inside the installed wheels are listed (checked against
scikit-image 0.26: ``brain``, ``eagle``, ``lily``, ``skin``, ``kidney``, ... are fetched with pooch
at first use, so they are left out). Synthetic images (checkerboard, logo, phantom, horse, ...)
and the 102x102 ``microaneurysms`` are left out too. Grayscale photographs are repeated to RGB.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange, repeat
from torch.utils.data import Dataset

from vqstudy.images.data.common import SkipCounted, SkipLog, crop_params

logger = logging.getLogger(__name__)


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        out = getattr(skimage.data, name)()
        return out[index] if index is not None else out

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


EMBEDDED_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    # colour photographs (scikit-image)
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle", 0),  # left image of the stereo pair
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    # grayscale photographs (scikit-image), repeated to RGB
    "camera": _skimage("camera"),
    "moon": _skimage("moon"),
    "page": _skimage("page"),
    "coins": _skimage("coins"),
    "text": _skimage("text"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "clock": _skimage("clock"),
    "cell": _skimage("cell"),
    # colour photographs (scikit-learn)
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}
"""Name -> loader returning a uint8 (H, W) or (H, W, 3) array; every file ships in the wheels."""

DEFAULT_VAL_IMAGES: tuple[str, ...] = ("coffee", "camera", "china")
"""Held out for validation: 178 tiles at crop 64, 43 at crop 128."""


def _to_chw_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) array -> uint8 (3, H, W) tensor (gray repeated, alpha dropped)."""
    if arr.dtype != np.uint8:
        raise ValueError(f"embedded image dtype {arr.dtype} is not uint8")
    t = torch.from_numpy(np.array(arr, copy=True))  # own, writable memory
    if t.ndim == 2:
        return repeat(t, "h w -> c h w", c=3).contiguous()
    return rearrange(t[..., :3], "h w c -> c h w").contiguous()


@functools.lru_cache(maxsize=None)
def load_embedded_image(name: str) -> torch.Tensor:
    """One embedded photograph as uint8 (3, H, W); cached. Raises KeyError on an unknown name."""
    if name not in EMBEDDED_IMAGES:
        raise KeyError(f"unknown embedded image {name!r}; available: {', '.join(EMBEDDED_IMAGES)}")
    return _to_chw_uint8(EMBEDDED_IMAGES[name]())


def load_embedded_images(names: Sequence[str], log: SkipLog) -> dict[str, torch.Tensor]:
    """Load the named images; one that fails to load is skipped+counted (raised when strict)."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        try:
            out[name] = load_embedded_image(name)
        except KeyError:
            raise
        except Exception as err:  # e.g. a future scikit-image that fetches the file over the network
            log.skip(name, f"cannot load offline ({type(err).__name__}: {err})")
    return out


def _drop_small(images: Mapping[str, torch.Tensor], crop_size: int, log: SkipLog) -> dict[str, torch.Tensor]:
    keep = {}
    for name, img in images.items():
        h, w = img.shape[-2:]
        if min(h, w) < crop_size:
            log.skip(name, f"size {h}x{w} (HxW) is smaller than crop_size {crop_size}")
        else:
            keep[name] = img
    return keep


class RandomCropDataset(SkipCounted, Dataset):
    """``samples_per_epoch`` random (flipped) square crops of in-memory images, as float (3, c, c).

    Item ``k`` (any k >= 0; :class:`EpochSampler` gives ``epoch * len + i``) picks an image uniformly,
    then a uniform crop position and a coin flip, all from a generator seeded by ``(seed, k)``.
    """

    def __init__(
        self,
        images: Mapping[str, torch.Tensor],
        crop_size: int,
        samples_per_epoch: int,
        seed: int,
        flip: bool = True,
        strict: bool = False,
    ) -> None:
        self.log = SkipLog(strict)
        self.images = _drop_small(images, crop_size, self.log)
        if not self.images:
            raise ValueError(f"no training image is at least crop_size ({crop_size}) on both sides: {list(images)}")
        self.names = list(self.images)
        self.crop_size, self.samples_per_epoch, self.seed, self.flip = crop_size, samples_per_epoch, seed, flip

    def __len__(self) -> int:
        return self.samples_per_epoch

    def draw(self, k: int) -> tuple[str, int, int, bool]:
        """The (image name, top, left, flipped) of draw ``k``."""
        if k < 0:
            raise IndexError(f"draw index ({k}) must be >= 0")
        rng = np.random.default_rng((self.seed, k))
        name = self.names[int(rng.integers(len(self.names)))]
        h, w = self.images[name].shape[-2:]
        return (name, *crop_params(rng, h, w, self.crop_size, self.flip))

    def __getitem__(self, k: int) -> torch.Tensor:
        name, top, left, flipped = self.draw(k)
        c = self.crop_size
        crop = self.images[name][:, top : top + c, left : left + c].float().div_(255.0)  # (3, c, c)
        return crop.flip(-1) if flipped else crop


def tile_origins(h: int, w: int, crop_size: int) -> list[tuple[int, int]]:
    """(top, left) of a centred grid of non-overlapping ``crop_size`` tiles covering an (h, w) image."""
    rows, cols = h // crop_size, w // crop_size
    top0, left0 = (h - rows * crop_size) // 2, (w - cols * crop_size) // 2
    return [(top0 + i * crop_size, left0 + j * crop_size) for i in range(rows) for j in range(cols)]


class TiledCropDataset(SkipCounted, Dataset):
    """Every tile of a centred, non-overlapping grid over each image, as float (3, c, c); deterministic."""

    def __init__(self, images: Mapping[str, torch.Tensor], crop_size: int, strict: bool = False) -> None:
        self.log = SkipLog(strict)
        self.images = _drop_small(images, crop_size, self.log)
        self.crop_size = crop_size
        self.tiles = [(name, top, left) for name, img in self.images.items() for top, left in tile_origins(*img.shape[-2:], crop_size)]
        if not self.tiles:
            raise ValueError(f"no validation tiles: no held-out image is at least crop_size ({crop_size}) on both sides: {list(images)}")

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> torch.Tensor:
        name, top, left = self.tiles[i]
        c = self.crop_size
        return self.images[name][:, top : top + c, left : left + c].float().div_(255.0)  # (3, c, c)


def split_embedded(val_names: Sequence[str], names: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Deterministic split of the embedded names into (train, val) by name; val keeps the given order."""
    names = list(EMBEDDED_IMAGES) if names is None else list(names)
    unknown = [n for n in val_names if n not in names]
    if unknown:
        raise ValueError(f"val_images {unknown} are not embedded images; available: {', '.join(names)}")
    train = [n for n in names if n not in set(val_names)]
    if not train:
        raise ValueError(f"val_images ({list(val_names)}) hold out every embedded image; leave some for training")
    return train, list(val_names)

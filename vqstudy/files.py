"""File helpers shared by everything that downloads, caches or exports: sha256 and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights_and_manifest(directory: Path, tensors: dict[str, Any], meta: dict[str, Any], weights_file: str,
                              config_file: str) -> None:
    """Write `tensors` as safetensors, then the JSON manifest `meta` plus the weights' sha256, each atomically: a
    reader sees whole files only, and the manifest (written last) marks a complete save."""
    from safetensors.torch import save

    data = save(tensors)
    write_atomic(directory / weights_file, data)
    manifest = {**meta, "weights_sha256": sha256_bytes(data)}
    write_atomic(directory / config_file, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

"""vqstudy: study VQ-VAE codebooks.

Public names are imported lazily so `import vqstudy` stays cheap and optional dependencies
are only touched by the parts that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Quantizer": "vqstudy.quantize",
    "QuantizeOutput": "vqstudy.quantize",
    "QuantizeStats": "vqstudy.quantize",
    "QuantizerConfig": "vqstudy.quantize",
    "CodebookUsage": "vqstudy.quantize",
    "nearest_code": "vqstudy.kernels",
    "VQVAE": "vqstudy.images",
    "HierarchicalVQVAE": "vqstudy.images",
    "bits_per_sample": "vqstudy.images",
    "ActionTokenizer": "vqstudy.actions",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vqstudy' has no attribute {name!r}")

"""Classical codecs at a VQ-VAE's rate: JPEG and WebP (Pillow), quality searched per image to fit a bit budget.

The budget is the VQ-VAE's bits per image (2,560 bits for a 64 px crop of the study pair = 0.625 bpp).
Bits are counted two ways, and the quality search uses the first:
- payload bits: the entropy-coded data only (JPEG: the scan between the SOS header and EOI; WebP: the
  VP8 chunk), as a VQ-VAE's code grid carries no per-image header; the fixed tables and container
  headers a real file carries (~600 bytes for a JPEG, 20 bytes for a WebP) are left out;
- file bits: the whole file, reported beside it (at 64 px a JPEG header alone exceeds the budget).
"""

from __future__ import annotations

import io
import struct
from typing import NamedTuple

import numpy as np
import torch

CODECS = ("jpeg", "webp")


class Coded(NamedTuple):
    """One image through a codec at the best quality that fits the budget."""

    image: torch.Tensor
    """(3, H, W) decoded image in [0, 1]."""
    quality: int
    """Codec quality chosen (1-100); 1 when even the lowest quality exceeds the budget."""
    payload_bits: int
    """Entropy-coded payload bits (see module doc)."""
    file_bits: int
    """Whole-file bits."""
    fits: bool
    """payload_bits <= budget."""


def jpeg_payload_bytes(data: bytes) -> int:
    """Bytes of entropy-coded scan data in a baseline JPEG: after the SOS segment, up to EOI."""
    sos = data.find(b"\xff\xda")
    if sos < 0:
        raise ValueError("not a JPEG stream: no SOS marker")
    (length,) = struct.unpack(">H", data[sos + 2 : sos + 4])
    eoi = data.rfind(b"\xff\xd9")
    return eoi - (sos + 2 + length)


def webp_payload_bytes(data: bytes) -> int:
    """Bytes of the VP8 (lossy) chunk of a simple-format WebP file (RIFF and chunk headers excluded)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or data[12:16] != b"VP8 ":
        raise ValueError(f"not a simple lossy WebP file (chunk {data[12:16]!r})")
    (size,) = struct.unpack("<I", data[16:20])
    return size


def _encode(img, codec: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        img.save(buf, format="WEBP", quality=quality, method=6)
    return buf.getvalue()


def _payload(data: bytes, codec: str) -> int:
    return 8 * (jpeg_payload_bytes(data) if codec == "jpeg" else webp_payload_bytes(data))


def code_at_budget(image: torch.Tensor, codec: str, budget_bits: float) -> Coded:
    """Encode (3, H, W) `image` in [0, 1] with `codec` at the highest quality whose payload fits `budget_bits`."""
    from PIL import Image

    if codec not in CODECS:
        raise ValueError(f"codec ({codec!r}) must be one of {CODECS}")
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    img = Image.fromarray(arr)
    lo, hi, best = 1, 100, None
    while lo <= hi:  # payload grows with quality (checked below for the chosen one)
        mid = (lo + hi) // 2
        data = _encode(img, codec, mid)
        if _payload(data, codec) <= budget_bits:
            best, lo = (mid, data), mid + 1
        else:
            hi = mid - 1
    if best is None:
        best = (1, _encode(img, codec, 1))
    quality, data = best
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    payload = _payload(data, codec)
    return Coded(torch.from_numpy(decoded).permute(2, 0, 1), quality, payload, 8 * len(data), payload <= budget_bits)

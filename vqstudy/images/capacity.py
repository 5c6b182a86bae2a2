"""Capacity accounting for image VQ-VAEs: bits per image, parameter counts, and equal-bits matching.

arXiv 2601.22244 compares single-level and hierarchical VQ-VAEs at equal bits per image; here a
level of a model holds (H/f)(W/f) codes of log2(K) bits each, and `match_single_level` derives
from a hierarchical config the single-level config with the same total bits.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, NamedTuple

from torch import nn

from vqstudy.images.config import HierarchicalVQVAEConfig, VQVAEConfig
from vqstudy.images.models import build_model
from vqstudy.quantize import Quantizer

logger = logging.getLogger(__name__)

ImageSize = int | tuple[int, int]


class ParameterCount(NamedTuple):
    """Parameter counts of a model, split between the quantizers and the rest."""

    total: int
    """All parameters (network + quantizer)."""
    network: int
    """Parameters outside the quantizers (encoders, decoders, projections between them)."""
    quantizer: int
    """Parameters inside the quantizers (the codebook in 'grad' mode, in/out projections)."""
    codebook: int
    """Numbers stored in the codebooks, sum of K x lookup width (parameters or EMA buffers alike)."""


class CapacityMatch(NamedTuple):
    """A single-level config with (nearly) the bits of a hierarchical one, and both sizes."""

    single_config: VQVAEConfig
    """The derived single-level config (codebook options copied from the hierarchical bottom level)."""
    hier_bits: int | float
    """Bits per image of the hierarchical config."""
    single_bits: int | float
    """Bits per image of the single-level config."""
    relative_gap: float
    """(single_bits - hier_bits) / hier_bits."""
    hier_params: ParameterCount
    """Parameter counts of the hierarchical model."""
    single_params: ParameterCount
    """Parameter counts of the single-level model."""

    def as_row(self) -> dict[str, Any]:
        """Flat dict for a results table."""
        cfg = self.single_config
        return {
            "single_downsample": cfg.downsample,
            "single_codebook_size": cfg.quantizer.codebook_size,
            "hier_bits": self.hier_bits,
            "single_bits": self.single_bits,
            "relative_gap": self.relative_gap,
            **{f"hier_params_{k}": v for k, v in self.hier_params._asdict().items()},
            **{f"single_params_{k}": v for k, v in self.single_params._asdict().items()},
        }


def _height_width(image_size: ImageSize) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"image_size ({image_size!r}) must be a positive int or a (height, width) pair of them")
    return size  # type: ignore[return-value]


def latent_grids(config: VQVAEConfig | HierarchicalVQVAEConfig, image_size: ImageSize) -> dict[str, tuple[int, int]]:
    """Code-grid size (h, w) of each level for images of `image_size` (an int means square)."""
    height, width = _height_width(image_size)
    grids = {}
    for name, spec in config.levels().items():
        if height % spec.downsample or width % spec.downsample:
            raise ValueError(
                f"image_size ({height}x{width}) must be divisible by the downsampling factor "
                f"({spec.downsample}) of level '{name}'"
            )
        grids[name] = (height // spec.downsample, width // spec.downsample)
    return grids


def _bits(cells: int, codebook_size: int) -> int | float:
    """cells x log2(codebook_size), exact (an int) when codebook_size is a power of two."""
    if codebook_size & (codebook_size - 1) == 0:
        return cells * (codebook_size.bit_length() - 1)
    return cells * math.log2(codebook_size)


def bits_per_sample(config: VQVAEConfig | HierarchicalVQVAEConfig, image_size: ImageSize) -> int | float:
    """Bits per image: sum over levels of grid cells x log2(K); an int when every K is a power of two."""
    grids = latent_grids(config, image_size)
    levels = config.levels()
    return sum(_bits(h * w, levels[name].quantizer.codebook_size) for name, (h, w) in grids.items())


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count `model`'s parameters, split between its `Quantizer` submodules and everything else."""
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    in_quantizers = {id(p) for q in quantizers for p in q.parameters()}
    params = list(model.parameters())
    quantizer = sum(p.numel() for p in params if id(p) in in_quantizers)
    network = sum(p.numel() for p in params if id(p) not in in_quantizers)
    codebook = sum(q.codebook_size * q.config.lookup_dim for q in quantizers)
    return ParameterCount(total=network + quantizer, network=network, quantizer=quantizer, codebook=codebook)


def _candidate_factors(height: int, width: int, preferred: int) -> list[int]:
    """Powers of two dividing both sides, nearest (in log2) to `preferred` first, larger grids first on ties."""
    factors = [1 << n for n in range(min(height, width).bit_length()) if height % (1 << n) == 0 == width % (1 << n)]
    return sorted(factors, key=lambda f: (abs(f.bit_length() - preferred.bit_length()), f))


def _nearest_codebook_size(cells: int, target_bits: float, max_codebook_size: int) -> int | None:
    """Integer K >= 2 whose cells x log2(K) is nearest to target_bits, or None if K would exceed the cap."""
    per_cell = target_bits / cells
    if per_cell > math.log2(max_codebook_size) + 1:
        return None
    low = max(2, math.floor(2.0**per_cell))
    candidates = [k for k in (low, low + 1) if k <= max_codebook_size]
    if not candidates:
        return None
    return min(candidates, key=lambda k: abs(cells * math.log2(k) - target_bits))


def match_single_level(
    hier_config: HierarchicalVQVAEConfig,
    image_size: ImageSize,
    tolerance: float = 0.005,
    downsample: int | None = None,
    max_codebook_size: int = 1 << 20,
) -> CapacityMatch:
    """Single-level config with the bits of `hier_config` within `tolerance` (relative), and both parameter counts.

    Tries the bottom factor first (or only `downsample` if given), then other powers of two nearest to it;
    at each factor f the codebook size is the integer K nearest to 2^(bits / ((H/f)(W/f))). Encoder widths,
    latent width and codebook options come from the hierarchical config (its bottom level).
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance ({tolerance}) must be >= 0")
    height, width = _height_width(image_size)
    hier_bits = bits_per_sample(hier_config, (height, width))
    if downsample is not None:
        if downsample < 1 or downsample & (downsample - 1) or height % downsample or width % downsample:
            raise ValueError(
                f"downsample ({downsample}) must be a power of two dividing image_size ({height}x{width})"
            )
        factors = [downsample]
    else:
        factors = _candidate_factors(height, width, hier_config.bottom_downsample)
    tried = []
    for f in factors:
        cells = (height // f) * (width // f)
        k = _nearest_codebook_size(cells, hier_bits, max_codebook_size)
        if k is None:
            tried.append(f"f={f}: K > max_codebook_size ({max_codebook_size})")
            continue
        single_bits = _bits(cells, k)
        gap = (single_bits - hier_bits) / hier_bits
        if abs(gap) > tolerance:
            tried.append(f"f={f}: nearest K={k} is off by {gap:+.2%}")
            continue
        single = VQVAEConfig(
            in_channels=hier_config.in_channels,
            channels=hier_config.channels,
            n_res_blocks=hier_config.n_res_blocks,
            output_activation=hier_config.output_activation,
            downsample=f,
            latent_dim=hier_config.bottom_latent_dim,
            quantizer=replace(hier_config.bottom, codebook_size=k),
        )
        logger.info("matched %s bits with f=%d, K=%d (gap %+.4f%%)", hier_bits, f, k, 100 * gap)
        return CapacityMatch(
            single_config=single,
            hier_bits=hier_bits,
            single_bits=single_bits,
            relative_gap=gap,
            hier_params=count_parameters(build_model(hier_config)),
            single_params=count_parameters(build_model(single)),
        )
    raise ValueError(
        f"no single-level config within tolerance ({tolerance}) of {hier_bits} bits at image_size "
        f"({height}x{width}); tried: {'; '.join(tried)}"
    )

"""Capacity accounting: bits per image, parameter splits, and equal-bits single-level matching."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vqstudy.images.capacity import bits_per_sample, count_parameters, latent_grids, match_single_level
from vqstudy.quantize import QuantizerConfig
from vqstudy.images.models import HierarchicalVQVAEConfig, VQVAEConfig, build_model


def hier(top_k: int = 512, bottom_k: int = 512, **kwargs) -> HierarchicalVQVAEConfig:
    base = dict(channels=8, n_res_blocks=1, top_latent_dim=8, bottom_latent_dim=8)
    return HierarchicalVQVAEConfig(
        **{**base, **kwargs}, top=QuantizerConfig(codebook_size=top_k), bottom=QuantizerConfig(codebook_size=bottom_k)
    )


def test_vqvae2_reference_has_46080_bits() -> None:
    cfg = hier()  # 256 px, bottom /4 -> 64x64, top /8 -> 32x32, 512 codes each
    assert latent_grids(cfg, 256) == {"top": (32, 32), "bottom": (64, 64)}
    bits = bits_per_sample(cfg, 256)
    assert bits == 32 * 32 * 9 + 64 * 64 * 9 == 46080 and isinstance(bits, int)


def test_bits_follow_grid_cells_and_log2_k() -> None:
    single = VQVAEConfig(downsample=8, quantizer=QuantizerConfig(codebook_size=1000))
    assert latent_grids(single, (64, 32)) == {"code": (8, 4)}
    assert bits_per_sample(single, (64, 32)) == pytest.approx(8 * 4 * math.log2(1000), rel=1e-12)
    doubled = dataclasses.replace(single, quantizer=dataclasses.replace(single.quantizer, codebook_size=1000**2))
    assert bits_per_sample(doubled, (64, 32)) == pytest.approx(2 * bits_per_sample(single, (64, 32)))
    assert bits_per_sample(hier(), 128) * 4 == bits_per_sample(hier(), 256)  # bits scale with area


def test_reference_matches_f4_with_k2435() -> None:
    match = match_single_level(hier(), 256)
    cfg = match.single_config
    assert (cfg.downsample, cfg.quantizer.codebook_size) == (4, 2435)  # log2 K = 46080 / 64^2 = 11.25
    assert match.hier_bits == 46080
    assert match.single_bits == pytest.approx(bits_per_sample(cfg, 256))
    assert abs(match.relative_gap) <= 0.005
    cells = 64 * 64  # 2435 is the integer K nearest to the target
    for k in (2434, 2436):
        assert abs(cells * math.log2(k) - 46080) > abs(match.single_bits - 46080)


@pytest.mark.parametrize(
    ("top_k", "bottom_k", "image_size"),
    [(512, 512, 64), (16, 16, 16), (64, 1024, 32), (3, 700, (32, 64)), (1024, 8, 64)],
)
def test_matched_configs_are_within_half_a_percent(top_k: int, bottom_k: int, image_size) -> None:
    h = hier(top_k, bottom_k)
    match = match_single_level(h, image_size)
    single = match.single_config
    assert abs(bits_per_sample(single, image_size) - bits_per_sample(h, image_size)) <= 0.005 * match.hier_bits
    assert match.relative_gap == pytest.approx((match.single_bits - match.hier_bits) / match.hier_bits)
    assert single.quantizer == dataclasses.replace(h.bottom, codebook_size=single.quantizer.codebook_size)
    assert (single.channels, single.latent_dim) == (h.channels, h.bottom_latent_dim)
    assert match.hier_params == count_parameters(build_model(h))
    assert match.single_params == count_parameters(build_model(single))


def test_matching_tries_other_factors_when_the_bottom_one_cannot_hit() -> None:
    h = hier(2, 2)  # 16 px: 2x2 top + 4x4 bottom binary codes = 20 bits
    assert bits_per_sample(h, 16) == 20
    match = match_single_level(h, 16)  # f=4: 16 cells x log2 K jumps 16 -> 25.4 bits; f=8: 4 cells x log2 32
    assert (match.single_config.downsample, match.single_config.quantizer.codebook_size) == (8, 32)
    assert match.relative_gap == 0
    with pytest.raises(ValueError, match=r"no single-level config .* f=4: nearest K=2"):
        match_single_level(h, 16, downsample=4)


def test_parameter_split_counts_quantizers_apart() -> None:
    q = QuantizerConfig(codebook_size=16, update="grad", codebook_dim=4)
    model = build_model(VQVAEConfig(channels=8, n_res_blocks=1, latent_dim=8, quantizer=q))
    counts = count_parameters(model)
    net = sum(p.numel() for m in (model.encoder, model.decoder) for p in m.parameters())
    in_out = 2 * (8 * 4) + 4 + 8  # Linear(8 -> 4) and Linear(4 -> 8) with biases
    assert counts.network == net
    assert counts.quantizer == 16 * 4 + in_out
    assert counts.total == sum(p.numel() for p in model.parameters()) == net + counts.quantizer
    assert counts.codebook == 16 * 4
    ema = count_parameters(build_model(hier(16, 32)))  # EMA codebooks are buffers, not parameters
    assert ema.quantizer == 0 and ema.codebook == (16 + 32) * 8


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: bits_per_sample(hier(), 20), r"image_size \(20x20\) .* \(8\) of level 'top'"),
        (lambda: bits_per_sample(VQVAEConfig(downsample=16), (32, 40)), r"image_size \(32x40\) .* \(16\)"),
        (lambda: bits_per_sample(hier(), 0), r"image_size \(0\)"),
        (lambda: VQVAEConfig(downsample=12), r"VQVAEConfig.downsample \(12\) must be a power of two"),
        (lambda: hier(top_downsample=3), r"HierarchicalVQVAEConfig.top_downsample \(3\)"),
        (lambda: match_single_level(hier(), 256, downsample=3), r"downsample \(3\) must be a power of two"),
        (lambda: match_single_level(hier(), 256, tolerance=-1.0), r"tolerance \(-1.0\)"),
    ],
)
def test_bad_inputs_raise_naming_field_and_value(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_matched_model_codes_have_the_counted_grid() -> None:
    match = match_single_level(hier(16, 16), 16)
    model = build_model(match.single_config).eval()
    with torch.no_grad():
        codes = model.encode(torch.rand(2, 3, 16, 16))["code"]
    h, w = latent_grids(match.single_config, 16)["code"]
    assert codes.shape == (2, h, w)
    assert int(codes.max()) < match.single_config.quantizer.codebook_size

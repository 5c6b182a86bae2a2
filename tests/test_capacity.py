"""Capacity accounting: bits per image, parameter splits, and equal-bits single-level matching."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vqstudy.images.capacity import bits_per_sample, count_parameters, latent_grids, match_single_level
from vqstudy.quantize import QuantizerConfig
from vqstudy.images.config import HierarchicalVQVAEConfig, VQVAEConfig
from vqstudy.images.models import build_model


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
    ("top_k", "bottom_k", "image_size", "hier_bits", "single_k"),
    [
        # Worked by hand (top grid = image / 8, bottom = image / 4; the twin keeps f=4):
        # 64 px: 8x8 x 9 + 16x16 x 9 = 576 + 2304 = 2880 bits; 2880 / 256 cells = 11.25 -> 2^11.25 = 2435.5;
        #        256 log2(2435) = 2879.92 beats 256 log2(2436) = 2880.08
        (512, 512, 64, 2880, 2435),
        # 16 px: 2x2 x 4 + 4x4 x 4 = 80 bits = 16 cells x 5 bits -> K = 32 exactly
        (16, 16, 16, 80, 32),
        # 32 px: 4x4 x 6 + 8x8 x 10 = 96 + 640 = 736; 736 / 64 = 11.5 -> 2^11.5 = 2896.3 -> 2896
        (64, 1024, 32, 736, 2896),
        # 32x64 px: 4x8 x log2 3 + 8x16 x log2 700 = 50.72 + 1209.75 = 1260.47; / 128 = 9.847 -> 2^9.847 = 921.3 -> 921
        (3, 700, (32, 64), 32 * math.log2(3) + 128 * math.log2(700), 921),
        # 64 px: 8x8 x 10 + 16x16 x 3 = 640 + 768 = 1408; / 256 = 5.5 -> 2^5.5 = 45.25; 45: -0.15%, 46: +0.43% -> 45
        (1024, 8, 64, 1408, 45),
    ],
)
def test_matched_configs_agree_with_hand_worked_numbers(top_k, bottom_k, image_size, hier_bits, single_k) -> None:
    h = hier(top_k, bottom_k)
    match = match_single_level(h, image_size)
    single = match.single_config
    assert match.hier_bits == pytest.approx(hier_bits, rel=1e-12)
    assert (single.downsample, single.quantizer.codebook_size) == (4, single_k)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    hand_single_bits = (height // 4) * (width // 4) * math.log2(single_k)
    assert match.single_bits == pytest.approx(hand_single_bits, rel=1e-12)
    assert abs(hand_single_bits - hier_bits) <= 0.005 * hier_bits
    assert single.quantizer == dataclasses.replace(h.bottom, codebook_size=single_k)
    assert (single.channels, single.latent_dim) == (h.channels, h.bottom_latent_dim)
    assert match.hier_params == count_parameters(build_model(h))
    assert match.single_params == count_parameters(build_model(single))


def test_vqvae2_reference_twin_is_within_0_003_percent_by_hand() -> None:
    """46,080 bits at 256 px (32x32 x 9 + 64x64 x 9); the f=4 twin: 4096 cells x log2(2435) = 46,078.8 bits."""
    match = match_single_level(hier(), 256)
    assert match.hier_bits == 46080
    assert match.single_config.quantizer.codebook_size == 2435
    assert match.single_bits == pytest.approx(46078.8, abs=0.1)
    assert abs(match.relative_gap) < 3e-5


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

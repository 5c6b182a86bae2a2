"""Image VQ-VAEs: gradients reach every parameter, codes decode to the forward output, grids line up."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vqstudy.config import from_dict, to_dict
from vqstudy.quantize import QuantizerConfig
from vqstudy.images import HierarchicalVQVAE, HierarchicalVQVAEConfig, VQVAE, VQVAEConfig, build_model

QUANTIZERS = {
    "ema": dict(update="ema"),
    "grad": dict(update="grad"),
    "grad-lowdim-cosine": dict(update="grad", codebook_dim=4, cosine=True),
    "ema-kmeans-reset": dict(
        update="ema", kmeans_init=True, kmeans_samples=16, kmeans_max_steps=2, dead_code_reset=True, reset_every=1
    ),
}


def tiny_quantizer(**overrides) -> QuantizerConfig:
    base = dict(dim=8, codebook_size=16, kmeans_init=False, dead_code_reset=False)
    return QuantizerConfig(**{**base, **overrides})


def tiny_config(kind: str, **quantizer_overrides) -> VQVAEConfig | HierarchicalVQVAEConfig:
    q = tiny_quantizer(**quantizer_overrides)
    if kind == "vqvae":
        return VQVAEConfig(channels=8, n_res_blocks=1, downsample=4, latent_dim=8, quantizer=q)
    return HierarchicalVQVAEConfig(
        channels=8, n_res_blocks=1, top_latent_dim=8, bottom_latent_dim=8, top=q, bottom=dataclasses.replace(q, seed=1)
    )


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.parametrize("kind", ["vqvae", "hierarchical"])
def test_every_parameter_gets_a_gradient(kind: str, quantizer: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(kind, **QUANTIZERS[quantizer])).train()
    out = model(images)
    (F.mse_loss(out.recon, images) + out.quant_loss).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"
    if QUANTIZERS[quantizer]["update"] == "grad":
        assert any("codebook" in name for name, _ in model.named_parameters()), "grad mode must train the codebook"


@pytest.mark.slow  # importing vector-quantize-pytorch takes ~2 s
def test_vqp_backend_trains_end_to_end(images: torch.Tensor) -> None:
    pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    model = build_model(tiny_config("hierarchical", backend="vqp")).train()
    out = model(images)
    (F.mse_loss(out.recon, images) + out.quant_loss).backward()
    network = [p for n, p in model.named_parameters() if not n.startswith("quantizers.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.decode_indices(model.encode(images)), model(images).recon)


@pytest.mark.parametrize("quantizer", ["ema", "grad-lowdim-cosine", "ema-kmeans-reset"])
@pytest.mark.parametrize("kind", ["vqvae", "hierarchical"])
def test_decoding_codes_reproduces_forward_in_eval(kind: str, quantizer: str, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(kind, **QUANTIZERS[quantizer]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # move the codebooks away from their initial state first
        out = model(images)
        opt.zero_grad()
        (F.mse_loss(out.recon, images) + out.quant_loss).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
        codes = model.encode(images)
        assert codes.keys() == out.indices.keys() == set(model.level_names)
        for name in model.level_names:
            assert torch.equal(codes[name], out.indices[name])
        torch.testing.assert_close(model.decode_indices(codes), out.recon)
        for name in model.level_names:  # every level's codes matter to the image
            vectors = model.quantizers[name].codebook_vectors()  # (K, D)
            farthest = torch.cdist(vectors, vectors).argmax(dim=1)  # (K,)
            changed = {**codes, name: farthest[codes[name]]}
            assert (model.decode_indices(changed) - out.recon).abs().max() > 0, f"level {name} is ignored"


def test_hierarchical_grids_are_quarter_and_eighth_and_aligned() -> None:
    torch.manual_seed(0)
    model = HierarchicalVQVAE(tiny_config("hierarchical")).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        codes = model.encode(x)
        assert codes["bottom"].shape == (2, 8, 8) and codes["top"].shape == (2, 4, 4)
        base = model.decode_indices(codes)
        top = codes["top"].clone()
        top[:, 0, 0] = (top[:, 0, 0] + 1) % 16  # one top code covers the top-left 8x8 pixels
        diff = (model.decode_indices({**codes, "top": top}) - base).abs()  # (B, C, 32, 32)
    assert diff[..., :8, :8].amax() > 1e-4, "the top-left top code must change the top-left pixels"
    assert diff[..., 24:, 24:].amax() == 0, "the top-left top code must not reach the far corner"


def test_bottom_codes_are_conditioned_on_the_top_level(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = HierarchicalVQVAE(tiny_config("hierarchical")).eval()
    with torch.no_grad():
        before = model.encode(images)
        for p in model.top_decoder.parameters():  # the top decoder feeds only the bottom quantizer's input
            p.mul_(-3.0)
        after = model.encode(images)
    assert torch.equal(before["top"], after["top"])
    assert not torch.equal(before["bottom"], after["bottom"])


def test_sigmoid_output_is_sigmoid_of_identity_output(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    cfg = tiny_config("vqvae")
    squashed = VQVAE(cfg).eval()
    raw = VQVAE(dataclasses.replace(cfg, output_activation="identity")).eval()
    raw.load_state_dict(squashed.state_dict())
    with torch.no_grad():
        recon = squashed(images).recon
        torch.testing.assert_close(recon, torch.sigmoid(raw(images).recon))
    assert 0 <= recon.min() and recon.max() <= 1


def test_metrics_are_namespaced_per_level(images: torch.Tensor) -> None:
    model = build_model(tiny_config("hierarchical")).eval()
    with torch.no_grad():
        metrics = model(images).metrics("val")
    assert {"val/quant_loss", "val/top/utilization", "val/bottom/perplexity"} <= metrics.keys()
    for level, grid in (("top", 2 * 2 * 2), ("bottom", 2 * 4 * 4)):
        used = metrics[f"val/{level}/utilization"] * 16
        assert 1 <= used <= min(grid, 16), f"{level}: {used} codes used out of {grid} cells"


@pytest.mark.parametrize(
    ("kind", "shape", "match"),
    [
        ("vqvae", (2, 3, 18, 16), r"18x16 .* factor 4"),
        ("hierarchical", (2, 3, 12, 12), r"12x12 .* factor 8"),
        ("vqvae", (2, 1, 16, 16), r"\(B, 3, H, W\)"),
    ],
)
def test_bad_images_raise(kind: str, shape: tuple[int, ...], match: str) -> None:
    model = build_model(tiny_config(kind))
    with pytest.raises(ValueError, match=match):
        model(torch.rand(shape))


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (VQVAEConfig, dict(downsample=3), r"VQVAEConfig.downsample \(3\) must be a power of two"),
        (VQVAEConfig, dict(latent_dim=0), r"VQVAEConfig.latent_dim \(0\)"),
        (VQVAEConfig, dict(n_res_blocks=-1), r"VQVAEConfig.n_res_blocks \(-1\)"),
        (VQVAEConfig, dict(output_activation="tanh"), r"output_activation \('tanh'\)"),
        (VQVAEConfig, dict(latent_dim=4, quantizer=QuantizerConfig(codebook_dim=8)), r"codebook_dim \(8\)"),
        (HierarchicalVQVAEConfig, dict(top_downsample=1), r"top_downsample \(1\) must be a power of two >= 2"),
        (HierarchicalVQVAEConfig, dict(bottom_downsample=6), r"bottom_downsample \(6\)"),
        (HierarchicalVQVAEConfig, dict(top="big"), r"HierarchicalVQVAEConfig.top \('big'\)"),
    ],
)
def test_bad_configs_raise_naming_field_and_value(cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_quantizer_dim_is_the_latent_width_and_yaml_dicts_round_trip() -> None:
    cfg = from_dict(
        HierarchicalVQVAEConfig,
        {"top_latent_dim": 8, "bottom_latent_dim": 16, "top": {"codebook_size": 32}, "bottom": {"update": "grad"}},
    )
    assert (cfg.top.dim, cfg.bottom.dim) == (8, 16)
    assert (cfg.top.codebook_size, cfg.bottom.update) == (32, "grad")
    assert from_dict(HierarchicalVQVAEConfig, to_dict(cfg)) == cfg
    assert VQVAEConfig(latent_dim=8, quantizer=QuantizerConfig(dim=64)).quantizer.dim == 8


def test_build_model_dispatches_and_rejects_other_configs() -> None:
    assert type(build_model(tiny_config("vqvae"))) is VQVAE
    assert type(build_model(tiny_config("hierarchical"))) is HierarchicalVQVAE
    with pytest.raises(TypeError, match="QuantizerConfig"):
        build_model(tiny_quantizer())


@pytest.mark.slow
def test_training_reduces_reconstruction_error(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config("hierarchical", update="grad"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        out = model(images)
        recon = F.mse_loss(out.recon, images)
        opt.zero_grad()
        (recon + out.quant_loss).backward()
        opt.step()
        losses.append(recon.item())
    assert losses[-1] < 0.7 * losses[0], f"recon MSE {losses[0]:.4f} -> {losses[-1]:.4f}"


# -------------------------------------------------------------------- issue 8: wide latents, saved weights
def test_wide_latent_with_wide_code_dim_builds_from_yaml_and_overrides() -> None:
    """Issue 8.1: the nested quantizer used to be validated with the default dim (64) before the latent width."""
    from vqstudy.config import parse_overrides
    from vqstudy.images.pair import load_pair_config

    single = from_dict(VQVAEConfig, {"latent_dim": 256, "quantizer": {"codebook_dim": 128}})
    assert (single.quantizer.dim, single.quantizer.codebook_dim) == (256, 128)
    assert type(single.quantizer) is QuantizerConfig
    hier = from_dict(HierarchicalVQVAEConfig, {"bottom_latent_dim": 256, "top_latent_dim": 96,
                                               "bottom": {"codebook_dim": 128}, "top": {"codebook_dim": 96}})
    assert (hier.bottom.dim, hier.bottom.codebook_dim, hier.top.dim, hier.top.codebook_dim) == (256, 128, 96, 96)
    pair = load_pair_config(None, parse_overrides(["hierarchical.bottom_latent_dim=256",
                                                   "hierarchical.bottom.codebook_dim=128"]))
    assert pair.hierarchical.bottom.codebook_dim == 128
    model = build_model(from_dict(VQVAEConfig, {"latent_dim": 80, "channels": 8, "n_res_blocks": 0,
                                                "quantizer": {"codebook_dim": 72, "codebook_size": 4}}))
    assert model.quantizers["code"].config.lookup_dim == 72
    with pytest.raises(ValueError, match=r"codebook_dim \(128\) must be in \[1, dim \(64\)\]"):
        from_dict(VQVAEConfig, {"latent_dim": 64, "quantizer": {"codebook_dim": 128}})


@pytest.mark.parametrize("kind", ["vqvae", "hierarchical"])
def test_saved_model_reloads_exactly(kind: str, images: torch.Tensor, tmp_path) -> None:
    from vqstudy.images.evaluate import load_model, save_model

    model = build_model(tiny_config(kind))
    model.train()
    model(images)  # one EMA step: the codebook state differs from the fresh one
    model.eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with torch.no_grad():
        assert torch.equal(loaded(images).recon, model(images).recon)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)

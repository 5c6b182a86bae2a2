"""Action-chunk tokenizers (VQ-VAE, hierarchical, bins, FSQ, residual VQ) and fidelity metrics."""

import math

import pytest
import torch

from vqstudy.actions.metrics import ActionFidelity, chunk_bits, position_drift, speed_phases
from vqstudy.quantize import QuantizerConfig
from vqstudy.actions.baselines import (
    FSQTokenizer,
    FSQTokenizerConfig,
    ResidualVQTokenizer,
    ResidualVQTokenizerConfig,
    UniformBinConfig,
    UniformBinTokenizer,
)
from vqstudy.actions.tokenizers import (
    ActionVQConfig,
    ActionVQVAE,
    HierarchicalActionVQConfig,
    HierarchicalActionVQVAE,
)
from vqstudy.actions.train import fit_tokenizer

H, A = 8, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster and steadier


def synthetic_chunks(n: int = 256, prototypes: int = 8, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """(n, H, A) chunks: a few smooth prototype trajectories in [-1, 1] plus small noise (trivially learnable)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, H)[None, :, None]  # (1, H, 1)
    amp = torch.rand(prototypes, 1, A, generator=g) * 1.6 - 0.8
    phase = torch.rand(prototypes, 1, A, generator=g) * 3
    protos = amp * torch.sin(3 * t + phase)  # (P, H, A)
    pick = torch.randint(prototypes, (n,), generator=g)
    return (protos[pick] + noise * torch.randn(n, H, A, generator=g)).clamp(-1, 1)


def quantizer(k: int = 16) -> QuantizerConfig:
    return QuantizerConfig(codebook_size=k, kmeans_init=True, kmeans_samples=128, kmeans_max_steps=2, reset_every=10)


def make(kind: str):
    small = dict(horizon=H, action_dim=A, latent_dim=8, hidden=64)
    if kind == "vq":
        return ActionVQVAE(ActionVQConfig(num_tokens=2, quantizer=quantizer(), **small))
    if kind == "vq_conv":
        return ActionVQVAE(ActionVQConfig(num_tokens=2, encoder="conv", quantizer=quantizer(), **small))
    if kind == "hvq":
        return HierarchicalActionVQVAE(HierarchicalActionVQConfig(
            coarse_tokens=1, fine_tokens=1, coarse_quantizer=quantizer(16), fine_quantizer=quantizer(8), **small))
    if kind == "fsq":
        return FSQTokenizer(FSQTokenizerConfig(num_tokens=2, levels=(4, 4), **small))
    if kind == "rvq":
        return ResidualVQTokenizer(ResidualVQTokenizerConfig(num_tokens=1, num_quantizers=2, codebook_size=16, **small))
    raise AssertionError(kind)


LEARNED = ["vq", "vq_conv", "hvq", "fsq", "rvq"]


def roundtrip_mse(tok, x):
    return ((tok.decode(tok.encode(x)) - x) ** 2).mean().item()


@pytest.mark.parametrize("kind", LEARNED)
def test_training_improves_round_trip(kind):
    x = synthetic_chunks(n=128, prototypes=4)
    tok = make(kind).eval()
    before = roundtrip_mse(tok, x)
    losses = fit_tokenizer(tok, x, steps=100, lr=5e-3, batch_size=64).losses
    after = roundtrip_mse(tok, x)
    assert after < 0.5 * before, (before, after)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", LEARNED)
def test_ids_in_range_and_decode_reproduces_forward(kind):
    x = synthetic_chunks(64)
    tok = make(kind)
    fit_tokenizer(tok, x, steps=5)
    ids = tok.encode(x)
    assert ids.dtype == torch.int64 and ids.shape == (64, tok.num_tokens)
    for g in tok.token_groups():
        part = ids[:, g.positions]
        assert part.min() >= g.start and part.max() < g.start + g.size
    out = tok.eval()(x)
    assert torch.equal(out.indices, ids)
    torch.testing.assert_close(tok.decode(ids), out.recon, rtol=0, atol=1e-6)


def test_every_parameter_gets_a_gradient():
    tok = make("hvq").train()
    tok(synthetic_chunks(32)).loss.backward()
    missing = [n for n, p in tok.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing


def test_bits_per_chunk_nominal():
    assert make("vq").bits_per_chunk == 2 * math.log2(16)
    hvq = make("hvq")
    assert hvq.vocab_size == 16 + 8 and hvq.bits_per_chunk == math.log2(16) + math.log2(8)
    assert make("fsq").vocab_size == 16 and make("rvq").num_tokens == 2


def test_uniform_bins_error_within_half_a_bin():
    tok = UniformBinTokenizer(UniformBinConfig(horizon=H, action_dim=A, num_bins=256))
    x = torch.rand(32, H, A) * 2 - 1
    x[0, 0, 0], x[0, 0, 1] = -1.0, 1.0
    ids = tok.encode(x)
    assert ids.shape == (32, H * A) and ids.min() >= 0 and ids.max() <= 255
    assert (tok.decode(ids) - x).abs().max() <= tok.bin_width / 2 + 1e-6
    assert tok.bits_per_chunk == H * A * 8
    outside = torch.full((1, H, A), 3.0)
    assert tok.encode(outside).unique().tolist() == [255]  # clipped into the last bin
    assert fit_tokenizer(tok, x, steps=3).losses == []


def test_bins_ids_are_ordered_like_values():
    tok = UniformBinTokenizer(UniformBinConfig(horizon=1, action_dim=1, num_bins=16))
    x = torch.linspace(-0.99, 0.99, 50)[:, None, None]
    ids = tok.encode(x)[:, 0]
    assert torch.all(ids[1:] >= ids[:-1])


def test_fsq_ids_cover_the_grid_and_round_trip():
    tok = FSQTokenizer(FSQTokenizerConfig(horizon=H, action_dim=A, num_tokens=2, levels=(8, 5, 5, 5), latent_dim=8))
    ids = tok.encode(torch.randn(512, H, A))
    assert tok.vocab_size == 1000 and ids.min() >= 0 and ids.max() < 1000
    every = torch.arange(1000)
    grid = tok.fsq._indices_to_codes(every)  # (1000, 4) FSQ grid points, before the output projection
    assert grid.unique(dim=0).shape[0] == 1000  # 1000 distinct points: the ids cover the 8 x 5 x 5 x 5 grid
    assert torch.equal(tok.fsq.codes_to_indices(grid).long(), every)  # and every id round-trips
    vectors = tok.code_vectors()[0]
    assert vectors.shape == (1000, 8)
    torch.testing.assert_close(tok.decode(every.reshape(500, 2)), tok.decoder(vectors.reshape(500, 2, 8)))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="num_tokens"):
        ActionVQConfig(num_tokens=0)
    with pytest.raises(ValueError, match="coarse_stride"):
        HierarchicalActionVQConfig(horizon=8, coarse_stride=3)
    with pytest.raises(ValueError, match="levels"):
        FSQTokenizerConfig(levels=(8, 1))
    with pytest.raises(ValueError, match="low"):
        UniformBinConfig(low=1.0, high=-1.0)
    tok = make("vq")
    with pytest.raises(ValueError, match=r"\(B, 8, 4\)"):
        tok.encode(torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match=r"\[16\]"):
        tok.decode(torch.tensor([[0, 16]]))


def test_quantizer_config_from_dict_gets_latent_dim():
    cfg = ActionVQConfig(latent_dim=12, quantizer={"codebook_size": 32})
    assert cfg.quantizer.dim == 12 and cfg.quantizer.codebook_size == 32


# ------------------------------------------------------------------------------------------------
# fidelity metrics
# ------------------------------------------------------------------------------------------------


def test_drift_zero_for_perfect_decode_and_linear_for_constant_offset():
    true = torch.randn(5, H, 7)  # 5 consecutive chunks of one episode
    assert position_drift(true.clone(), true).final == 0
    offset = torch.tensor([0.03, -0.04, 0.0, 0.5, 0.5, 0.5, 1.0])  # |pos part| = 0.05; rotation/gripper ignored
    drift = position_drift(true + offset, true)
    steps = torch.arange(1, 5 * H + 1, dtype=torch.float32)
    torch.testing.assert_close(drift.per_step, 0.05 * steps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(drift.final, torch.tensor(0.05 * 5 * H), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(drift.mean, torch.tensor(0.05 * (5 * H + 1) / 2), rtol=1e-5, atol=1e-6)


def test_speed_phases_mark_the_fast_half_coarse():
    g = torch.Generator().manual_seed(1)
    t = 40
    fast = torch.zeros(t, dtype=torch.bool)
    fast[torch.randperm(t, generator=g)[: t // 2]] = True
    direction = torch.nn.functional.normalize(torch.randn(t, 3, generator=g), dim=-1)
    speed = torch.where(fast, 1.0, 0.1) * (1 + 0.05 * torch.rand(t, generator=g))
    actions = torch.cat([direction * speed[:, None], torch.randn(t, 4, generator=g)], dim=1)  # (T, 7)
    assert torch.equal(speed_phases(actions), fast)


def test_action_fidelity_splits_errors_by_phase_and_counts_gripper():
    t = 20
    true = torch.zeros(t, 7)
    true[:10, 0] = 1.0  # first half fast
    true[:, 6] = torch.where(torch.arange(t) % 2 == 0, 1.0, -1.0)
    pred = true.clone()
    pred[:10, 1] += 0.2  # error only in the coarse (fast) phase
    pred[:3, 6] *= -1  # 3 gripper sign flips
    m = ActionFidelity(7)
    m.update(pred[:12], true[:12], speed_phases(true)[:12])
    m.update(pred[12:], true[12:], speed_phases(true)[12:])
    out = m.compute()
    assert out["mse_fine"] == 0 and out["mse_coarse"] > 0
    torch.testing.assert_close(out["mse"][1], torch.tensor(0.04 * 10 / 20))
    torch.testing.assert_close(out["gripper_acc"], torch.tensor(17 / 20))
    torch.testing.assert_close(out["coarse_fraction"], torch.tensor(0.5))


def test_chunk_bits_effective_equals_nominal_only_for_uniform_usage():
    tok = make("vq")
    groups = tok.token_groups()
    uniform = torch.arange(16).repeat(2)[: 32].reshape(16, 2)  # every code equally often at every position
    bits = chunk_bits(uniform, groups, 16)
    assert bits.nominal == 8 and abs(bits.effective - 8) < 1e-4 and bits.utilization == 1
    collapsed = chunk_bits(torch.zeros(16, 2, dtype=torch.long), groups, 16)
    assert collapsed.effective == 0 and collapsed.utilization == 1 / 16


def test_wide_latent_with_wide_code_dim_builds_from_a_yaml_dict():
    """The nested quantizer dict is validated once the latent width is filled in (not against dim 64)."""
    from vqstudy.actions.registry import build_tokenizer

    tok = build_tokenizer("vq", {"latent_dim": 256, "num_tokens": 1, "quantizer": {"codebook_dim": 128, "codebook_size": 16}})
    assert (tok.config.quantizer.dim, tok.config.quantizer.codebook_dim) == (256, 128)
    with pytest.raises(ValueError, match=r"codebook_dim \(300\)"):
        build_tokenizer("vq", {"latent_dim": 256, "quantizer": {"codebook_dim": 300}})

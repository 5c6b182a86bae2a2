"""Seriation of codebooks into ordered ids, and the neighbour error that ordering is for (Spec-VLA)."""

import pytest
import torch
from scipy.stats import spearmanr

from vqstudy.quantize import QuantizerConfig
from vqstudy.actions.baselines import UniformBinConfig, UniformBinTokenizer
from vqstudy.actions.tokenizers import (
    ActionVQConfig,
    ActionVQVAE,
    HierarchicalActionVQConfig,
    HierarchicalActionVQVAE,
)
from vqstudy.actions.train import fit_tokenizer
from vqstudy.actions.ordering import (
    check_order,
    code_vectors,
    codebook_order,
    inverse_order,
    neighbour_error,
    rank_correlation,
    seriate,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster and steadier


def shuffled_line(k: int = 64, dim: int = 5, seed: int = 0):
    """Points at positions t on a random line in R^dim, shuffled; returns (vectors (K, dim), t (K,))."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(k, generator=g)
    direction = torch.randn(dim, generator=g)
    return t[:, None] * direction + 0.3 * torch.randn(dim, generator=g), t


@pytest.mark.parametrize("method", ["spectral", "greedy"])
def test_seriation_recovers_a_shuffled_line(method):
    vectors, t = shuffled_line()
    order = seriate(vectors, method=method)
    assert sorted(order.tolist()) == list(range(64))
    assert abs(spearmanr(t[order].numpy(), range(64)).statistic) > 0.99


def test_seriation_follows_a_curve_not_just_a_direction():
    t = torch.rand(60, generator=torch.Generator().manual_seed(3)) * 3.0  # arc of 3 rad: x is not monotone in t
    vectors = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    order = seriate(vectors)
    assert abs(spearmanr(t[order].numpy(), range(60)).statistic) > 0.99


def test_rank_correlation_high_for_ordered_low_for_random():
    vectors, t = shuffled_line(k=48)
    assert rank_correlation(torch.argsort(t), vectors) > 0.95
    assert rank_correlation(seriate(vectors), vectors) > 0.95
    random = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    assert abs(rank_correlation(random, vectors)) < 0.3


def test_uniform_bins_are_already_ordered():
    tok = UniformBinTokenizer(UniformBinConfig(horizon=2, action_dim=2, num_bins=32))
    assert torch.equal(codebook_order(tok), torch.arange(32))
    assert torch.equal(codebook_order(tok, space="action"), torch.arange(32))
    assert rank_correlation(torch.arange(32), code_vectors(tok)[0]) > 0.99


def test_inverse_order_and_check_order():
    order = torch.tensor([2, 0, 3, 1])
    assert torch.equal(order[inverse_order(order)], torch.arange(4))
    tok = HierarchicalActionVQVAE(HierarchicalActionVQConfig(
        horizon=4, action_dim=2, coarse_tokens=1, fine_tokens=1, latent_dim=4, hidden=16,
        coarse_quantizer=QuantizerConfig(codebook_size=4), fine_quantizer=QuantizerConfig(codebook_size=4)))
    check_order(torch.tensor([1, 0, 2, 3, 5, 4, 7, 6]), tok)
    with pytest.raises(ValueError, match="group"):
        check_order(torch.tensor([4, 1, 2, 3, 0, 5, 6, 7]), tok)  # moves a fine id into the coarse range
    with pytest.raises(ValueError, match="permutation"):
        check_order(torch.tensor([0, 0, 2, 3, 4, 5, 6, 7]), tok)
    order = codebook_order(tok)
    check_order(order, tok)


def test_neighbour_error_ordered_bins_beat_a_random_order():
    tok = UniformBinTokenizer(UniformBinConfig(horizon=4, action_dim=2, num_bins=64))
    x = torch.rand(64, 4, 2) * 2 - 1
    r = range(0, 9)
    ordered = neighbour_error(tok, x, r, ordered=True)
    random = neighbour_error(tok, x, r, order=torch.randperm(64, generator=torch.Generator().manual_seed(1)))
    assert ordered.mse[0] == 0 and random.mse[0] == 0
    assert torch.all(ordered.mse[1:] < random.mse[1:])
    assert torch.all(ordered.mse[1:] > ordered.mse[:-1])  # error grows with r when ids are ordered
    within = neighbour_error(tok, x, r, mode="within")
    assert torch.all(within.mse[1:] <= ordered.mse[1:])


def test_seriated_vq_codebook_has_smaller_neighbour_error_than_random_order():
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 8)[None, :, None]
    amp = torch.rand(512, 1, 1, generator=g) * 1.6 - 0.8
    x = amp * torch.sin(3 * t + torch.tensor([0.0, 1.0, 2.0]))  # (512, 8, 3): a 1-parameter family of chunks
    tok = ActionVQVAE(ActionVQConfig(
        horizon=8, action_dim=3, num_tokens=1, latent_dim=4, hidden=64,
        quantizer=QuantizerConfig(codebook_size=32, kmeans_init=True, kmeans_samples=256, kmeans_max_steps=4)))
    fit_tokenizer(tok, x, steps=80, lr=3e-3)
    r = range(1, 5)
    seriated = neighbour_error(tok, x, r, ordered=True)
    native = neighbour_error(tok, x, r, ordered=False)
    randoms = [neighbour_error(tok, x, r, order=torch.randperm(32, generator=torch.Generator().manual_seed(s))).mse.mean()
               for s in range(3)]
    assert seriated.mse.mean() < min(randoms)
    assert seriated.mse.mean() < native.mse.mean()
    order = codebook_order(tok)
    vectors = code_vectors(tok)[0]
    assert rank_correlation(order, vectors) > rank_correlation(torch.arange(32), vectors)

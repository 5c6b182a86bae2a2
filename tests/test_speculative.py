"""Speculative decoding with relaxed acceptance (vqstudy.policy.speculative) on small causal toy models."""

import pytest
import torch
from torch import nn

from vqstudy.policy.speculative import (
    TokenModel,
    greedy_decode,
    hand_speed,
    phase_tolerance,
    speculative_decode,
)

K, L, C = 12, 6, 5


class ToyAR(nn.Module):
    """Causal: logits of id t = A cond + sum of embeddings of ids[:t] (+ a position term)."""

    vocab_size, num_tokens = K, L

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(C, K, generator=g)
        self.emb = torch.randn(K, K, generator=g)
        self.pos = torch.randn(L, K, generator=g)

    def logits(self, cond, ids):
        b, t = ids.shape
        assert t < L, "a model over L ids is never asked past position L - 1"
        context = torch.cat([torch.zeros(b, 1, K), self.emb[ids].cumsum(dim=1)], dim=1)  # (B, t + 1, K)
        return (cond @ self.a)[:, None] + context + self.pos[: t + 1]


def test_toy_model_is_a_token_model():
    assert isinstance(ToyAR(0), TokenModel)


@pytest.mark.parametrize("gamma", [1, 2, 3, 8])
def test_r0_reproduces_the_targets_greedy_decode_exactly(gamma):
    target, draft = ToyAR(0), ToyAR(1)
    cond = torch.randn(32, C)
    greedy, passes = greedy_decode(target, cond)
    spec = speculative_decode(target, draft, cond, gamma=gamma, r=0)
    assert torch.equal(spec.ids, greedy)
    assert passes == L


def test_a_draft_identical_to_the_target_is_accepted_in_full():
    target = ToyAR(0)
    cond = torch.randn(16, C)
    spec = speculative_decode(target, target, cond, gamma=3, r=0)
    assert torch.equal(spec.ids, greedy_decode(target, cond)[0])
    # rounds of 3 drafted + 1 free target id: L = 6 -> 2 rounds (3 + 1, then 2 accepted)
    assert spec.rounds.tolist() == [2] * 16 and spec.accepted.tolist() == [5] * 16
    assert spec.target_passes == 2 < L


def test_relaxed_acceptance_accepts_more_and_never_leaves_the_id_range():
    target, draft = ToyAR(0), ToyAR(1)
    cond = torch.randn(64, C)
    exact = speculative_decode(target, draft, cond, gamma=4, r=0)
    loose = speculative_decode(target, draft, cond, gamma=4, r=K)  # every draft id within K of anything
    assert loose.accepted.sum() > exact.accepted.sum()
    assert torch.equal(loose.ids[:, :4], greedy_decode(draft, cond)[0][:, :4])  # all drafted ids were taken
    for spec in (exact, loose, speculative_decode(target, draft, cond, gamma=2, r=3)):
        assert spec.ids.min() >= 0 and spec.ids.max() < K


def test_order_changes_what_is_near():
    target, draft = ToyAR(0), ToyAR(1)
    cond = torch.randn(64, C)
    native = speculative_decode(target, draft, cond, gamma=4, r=1)
    shuffled = speculative_decode(target, draft, cond, gamma=4, r=1, rank=torch.randperm(K))
    assert not torch.equal(native.accepted, shuffled.accepted)
    with pytest.raises(ValueError, match="permutation"):
        speculative_decode(target, draft, cond, gamma=4, r=1, rank=torch.zeros(K, dtype=torch.long))


def test_phase_adaptive_tolerance_from_measured_hand_speed():
    obs = torch.zeros(3, 39)
    obs[0, 0] = 0.05  # moved 5 cm since the last frame: coarse
    obs[1, 0] = 0.001  # 1 mm: fine
    assert hand_speed(obs).tolist() == pytest.approx([0.05, 0.001, 0.0])
    assert phase_tolerance(hand_speed(obs), threshold=0.01, r_coarse=4).tolist() == [4, 0, 0]
    r = phase_tolerance(hand_speed(obs), 0.01, 4)
    cond = torch.randn(3, C)
    spec = speculative_decode(ToyAR(0), ToyAR(1), cond, gamma=3, r=r)
    assert torch.equal(spec.ids[1:], greedy_decode(ToyAR(0), cond)[0][1:])  # fine-phase rows: exact greedy
    with pytest.raises(ValueError, match="39"):
        hand_speed(torch.zeros(2, 4))


class ToyParallel(nn.Module):
    """Every position's logits from the condition alone, in one pass."""

    vocab_size, num_tokens = K, L

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.w = torch.randn(C, L * K, generator=torch.Generator().manual_seed(seed))

    def forward(self, cond):
        return (cond @ self.w).reshape(len(cond), L, K)


def test_parallel_draft_takes_one_pass_per_round_and_r0_is_still_greedy():
    target, draft = ToyAR(0), ToyParallel(3)
    cond = torch.randn(16, C)
    spec = speculative_decode(target, draft, cond, gamma=3, r=0)
    assert torch.equal(spec.ids, greedy_decode(target, cond)[0])
    assert spec.draft_passes == spec.target_passes  # one draft pass per verification round
    loose = speculative_decode(target, draft, cond, gamma=3, r=K)
    assert torch.equal(loose.ids[:, :3], draft(cond)[:, :3].argmax(-1))  # every drafted id accepted

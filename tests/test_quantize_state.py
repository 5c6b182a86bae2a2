"""Quantizer state that must not leak or be lost: gradients with a frozen encoder, the per-rank reservoir."""

import torch

from vqstudy import Quantizer


def test_grad_codebook_is_not_trained_through_an_input_without_grad():
    """A frozen encoder's output (no grad): the model's loss on `quantized` must not reach the codebook."""
    q = Quantizer(dim=4, codebook_size=8, update="grad", kmeans_init=False, dead_code_reset=False)
    x = torch.randn(32, 4)  # requires_grad=False
    out = q(x)
    assert not out.quantized.requires_grad  # before the fix: the code itself, with a gradient path to the codebook
    # the quantizer's own codebook loss still trains it
    q.zero_grad()
    q(x).loss.backward()
    assert torch.count_nonzero(q.codebook.grad) > 0


def test_reservoir_travels_in_the_state_dict_and_reloads_exactly():
    q = Quantizer(dim=4, codebook_size=8, kmeans_samples=16, reservoir_size=32)
    for _ in range(4):
        q(torch.randn(16, 4))
    assert q.reservoir_seen > 0
    fresh = Quantizer(dim=4, codebook_size=8, kmeans_samples=16, reservoir_size=32)
    fresh.load_state_dict(q.state_dict())
    assert fresh.reservoir_seen == q.reservoir_seen
    torch.testing.assert_close(fresh.reservoir, q.reservoir, rtol=0, atol=0)
    assert "reservoir" not in dict(q.named_buffers()), "a buffer would be overwritten by DDP's broadcast from rank 0"

"""FAST (DCT + rounding + BPE) behind the ChunkTokenizer interface: error bounded by the rounding scale, exact
save/load through ActionTokenizer, padding and truncation, errors naming the bad value."""

import math

import pytest
import torch

pytest.importorskip("tokenizers")

from vqstudy import ActionTokenizer  # noqa: E402
from vqstudy.actions.fast import FastConfig, FastTokenizer, dct_matrix  # noqa: E402
from vqstudy.actions.registry import TOKENIZER_KINDS, build_tokenizer  # noqa: E402

H, A = 8, 4


def smooth_chunks(n: int = 200, seed: int = 0) -> torch.Tensor:
    """(n, H, A) smooth chunks in [-1, 1], like normalized robot actions."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, H)[None, :, None]
    freq, phase, amp = (torch.rand(n, 1, A, generator=g) * s for s in (4.0, 6.0, 1.0))
    return (amp * torch.sin(freq * t + phase)).float()


def fitted(scale: float = 10.0, vocab_size: int = 128, max_tokens: int = 32, chunks=None) -> FastTokenizer:
    tok = FastTokenizer(FastConfig(horizon=H, action_dim=A, scale=scale, vocab_size=vocab_size, max_tokens=max_tokens))
    return tok.fit(smooth_chunks() if chunks is None else chunks)


def test_dct_is_orthonormal():
    d = dct_matrix(H)
    assert torch.allclose(d @ d.T, torch.eye(H, dtype=d.dtype), atol=1e-12)


@pytest.mark.parametrize("scale", [2.0, 10.0, 50.0])
def test_round_trip_error_is_bounded_by_the_rounding_scale(scale):
    x = smooth_chunks(seed=1)
    tok = fitted(scale=scale, vocab_size=512, max_tokens=H * A)
    ids = tok.encode(x)
    recon = tok.decode(ids)
    assert tok.truncated == 0
    err = (recon - x).double()
    half = 0.5 / scale
    # orthonormal DCT: a chunk's squared error equals its coefficients' rounding error, each <= half a step
    assert float((err ** 2).mean()) <= half ** 2 + 1e-9
    assert float(err.abs().max()) <= math.sqrt(H) * half + 1e-6
    assert ids.shape == (len(x), H * A) and ids.dtype == torch.int64


def test_finer_scale_costs_more_tokens_and_gives_less_error():
    x = smooth_chunks(seed=2)
    coarse, fine = fitted(scale=2.0, max_tokens=H * A), fitted(scale=50.0, vocab_size=512, max_tokens=H * A)
    ids_c, ids_f = coarse.encode(x), fine.encode(x)
    assert coarse.token_counts(ids_c).float().mean() < fine.token_counts(ids_f).float().mean()
    assert ((coarse.decode(ids_c) - x) ** 2).mean() > ((fine.decode(ids_f) - x) ** 2).mean()


def test_bpe_compresses_and_pads_with_the_last_id():
    tok = fitted(vocab_size=128, max_tokens=32)
    ids = tok.encode(smooth_chunks(seed=3))
    counts = tok.token_counts(ids)
    assert float(counts.float().mean()) < H * A  # merges make chunks shorter than H*A integers
    for row, c in zip(ids, counts):
        assert (row[c:] == tok.pad_id).all() and (row[:c] != tok.pad_id).all()
    assert tok.pad_id == 127 and int(ids.max()) <= 127


def test_truncation_is_counted_and_decodes_to_the_low_frequencies():
    x = smooth_chunks(seed=4)
    full, cut = fitted(max_tokens=H * A), fitted(max_tokens=2)
    recon = cut.decode(cut.encode(x))
    assert cut.truncated > 0 and recon.shape == x.shape
    assert ((recon - x) ** 2).mean() > ((full.decode(full.encode(x)) - x) ** 2).mean()


def test_all_pad_ids_decode_to_zero_chunks():
    tok = fitted()
    ids = torch.full((2, tok.num_tokens), tok.pad_id)
    assert torch.equal(tok.decode(ids), torch.zeros(2, H, A))


def test_save_load_through_action_tokenizer_is_exact(tmp_path):
    tok = build_tokenizer("fast", {"horizon": H, "action_dim": A, "vocab_size": 128, "max_tokens": 24})
    tok.fit(smooth_chunks())
    x = smooth_chunks(50, seed=5)
    a = ActionTokenizer(tok, id_mode="offset", token_offset=1000)
    a.save_pretrained(tmp_path / "fast")
    assert not list((tmp_path / "fast").glob("*.pt")) and not list((tmp_path / "fast").glob("*.bin"))
    b = ActionTokenizer.from_pretrained(tmp_path / "fast")
    assert isinstance(b.tokenizer, FastTokenizer) and "fast" in TOKENIZER_KINDS
    ids = a.encode(x)
    assert torch.equal(b.encode(x), ids)
    torch.testing.assert_close(b.decode(ids), a.decode(ids), atol=0, rtol=0)
    assert torch.equal(b.tokenizer.bpe_json, tok.bpe_json) and torch.equal(b.tokenizer.alphabet, tok.alphabet)


def test_unfitted_tokenizer_refuses_to_encode():
    tok = FastTokenizer(FastConfig(horizon=H, action_dim=A))
    with pytest.raises(RuntimeError, match="not fitted"):
        tok.encode(smooth_chunks(4))


@pytest.mark.parametrize("fields, match", [
    ({"scale": 0.0}, r"scale \(0.0\)"),
    ({"vocab_size": 2}, r"vocab_size \(2\)"),
    ({"max_tokens": 0}, r"max_tokens \(0\)"),
])
def test_bad_config_names_field_and_value(fields, match):
    with pytest.raises(ValueError, match=match):
        FastConfig(horizon=H, action_dim=A, **fields)


def test_bad_inputs_raise_naming_the_problem():
    tok = fitted()
    with pytest.raises(ValueError, match=r"shape \(B, 8, 4\)"):
        tok.encode(torch.zeros(3, H, A + 1))
    bad = smooth_chunks(3)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        tok.encode(bad)
    with pytest.raises(ValueError, match=r"must lie in \[0, 128\)"):
        tok.decode(torch.full((1, tok.num_tokens), 128))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(torch.zeros(1, tok.num_tokens))


def test_vocab_too_small_for_the_alphabet_is_refused():
    tok = FastTokenizer(FastConfig(horizon=H, action_dim=A, scale=100.0, vocab_size=16))
    with pytest.raises(ValueError, match=r"vocab_size \(16\) must exceed"):
        tok.fit(smooth_chunks())


def test_id_orders_do_not_apply():
    with pytest.raises(ValueError, match="order"):
        fitted().code_vectors()


def test_the_one_training_loop_fits_fast():
    from vqstudy.actions.train import fit_tokenizer

    tok = build_tokenizer("fast", {"horizon": H, "action_dim": A, "vocab_size": 128})
    assert not tok.fitted
    fit = fit_tokenizer(tok, smooth_chunks(), steps=5)
    assert tok.fitted and fit.losses == [] and fit.curve[-1].recon_mse < 0.01

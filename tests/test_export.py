"""ActionTokenizer: normalization, language-model id mapping, ordering, and safe exact save/load."""

import json

import pytest
import torch

from vqstudy.actions.metrics import evaluate_episodes
from vqstudy.quantize import QuantizerConfig
from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.actions.export import CONFIG_FILE, WEIGHTS_FILE, ActionTokenizer
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

H, A = 4, 4  # 3 position deltas + gripper


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster and steadier


def raw_actions(n: int = 128, seed: int = 0) -> torch.Tensor:
    """(n, H, A) chunks in 'original units': small position deltas and a binary gripper."""
    g = torch.Generator().manual_seed(seed)
    pos = 0.05 * torch.randn(n, 1, 3, generator=g) + 0.01 * torch.randn(n, H, 3, generator=g)
    grip = torch.where(torch.rand(n, 1, 1, generator=g) < 0.5, -1.0, 1.0).expand(n, H, 1)
    return torch.cat([pos, grip], dim=-1)


def normalizer() -> QuantileNormalizer:
    return QuantileNormalizer().fit(raw_actions(512, seed=1).reshape(-1, A), gripper_dims=(3,))


def make(kind: str):
    small = dict(horizon=H, action_dim=A, latent_dim=4, hidden=32)
    q = QuantizerConfig(codebook_size=16, kmeans_init=True, kmeans_samples=64, kmeans_max_steps=2)
    if kind == "vq":
        return ActionVQVAE(ActionVQConfig(num_tokens=2, quantizer=q, **small))
    if kind == "hvq":
        return HierarchicalActionVQVAE(HierarchicalActionVQConfig(
            coarse_tokens=1, fine_tokens=2, coarse_stride=2, coarse_quantizer=q,
            fine_quantizer=QuantizerConfig(codebook_size=8, update="grad"), **small))
    if kind == "bins":
        return UniformBinTokenizer(UniformBinConfig(horizon=H, action_dim=A, num_bins=32))
    if kind == "fsq":
        return FSQTokenizer(FSQTokenizerConfig(num_tokens=2, levels=(5, 3), **small))
    if kind == "rvq":
        return ResidualVQTokenizer(ResidualVQTokenizerConfig(num_tokens=1, num_quantizers=2, codebook_size=16, **small))
    raise AssertionError(kind)


def trained(kind: str, **kwargs) -> ActionTokenizer:
    tok = make(kind)
    norm = normalizer()
    fit_tokenizer(tok, norm.normalize(raw_actions(256)), steps=6, batch_size=32)
    return ActionTokenizer(tok, norm, **kwargs)


KINDS = ["vq", "hvq", "bins", "fsq", "rvq"]


# ------------------------------------------------------------------------------------------------
# id mapping
# ------------------------------------------------------------------------------------------------


def test_offset_ids_are_codes_shifted():
    tok = trained("vq", token_offset=1000)
    x = raw_actions(16)
    codes = tok.tokenizer.encode(tok.normalizer.normalize(x))
    ids = tok.encode(x)
    assert torch.equal(ids, codes + 1000) and tok.id_range == (1000, 1016)
    assert torch.equal(tok.codes_from_ids(ids), codes)
    torch.testing.assert_close(tok.decode(ids), tok.normalizer.unnormalize(tok.tokenizer.decode(codes)), rtol=0, atol=0)


def test_last_n_ids_count_down_from_the_end_of_the_vocabulary():
    tok = trained("bins", id_mode="last_n", lm_vocab_size=32000)
    x = raw_actions(16)
    codes = tok.tokenizer.encode(tok.normalizer.normalize(x))
    ids = tok.encode(x)
    assert torch.equal(ids, 31999 - codes) and tok.id_range == (32000 - 32, 32000)
    assert torch.equal(tok.encode(tok.decode(ids)), ids)  # bin centres re-encode to the same bins
    assert (tok.decode(ids)[..., 3] == x[..., 3]).all()  # gripper survives exactly


@pytest.mark.parametrize("mode,kwargs,bad,valid", [
    ("offset", dict(token_offset=100), [99, 116], r"\[100, 115\]"),
    ("last_n", dict(id_mode="last_n", lm_vocab_size=500), [483, 500], r"\[484, 499\]"),
])
def test_decode_refuses_out_of_range_ids_naming_them(mode, kwargs, bad, valid):
    tok = trained("vq", **kwargs)
    ids = tok.encode(raw_actions(3))
    ids[0, 0], ids[2, 1] = bad
    with pytest.raises(ValueError, match=valid) as err:
        tok.decode(ids)
    assert str(bad[0]) in str(err.value) and str(bad[1]) in str(err.value)


def test_hierarchical_refuses_a_fine_id_at_a_coarse_position():
    tok = trained("hvq", token_offset=10)
    ids = tok.encode(raw_actions(2))
    ids[0, 0] = ids[0, 1]  # a fine id (>= 10 + 16) in the coarse slot
    with pytest.raises(ValueError, match=r"positions \[0, 1\)"):
        tok.decode(ids)


def test_bad_mapping_arguments():
    with pytest.raises(ValueError, match="lm_vocab_size"):
        ActionTokenizer(make("vq"), id_mode="last_n")
    with pytest.raises(ValueError, match="lm_vocab_size"):
        ActionTokenizer(make("vq"), token_offset=10, lm_vocab_size=20)
    with pytest.raises(ValueError, match="id_mode"):
        ActionTokenizer(make("vq"), id_mode="first_n")


def test_ordering_is_applied_inside_and_undone_by_decode():
    plain = trained("vq")
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    ordered = ActionTokenizer(plain.tokenizer, plain.normalizer, order=order)
    x = raw_actions(32)
    assert torch.equal(order[ordered.encode(x)], plain.encode(x))
    assert torch.equal(ordered.decode(ordered.encode(x)), plain.decode(plain.encode(x)))


# ------------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_is_exact(kind, tmp_path):
    tok = trained(kind, id_mode="last_n", lm_vocab_size=4096, order="seriate")
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    torch.manual_seed(123)  # a fresh model would differ: loading must overwrite everything
    back = ActionTokenizer.from_pretrained(tmp_path)
    assert type(back.tokenizer) is type(tok.tokenizer) and back.tokenizer.config == tok.tokenizer.config
    a, b = tok.tokenizer.state_dict(), back.tokenizer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(back.order, tok.order)
    assert all(torch.equal(v, back.normalizer.state_dict()[k]) for k, v in tok.normalizer.state_dict().items())
    x = raw_actions(32, seed=5)
    ids = tok.encode(x)
    assert torch.equal(back.encode(x), ids)
    torch.testing.assert_close(back.decode(ids), tok.decode(ids), rtol=0, atol=0)
    assert (back.id_mode, back.lm_vocab_size, back.token_offset) == ("last_n", 4096, 0)


def test_tampered_weights_are_refused(tmp_path):
    trained("vq").save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}.*sha256"):
        ActionTokenizer.from_pretrained(tmp_path)


def test_truncated_files_are_refused(tmp_path):
    trained("vq").save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{WEIGHTS_FILE}.*truncated"):
        ActionTokenizer.from_pretrained(tmp_path)
    config = tmp_path / CONFIG_FILE
    config.write_text(config.read_text()[:40])
    with pytest.raises(ValueError, match=rf"{CONFIG_FILE}.*JSON"):
        ActionTokenizer.from_pretrained(tmp_path)


def test_unknown_version_and_kind_are_refused(tmp_path):
    trained("bins").save_pretrained(tmp_path)
    config = tmp_path / CONFIG_FILE
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match=rf"{CONFIG_FILE}.*format_version 99"):
        ActionTokenizer.from_pretrained(tmp_path)
    config.write_text(json.dumps({**meta, "kind": "os.system"}))
    with pytest.raises(ValueError, match="unknown tokenizer kind 'os.system'"):
        ActionTokenizer.from_pretrained(tmp_path)
    config.write_text(json.dumps({**meta, "config": {**meta["config"], "evil": 1}}))
    with pytest.raises(ValueError, match="evil"):
        ActionTokenizer.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------
# whole-episode fidelity through the exported tokenizer
# ------------------------------------------------------------------------------------------------


def test_evaluate_episodes_on_bins():
    tok = ActionTokenizer(make("bins"), normalizer())
    g = torch.Generator().manual_seed(2)
    episodes = [torch.cat([0.05 * torch.randn(20, 3, generator=g), torch.ones(20, 1)], dim=1) for _ in range(3)]
    out = evaluate_episodes(tok, episodes)
    assert out["bits_nominal"] == H * A * 5 and 0 < out["bits_effective"] <= out["bits_nominal"]
    assert out["gripper_acc"] == 1
    assert out["mse_mean"] < 1e-3 and out["drift_final"] > 0
    assert out["mse"].shape == (A,)


def test_action_space_seriation_orders_decoded_actions_and_survives_reload(tmp_path):
    from vqstudy.actions.ordering import code_vectors, rank_correlation

    tok = trained("vq", order="seriate_action")
    native = torch.arange(tok.tokenizer.vocab_size)
    (effects,) = code_vectors(tok.tokenizer, "action")  # (K, L*H*A) each code's effect on the decoded chunk
    assert rank_correlation(tok.order, effects) > rank_correlation(native, effects) + 0.2
    tok.save_pretrained(tmp_path)
    assert torch.equal(ActionTokenizer.from_pretrained(tmp_path).order, tok.order)
    with pytest.raises(ValueError, match="seriate_action"):
        trained("vq", order="sorted")


def test_float_order_is_refused_not_truncated():
    tok = make("vq")
    k = tok.vocab_size
    with pytest.raises(ValueError, match="integer"):
        ActionTokenizer(tok, order=torch.arange(k, dtype=torch.float32) + 0.4)  # .long() would make it a valid permutation


def test_save_pretrained_writes_atomically(tmp_path, monkeypatch):
    """A save interrupted while writing the weights leaves the previous save whole and readable."""
    tok = trained("vq")
    out = tok.save_pretrained(tmp_path / "tok")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import safetensors.torch

    def torn(tensors, *args, **kwargs):
        raise KeyboardInterrupt("interrupted while serializing")

    monkeypatch.setattr(safetensors.torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        trained("vq").save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partial or temporary file left
    ActionTokenizer.from_pretrained(out)

"""The bottleneck study: encoder rungs, heads, config, and a tiny end-to-end grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vqstudy.policy.config import TokenizerSpec, load_bottleneck_config
from vqstudy.policy.data import build_bc_data
from vqstudy.policy.encoders import EncoderSpec, StateEncoder, build_encoder, linear_probe, policy_inputs
from vqstudy.policy.experiment import action_errors
from vqstudy.policy.heads import ContinuousHead, DiscreteHead, HeadConfig, train_head
from vqstudy.actions.data.episode import Episode
from vqstudy.actions.data.trajectories import TrajectoryDataConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BOTTLENECK_YAMLS = sorted(CONFIGS.glob("bottleneck_*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster and steadier


def synthetic_episodes(n_tasks: int = 2, length: int = 48, state_dim: int = 6, seed: int = 0) -> list[Episode]:
    """Episodes whose 7-D actions are a fixed linear function of a smooth random state (+ gripper = sign)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(state_dim, 6)) / math.sqrt(state_dim)
    episodes = []
    for task in range(n_tasks):
        t = np.arange(length)[:, None]
        phase = rng.uniform(0, 2 * np.pi, size=(1, state_dim))
        states = np.sin(t / 7.0 + phase) + 0.05 * rng.normal(size=(length, state_dim))  # (T, S)
        arm = 0.3 * states @ w  # (T, 6)
        grip = np.where(states[:, :1] > 0, 1.0, -1.0)  # (T, 1)
        actions = np.concatenate([arm, grip], axis=1).astype(np.float32)
        sim = np.concatenate([t * 0.05, states], axis=1).astype(np.float32)  # column 0: a sim clock
        episodes.append(Episode(actions, {"states": sim}, task=f"task{task}", source="synthetic", name=f"demo_{task}"))
    return episodes


# --- encoders ---------------------------------------------------------------------------------------


def test_noise_rung_keeps_less_than_the_clean_rung():
    x = torch.randn(400, 5)
    y = x @ torch.randn(5, 3)
    r2 = {}
    for noise in (0.0, 2.0):
        enc = StateEncoder(EncoderSpec("s", "identity", noise_std=noise), 5)
        gen = torch.Generator().manual_seed(0)
        r2[noise] = linear_probe(enc(x[:300], gen), y[:300], enc(x[300:], gen), y[300:]).r2_val
    assert r2[0.0] > 0.99
    assert r2[2.0] < r2[0.0] - 0.3


def test_random_projection_has_its_rank_and_stays_frozen():
    enc = build_encoder(EncoderSpec("rp", "random_proj", out_dim=3), torch.randn(50, 10), torch.randn(50, 4))
    feats = enc(torch.randn(50, 10))
    assert feats.shape == (50, 3)
    assert torch.linalg.matrix_rank(feats) == 3
    assert not any(p.requires_grad for p in enc.parameters())
    assert torch.equal(enc(torch.eye(10)), enc.proj)  # a fixed linear map


def test_task_only_and_identity_rungs():
    x = torch.randn(7, 4)
    assert StateEncoder(EncoderSpec("t", "task_only"), 4)(x).shape == (7, 0)
    assert torch.equal(StateEncoder(EncoderSpec("i", "identity"), 4)(x), x)
    inputs = policy_inputs(StateEncoder(EncoderSpec("t", "task_only"), 4), x, torch.tensor([0, 1, 2, 0, 1, 2, 0]), 3)
    assert torch.equal(inputs.sum(1), torch.ones(7))  # only the one-hot gets through


def test_learned_rungs_beat_random_and_narrow_rung_has_its_width():
    x = torch.randn(512, 8)
    y = torch.tanh(x @ torch.randn(8, 6))
    fit = {}
    for spec in (EncoderSpec("mlp", "mlp", out_dim=16, hidden=32, pretrain_steps=150),
                 EncoderSpec("narrow", "mlp", out_dim=1, hidden=32, pretrain_steps=150),
                 EncoderSpec("rp", "random_proj", out_dim=1)):
        enc = build_encoder(spec, x[:400], y[:400], seed=0)
        feats = enc(x)
        assert torch.linalg.matrix_rank(feats, rtol=1e-4) <= spec.out_dim
        fit[spec.name] = linear_probe(feats[:400], y[:400], feats[400:], y[400:]).r2_val
    assert fit["mlp"] > fit["narrow"] > fit["rp"] - 0.05
    assert fit["mlp"] > 0.8


# --- heads ------------------------------------------------------------------------------------------


def test_continuous_head_learns_a_linear_map():
    x = torch.randn(300, 6)
    y = (x @ torch.randn(6, 8)).reshape(300, 4, 2)
    head = ContinuousHead(6, 4, 2, HeadConfig(hidden=32, layers=1, steps=300, batch_size=64, lr=3e-3))
    train_head(head, lambda idx: x[idx], y[:250], HeadConfig(hidden=32, layers=1, steps=300, batch_size=64, lr=3e-3))
    err = ((head.predict(x[250:]) - y[250:]) ** 2).mean()
    assert err < 0.05 * y.var()


def test_discrete_head_reaches_the_tokenizer_floor():
    from vqstudy.actions.tokenizers import ActionVQConfig, ActionVQVAE
    from vqstudy.actions.train import fit_tokenizer
    from vqstudy.quantize import QuantizerConfig

    protos = torch.rand(4, 4, 2) * 2 - 1  # 4 distinct chunks (H=4, A=2)
    labels = torch.arange(200) % 4
    chunks = protos[labels] + 0.02 * torch.randn(200, 4, 2)
    tok = ActionVQVAE(ActionVQConfig(horizon=4, action_dim=2, num_tokens=1, latent_dim=4, hidden=32,
                                     quantizer=QuantizerConfig(codebook_size=8)))
    fit_tokenizer(tok, chunks, steps=150, lr=3e-3, batch_size=64)
    ids = tok.encode(chunks)
    floor = ((tok.decode(ids) - chunks) ** 2).mean()
    x = torch.nn.functional.one_hot(labels, 4).float() + 0.05 * torch.randn(200, 4)  # the state names the chunk
    cfg = HeadConfig(hidden=32, layers=1, token_dim=8, steps=150, batch_size=64, lr=1e-2)
    head = DiscreteHead(4, 1, tok.vocab_size, cfg)
    train_head(head, lambda idx: x[idx], ids, cfg)
    policy = ((tok.decode(head.predict(x)) - chunks) ** 2).mean()
    mean_baseline = ((chunks.mean(0) - chunks) ** 2).mean()
    assert policy <= floor + 0.05 * mean_baseline
    assert policy < 0.3 * mean_baseline


def test_discrete_head_masks_ids_outside_a_positions_group():
    head = DiscreteHead(3, 2, 6, HeadConfig(hidden=8, layers=1, token_dim=4), groups=[(0, 1, 0, 2), (1, 2, 2, 4)])
    ids = head.predict(torch.randn(20, 3))
    assert (ids[:, 0] < 2).all() and (ids[:, 1] >= 2).all()


def test_action_errors_in_original_units():
    true = torch.randn(6, 4, 7)
    true[..., 6] = torch.sign(true[..., 6])
    episodes = torch.tensor([0, 0, 0, 1, 1, 1])
    zero = action_errors(true.clone(), true, episodes, gripper_dim=6)
    assert zero["mse_arm"] == 0 and zero["gripper_error"] == 0
    shifted = true.clone()
    shifted[..., :6] += 0.5
    shifted[..., 6] *= -1
    err = action_errors(shifted, true, episodes, gripper_dim=6)
    assert err["mse_arm"] == pytest.approx(0.25, rel=1e-5)
    assert err["mse_coarse"] == pytest.approx(0.25, rel=1e-5) and err["mse_fine"] == pytest.approx(0.25, rel=1e-5)
    assert err["gripper_error"] == 1.0


# --- data -------------------------------------------------------------------------------------------


def test_bc_data_pads_states_drops_clock_and_keeps_splits_apart():
    eps = synthetic_episodes()
    eps[1].obs["states"] = eps[1].obs["states"][:, :4]  # a narrower task
    data = build_bc_data(TrajectoryDataConfig(horizon=8, stride=1, split="time_block", val_fraction=0.25), episodes=eps)
    assert data.state_dim == 6  # 7 columns minus the clock
    assert data.num_tasks == 2 and data.split == "time_block"
    assert int(data.train.steps.max()) + 8 <= 36 <= int(data.val.steps.min())  # no step shared by both splits
    assert torch.allclose(data.train.states.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.equal(data.normalizer.normalize(data.val.actions), data.val.chunks)


# --- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BOTTLENECK_YAMLS, ids=lambda p: p.name)
def test_every_bottleneck_yaml_parses(path):
    cfg = load_bottleneck_config(path)
    assert cfg.encoders and (cfg.continuous or cfg.tokenizers)


def test_config_merge_order_and_nested_defaults(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("data: {stride: 2}\nhead: {steps: 7}\nseeds: [4]\n")
    cfg = load_bottleneck_config(yaml_path, {"head": {"steps": 9}})
    assert cfg.data.stride == 2 and cfg.data.horizon == 32  # YAML sets one nested field, the default keeps H=32
    assert cfg.head.steps == 9 and cfg.seeds == [4]  # --set wins over YAML


@pytest.mark.parametrize("overrides, named", [
    ({"encoders": [{"name": "cnn", "kind": "cnn"}]}, "kind"),
    ({"encoders": [{"name": "a", "kind": "mlp", "noise_std": -1.0}]}, "noise_std"),
    ({"encoders": [{"name": "a", "kind": "mlp", "widht": 3}]}, "encoders[0]"),
    ({"tokenizers": [{"name": "t", "kind": "fsq", "levels": [1, 5]}]}, "levels"),
    ({"seeds": []}, "seeds"),
    ({"metric": "psnr"}, "metric"),
    ({"head": {"steps": 0}}, "steps"),
    ({"encoders": [{"name": "a", "kind": "identity"}, {"name": "a", "kind": "task_only"}]}, "repeated"),
])
def test_bad_config_values_are_named(overrides, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_bottleneck_config(None, overrides)


def test_tokenizer_spec_bits_match_oat():
    assert TokenizerSpec(levels=[8, 5, 5, 5]).vocab_size == 1000
    assert TokenizerSpec(levels=[8, 5, 5, 5]).bits_per_chunk == pytest.approx(8 * math.log2(1000))


# --- end to end -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_grid_writes_table_and_plot(tmp_path):
    from vqstudy.policy.bottleneck import run_bottleneck

    cfg = load_bottleneck_config(CONFIGS / "bottleneck_quick.yaml", {"out_dir": str(tmp_path), "head": {"steps": 200}})
    result, paths = run_bottleneck(cfg, "test", episodes=synthetic_episodes(length=64))
    for key in ("json", "csv", "table", "plot", "readme"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    payload = json.loads(paths["json"].read_text())
    heads = 1 + len(cfg.tokenizers)
    assert len(payload["rows"]) == len(cfg.seeds) * len(cfg.encoders) * heads
    agg = {(a["encoder"], a["head"]): a for a in payload["aggregate"]}
    # the state explains the actions; the task alone does not
    assert agg[("state", "continuous")]["train/mse_arm"] < agg[("task_only", "continuous")]["train/mse_arm"]
    assert agg[("state", "continuous")]["probe_r2_train"] > agg[("task_only", "continuous")]["probe_r2_train"]
    assert "floor_val/mse_arm" in agg[("state", "vq8")]
    assert "| state |" in paths["table"].read_text()


@pytest.mark.slow
def test_cli_main_on_the_robosuite_demos(tmp_path):
    from vqstudy.actions.data.robosuite import robosuite_demo_paths
    from vqstudy.cli import main

    if not all(p.is_file() for p in robosuite_demo_paths()):
        pytest.skip("robosuite demos not cached (vqstudy data fetch robosuite-demos)")
    argv = ["--config", str(CONFIGS / "bottleneck_quick.yaml"), "--set", f"out_dir={tmp_path}", "--set", "seeds=[0]",
            "--set", "tokenizers=[]", "--set", "head.steps=20"]
    assert main(["bottleneck", *argv]) == 0
    readme = (tmp_path / "README.md").read_text()
    assert "vqstudy bottleneck --config" in readme and "time_block" in readme

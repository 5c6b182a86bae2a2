"""Learned Meta-World policies (vqstudy.policy: heads, model, learn, source, grid, closed_report).

The end-to-end test records a tiny demonstration set (2 tasks x 4 expert episodes) and runs the quick
grid config through `vqstudy policy grid`, then `policy train` and `policy eval --policy` on it: the
same code path as the committed grid, sized to well under a minute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.actions.export import ActionTokenizer
from vqstudy.actions.registry import build_tokenizer
from vqstudy.policy.closed_report import bootstrap, check_claims, lifts, verdict
from vqstudy.policy.demos import DemoData, Samples, episode_samples
from vqstudy.policy.encoders import EncoderSpec
from vqstudy.policy.heads import AutoregressiveHead, FlowHead, HeadConfig, train_head
from vqstudy.policy.learn import encoder_quality, train_policy
from vqstudy.policy.model import LearnedPolicy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on a busy 2-core CPU
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = HeadConfig(hidden=16, layers=1, token_dim=4, steps=5, batch_size=8, flow_steps=2, ar_dim=4)


def tiny_data(n_episodes: int = 6, length: int = 12, horizon: int = 4, seed: int = 0) -> DemoData:
    """Synthetic 39-D observations with actions that depend on the hand position."""
    rng = np.random.default_rng(seed)

    def split(first: int, count: int) -> Samples:
        obs, tasks, chunks, eps = [], [], [], []
        for e in range(first, first + count):
            o = rng.normal(size=(length, 39)).astype(np.float32)
            a = np.tanh(o[:, :4] + 0.1 * rng.normal(size=(length, 4))).astype(np.float32)
            from vqstudy.actions.data.episode import Episode

            oo, cc = episode_samples(Episode(a, {"observation.state": o}), horizon)
            obs.append(oo), chunks.append(cc), tasks.append(np.full(length, e % 2)), eps.append(np.full(length, e))
        return Samples(*(torch.from_numpy(np.concatenate(x)) for x in (obs, tasks, chunks, eps)))

    return DemoData(split(0, n_episodes), split(n_episodes, 2), ["reach-v3", "drawer-close-v3"], horizon, "synthetic")


def tiny_tokenizer(data: DemoData, k: int = 8) -> ActionTokenizer:
    chunks = data.train.chunks
    norm = QuantileNormalizer().fit(chunks.reshape(-1, 4), gripper_dims=[])
    tok = build_tokenizer("vq", {"horizon": data.horizon, "action_dim": 4, "num_tokens": 2, "latent_dim": 4,
                                 "hidden": 16, "quantizer": {"codebook_size": k}})
    return ActionTokenizer(tok.eval(), norm)


def test_episode_samples_pad_with_the_last_action():
    from vqstudy.actions.data.episode import Episode

    actions = np.arange(12, dtype=np.float32).reshape(3, 4)
    obs, chunks = episode_samples(Episode(actions, {"observation.state": np.zeros((3, 39), np.float32)}), 4)
    assert chunks.shape == (3, 4, 4)
    np.testing.assert_array_equal(chunks[0], actions[[0, 1, 2, 2]])
    np.testing.assert_array_equal(chunks[2], actions[[2, 2, 2, 2]])


def test_autoregressive_head_prefix_logits_match_teacher_forcing_and_greedy():
    torch.manual_seed(0)
    groups = [(0, 2, 0, 5), (2, 3, 5, 3)]  # positions 0-1 use ids [0, 5), position 2 ids [5, 8)
    head = AutoregressiveHead(6, 3, 8, TINY, groups).eval()
    x = torch.randn(4, 6)
    ids = torch.tensor([[1, 4, 6], [0, 0, 5], [3, 2, 7], [4, 1, 5]])
    full = head.logits(x, ids)  # (B, L, K)
    assert full.shape == (4, 3, 8)
    for j in range(3):
        torch.testing.assert_close(head.next_logits(x, ids[:, :j]), full[:, j], atol=1e-5, rtol=1e-5)
    assert torch.isinf(full[:, :2, 5:]).all() and torch.isinf(full[:, 2, :5]).all()
    greedy = head.greedy(x)
    assert ((greedy[:, :2] < 5) & (greedy[:, 2:] >= 5)).all()
    steps = head.logits(x, greedy)
    assert torch.equal(steps.argmax(-1), greedy)  # every greedy id is the argmax given its prefix
    with pytest.raises(ValueError, match="prefix length"):
        head.next_logits(x, ids)


@pytest.mark.parametrize("kind", ["flow", "ar"])
def test_new_heads_give_every_parameter_a_gradient(kind):
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    if kind == "flow":
        head, loss = FlowHead(6, 4, 4, TINY), None
        loss = head.loss(x, torch.randn(5, 4, 4))
    else:
        head = AutoregressiveHead(6, 3, 8, TINY)
        loss = head.loss(x, torch.randint(8, (5, 3)))
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_flow_head_learns_a_conditional_mapping():
    torch.manual_seed(0)
    cfg = HeadConfig(hidden=32, layers=1, steps=200, batch_size=32, lr=3e-3, flow_steps=4)
    x = torch.randn(256, 3)
    target = torch.tanh(x[:, :1, None].expand(256, 2, 2))  # (N, H, A) deterministic in x
    head = FlowHead(3, 2, 2, cfg)
    train_head(head, lambda idx: x[idx], target, cfg, seed=0)
    err = float(((head.predict(x[:64], torch.Generator().manual_seed(1)) - target[:64]) ** 2).mean())
    untrained = FlowHead(3, 2, 2, cfg).predict(x[:64], torch.Generator().manual_seed(1))
    assert err < 0.3 * float(((untrained - target[:64]) ** 2).mean()), err


def test_encoder_quality_orders_the_ladder():
    data = tiny_data(n_episodes=10, length=30)
    q = {}
    for spec in (EncoderSpec("proj1", "random_proj", out_dim=1), EncoderSpec("state", "identity"),
                 EncoderSpec("noisy", "identity", noise_std=3.0)):
        trained = train_policy(data, spec, "mlp", TINY)
        q[spec.name] = encoder_quality(trained.policy, data)["probe_r2"]
    assert q["state"] > 0.99
    assert q["proj1"] < 0.5 and q["noisy"] < 0.5


@pytest.mark.parametrize("kind", ["mlp", "flow", "parallel", "ar"])
def test_policy_save_load_is_exact(tmp_path, kind):
    data = tiny_data()
    tok = tiny_tokenizer(data) if kind in ("parallel", "ar") else None
    trained = train_policy(data, EncoderSpec("proj3", "random_proj", out_dim=3), kind, TINY, seed=1, tokenizer=tok)
    policy = trained.policy
    policy.save_pretrained(tmp_path / "p")
    loaded = LearnedPolicy.from_pretrained(tmp_path / "p")
    assert loaded.name == policy.name and loaded.task_names == policy.task_names
    for key, value in policy.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    obs = data.val.obs[:5].numpy()
    tasks = ["reach-v3", "drawer-close-v3", "reach-v3", "reach-v3", "drawer-close-v3"]
    a, b = policy.act(obs, tasks), loaded.act(obs, tasks)  # the flow head's noise stream restarts on load
    if kind != "flow":
        np.testing.assert_array_equal(a, b)
    assert a.shape == (5, data.horizon, 4) and a.dtype == np.float32
    with pytest.raises(ValueError, match="not in the policy's training data"):
        policy.act(obs[:1], ["push-v3"])
    weights = tmp_path / "p" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        LearnedPolicy.from_pretrained(tmp_path / "p")


def _rows(lift_cont: float, lift_small: float, lift_large: float, tasks: int = 10):
    rows = []
    for seed in (0, 1):
        for head, kind, k, lift in (("mlp", "mlp", None, lift_cont), ("parallel_vq16", "parallel", 16, lift_small),
                                    ("parallel_vq4096", "parallel", 4096, lift_large)):
            for rung, enc in enumerate(("poor", "full")):
                rate = 0.2 + lift * rung
                cells = {f"t{i}": [int(round(rate * 50)) + (i % 3) - 1, 50] for i in range(tasks)}
                k_tot = sum(c[0] for c in cells.values())
                rows.append({"seed": seed, "encoder": enc, "rung": rung, "head": head, "head_kind": kind,
                             "vocab_size": k, "tasks": cells, "successes": k_tot, "n": 50 * tasks})
    return rows


def test_claims_follow_planted_lifts():
    yes = {c["claim"][:2]: c["answer"] for c in check_claims(_rows(0.6, 0.0, 0.3), "parallel_vq16", n_boot=200)}
    assert yes == {"1.": "yes", "2.": "yes", "2b": "yes", "3.": "yes"}
    no = {c["claim"][:2]: c["answer"] for c in check_claims(_rows(0.0, 0.4, 0.0), "parallel_vq16", n_boot=200)}
    assert no == {"1.": "no", "2.": "no", "2b": "no", "3.": "no"}
    lf = lifts(_rows(0.6, 0.0, 0.3), n_boot=200)
    assert lf["mlp"]["lift"] == pytest.approx(0.6, abs=0.02) and lf["mlp"]["cells"] == 20


def test_bootstrap_and_verdict():
    mean, low, high = bootstrap([0.1] * 20)
    assert mean == low == high == pytest.approx(0.1)
    assert verdict(0.01, 0.2) == "yes" and verdict(-0.2, -0.01) == "no" and verdict(-0.1, 0.1) == "inconclusive"
    assert verdict(-0.01, 0.03, no_below=0.05) == "no"
    assert verdict(0.01, 0.2, cells=2).startswith("inconclusive (2 cells") and verdict(0.01, 0.2, cells=5) == "yes"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("policy_*.yaml")), ids=lambda p: p.name)
def test_policy_configs_parse(path):
    from vqstudy.policy.grid import load_grid_config
    from vqstudy.policy.learn import load_policy_config

    cfg = load_grid_config(path) if "grid" in path.name else load_policy_config(path)
    assert cfg.name


def test_grid_config_rejects_unknown_tokenizer():
    from vqstudy.policy.grid import load_grid_config

    with pytest.raises(ValueError, match="names tokenizer 'vq9'"):
        load_grid_config(CONFIGS / "policy_grid_quick.yaml",
                         {"heads": [{"name": "p", "kind": "parallel", "tokenizer": "vq9"}]})


def test_quick_grid_end_to_end(quick_demos, tmp_path, capsys):
    from vqstudy.cli import main

    out = tmp_path / "grid"
    code = main(["policy", "grid", "--config", str(CONFIGS / "policy_grid_quick.yaml"), "--set",
                 f"data.root={quick_demos}", "--set", "save_policies=true", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 + 1  # 2 rungs x 4 heads + the autoregressive head on one rung
    assert {r["n"] for r in rows} == {4} and all(0 <= r["success"] <= 1 for r in rows)
    assert rows[0]["timing"]["env_steps"] > 0
    for name in ("results.md", "results.json", "success_vs_encoder.png"):
        assert (out / name).is_file()
    text = (out / "results.md").read_text()
    assert "three lines of evidence" in text and "env steps/s" in text
    # rerun: every row is there, so nothing is trained again
    assert main(["policy", "grid", "--config", str(CONFIGS / "policy_grid_quick.yaml"), "--set",
                 f"data.root={quick_demos}", "--out", str(out)]) == 0
    assert len((out / "rows.jsonl").read_text().splitlines()) == 9

    policy_dir = out / "policies" / "0" / "state" / "ar_vq32"
    code = main(["policy", "eval", "--policy", str(policy_dir), "--tasks", "reach-v3", "--n", "2", "--max-steps", "8",
                 "--num-envs", "2", "--execute", "4", "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())[0]
    assert result["horizon"] == 4 and result["overall"]["n"] == 2


def test_policy_train_command(quick_demos, tmp_path, capsys):
    from vqstudy.cli import main

    code = main(["policy", "train", "--config", str(CONFIGS / "policy_train.yaml"), "--set", f"data.root={quick_demos}",
                 "--set", "head.steps=5", "--set", "head_kind=parallel", "--set", "tokenizer.steps=5",
                 "--set", "tokenizer.codebook_size=16", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    policy = LearnedPolicy.from_pretrained(tmp_path / "state_mlp")
    assert policy.head_kind == "parallel" and policy.tokenizer.vocab_size == 16
    assert main(["policy", "eval", "--source", "expert", "--execute", "2", "--tasks", "reach-v3", "--n", "1"]) == 2


def test_fsq_tokenizer_heads_train_and_act():
    from vqstudy.policy.config import TokenizerSpec
    from vqstudy.policy.learn import fit_action_tokenizer, fit_normalizer

    data = tiny_data()
    spec = TokenizerSpec("fsq9", "fsq", levels=[3, 3], num_tokens=2, latent_dim=4, hidden=16, steps=3, batch_size=8)
    tok = fit_action_tokenizer(spec, data.train.chunks, fit_normalizer(data.train.chunks))
    for kind in ("parallel", "ar"):
        policy = train_policy(data, EncoderSpec("state", "identity"), kind, TINY, tokenizer=tok).policy
        assert policy.tokenizer.vocab_size == 9
        assert policy.act(data.val.obs[:3].numpy(), ["reach-v3"] * 3).shape == (3, data.horizon, 4)

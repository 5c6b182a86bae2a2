"""Meta-World simulator and closed-loop harness: exact snapshots, expert success, chunked replay equal
to the expert, Wilson intervals, tokenized sources, bad inputs, and the command handlers."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="Meta-World is the optional extra: pip install 'vqstudy[sim]'")

from vqstudy import ActionTokenizer  # noqa: E402
from vqstudy.actions.baselines import UniformBinConfig, UniformBinTokenizer  # noqa: E402
from vqstudy.sim import env as sim_env  # noqa: E402
from vqstudy.sim.commands import add_data_make_parser, add_policy_eval_parser, check_disjoint  # noqa: E402
from vqstudy.sim.env import MetaWorldEnv, initial_state_seed, resolve_tasks  # noqa: E402
from vqstudy.sim.rollout import RolloutConfig, evaluate, smoothness, wilson_interval  # noqa: E402
from vqstudy.sim.sources import ExpertChunkSource, ExpertSource, TokenizedSource  # noqa: E402

REACH = RolloutConfig(["reach-v3"], n=2, seed=0, max_steps=120, num_envs=2)


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 10, 0.0, 0.27753),   # hand-computed: centre (0 + z²/20)/(1 + z²/10), half-width z sqrt(z²/400)/(1 + z²/10)
    (5, 10, 0.23659, 0.76341),
    (8, 10, 0.49016, 0.94332),
    (10, 10, 0.72247, 1.0),
    (45, 50, 0.78640, 0.95652),
])
def test_wilson_interval_against_hand_computed(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)


def test_smoothness():
    ramp = np.arange(10.0)[:, None].repeat(4, 1) / 8  # constant first difference -> zero second difference
    assert smoothness(ramp) == 0.0
    zigzag = np.array([[1.0], [-1.0], [1.0]])  # second difference 1 - 2 (-1) + 1 = 4, squared 16
    assert smoothness(zigzag) == 16.0
    assert smoothness(np.zeros((2, 4))) == 0.0


def test_snapshot_restores_exactly():
    env = MetaWorldEnv("pick-place-v3")
    obs = env.reset(7)
    for _ in range(5):
        obs = env.step(env.expert_action(obs)).obs
    snap = env.snapshot()
    reference = [obs]
    for _ in range(6):
        reference.append(env.step(env.expert_action(reference[-1])).obs)
    env.restore(snap)
    replay = [obs]
    for _ in range(6):
        replay.append(env.step(env.expert_action(replay[-1])).obs)
    np.testing.assert_array_equal(np.stack(replay), np.stack(reference))
    assert env.steps == 11


def test_same_seed_same_initial_state():
    env = MetaWorldEnv("push-v3")
    a, b = env.reset(3), env.reset(4)
    np.testing.assert_array_equal(env.reset(3), a)
    assert not np.array_equal(a, b) and a.shape == (39,)


def test_expert_succeeds_on_reach():
    result = evaluate(ExpertSource(), REACH)
    assert result.overall.successes == 2 and result.overall.ci_high == 1.0
    assert 0 < result.overall.mean_length < 120 and result.timing.env_steps == sum(e.length for e in result.episodes)
    assert 0 < result.timing.sim_fraction < 1


@pytest.mark.parametrize("horizon", [1, 4])
def test_chunked_replay_equals_expert_exactly(horizon):
    cfg = RolloutConfig(["push-v3"], n=2, seed=1, max_steps=40, num_envs=2)
    cache: dict = {}
    expert = evaluate(ExpertSource(), cfg)
    chunked = evaluate(ExpertChunkSource(horizon), cfg, env_cache=cache)
    assert chunked.episodes == expert.episodes  # same seeds, successes, lengths and smoothness, to the bit
    again = evaluate(ExpertChunkSource(horizon), cfg, env_cache=cache)  # reused simulators: still exact
    assert again.episodes == expert.episodes and len(cache["push-v3"]) == 2


def test_batches_mix_tasks_and_results_do_not_depend_on_batching():
    seen = []

    class Recording(ExpertSource):
        def __call__(self, batch):
            seen.append(batch.task_ids.tolist())
            assert batch.obs.shape == (len(batch.task_ids), 39)
            return super().__call__(batch)

    cfg = RolloutConfig(["reach-v3", "push-v3"], n=3, seed=2, max_steps=30, num_envs=2)
    cache: dict = {}
    two = evaluate(Recording(), cfg, env_cache=cache)
    assert seen[0] == [0, 0, 1, 1]  # one batch, every live simulator of every task
    three = evaluate(ExpertSource(), RolloutConfig(cfg.tasks, n=3, seed=2, max_steps=30, num_envs=3), env_cache=cache)
    assert two.episodes == three.episodes and [e.task for e in two.episodes] == ["reach-v3"] * 3 + ["push-v3"] * 3


def test_tokenized_fine_bins_follow_the_expert():
    tokenizer = ActionTokenizer(UniformBinTokenizer(UniformBinConfig(horizon=4, action_dim=4, num_bins=256)))
    source = TokenizedSource(ExpertChunkSource(4), tokenizer)
    result = evaluate(source, REACH)
    assert result.overall.successes == 2
    assert 0 < source.stats()["chunk_mse"] <= (2 / 256 / 2) ** 2  # at most half a bin width per value


def test_tokenizer_must_match_the_env():
    seven = ActionTokenizer(UniformBinTokenizer(UniformBinConfig(horizon=4, action_dim=7)))
    with pytest.raises(ValueError, match=r"tokenizer action_dim \(7\) does not match the Meta-World action dim 4"):
        TokenizedSource(ExpertChunkSource(4), seven)
    four = ActionTokenizer(UniformBinTokenizer(UniformBinConfig(horizon=8, action_dim=4)))
    with pytest.raises(ValueError, match=r"tokenizer horizon \(8\) does not match"):
        TokenizedSource(ExpertChunkSource(4), four)


def test_bad_source_output_is_named():
    class Broken:
        name, horizon = "broken", 1

        def __call__(self, batch):
            return np.zeros((len(batch.obs), 1, 7))

    with pytest.raises(ValueError, match=r"source 'broken' returned shape \(2, 1, 7\) on reach-v3"):
        evaluate(Broken(), REACH)


def test_unknown_tasks_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown Meta-World task\(s\) \['nope'\]; valid: mt10, mt50 .*door-open-v3"):
        resolve_tasks("reach-v3,nope")
    assert len(resolve_tasks("mt10")) == 10 and len(resolve_tasks("MT50")) == 50
    with pytest.raises(ValueError, match="more than once"):
        resolve_tasks("reach-v3,reach-v3")
    with pytest.raises(ValueError, match=r"n \(0\) must be an integer >= 1"):
        RolloutConfig(["reach-v3"], n=0)


def test_missing_metaworld_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)
    with pytest.raises(ImportError, match=r"pip install 'vqstudy\[sim\]'"):
        sim_env.import_metaworld()


def _root_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="vqstudy")
    sub = root.add_subparsers(dest="command", required=True)
    add_data_make_parser(sub.add_parser("data").add_subparsers(dest="action", required=True))
    add_policy_eval_parser(sub.add_parser("policy").add_subparsers(dest="action", required=True))
    return root


def test_command_handlers(tmp_path, capsys):
    root = _root_parser()
    demos = tmp_path / "demos"
    args = root.parse_args(["data", "make", "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "5",
                            "--out", str(demos)])
    assert args.func(args) == 0
    assert (demos / "meta/info.json").exists() and "1 episodes (1 failed, kept)" in capsys.readouterr().out
    out = tmp_path / "eval"
    args = root.parse_args(["policy", "eval", "--source", "expert-chunks", "--horizon", "2", "--tasks", "reach-v3",
                            "--n", "1", "--max-steps", "5", "--demos", str(demos), "--out", str(out)])
    assert args.func(args) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result[0]["source"] == "expert_chunks_h2" and result[0]["overall"]["n"] == 1
    assert "| expert_chunks_h2 | reach-v3 | 1 |" in (out / "eval.md").read_text()
    args = root.parse_args(["policy", "eval", "--source", "tokenized", "--tasks", "reach-v3"])
    with pytest.raises(ValueError, match="--tokenizer"):
        args.func(args)
    saved = ActionTokenizer(UniformBinTokenizer(UniformBinConfig(horizon=2, action_dim=4))).save_pretrained(tmp_path / "bins")
    args = root.parse_args(["policy", "eval", "--source", "tokenized", "--tokenizer", str(saved), "--horizon", "2",
                            "--tasks", "reach-v3", "--n", "1", "--max-steps", "4", "--out", str(out)])
    assert args.func(args) == 0
    assert json.loads((out / "eval.json").read_text())[0]["source"] == "expert_chunks_h2+bins"


def test_check_disjoint_refuses_shared_seeds(tmp_path):
    (tmp_path / "meta").mkdir()
    shared = initial_state_seed(0, "reach-v3", 1, "eval")
    (tmp_path / "meta" / "metaworld.json").write_text(json.dumps({"seeds": {"reach-v3": [5, shared]}}))
    with pytest.raises(ValueError, match="1 evaluation seeds are demonstration seeds"):
        check_disjoint(tmp_path, ["reach-v3"], n=2, seed=0)
    check_disjoint(tmp_path, ["reach-v3"], n=2, seed=1)
    with pytest.raises(FileNotFoundError, match="not a dataset written by"):
        check_disjoint(tmp_path / "nothing", ["reach-v3"], n=2, seed=0)

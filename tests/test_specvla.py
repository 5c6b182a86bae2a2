"""The Spec-VLA study (vqstudy.policy.specvla) end to end on a tiny recorded demonstration set."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("metaworld", reason="the Spec-VLA study runs Meta-World (pip install 'vqstudy[sim]')")

from vqstudy.policy.heads import HeadConfig  # noqa: E402
from vqstudy.policy.specvla import SpecVLAConfig, load_specvla_config, open_loop, order_ranks, run_study, train_pair  # noqa: E402
from vqstudy.policy.demos import load_demos  # noqa: E402
from vqstudy.sim.demos import make_demonstrations  # noqa: E402

TINY = HeadConfig(hidden=16, layers=1, steps=30, batch_size=32, ar_dim=4)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("specvla") / "demos"
    make_demonstrations(root, ["reach-v3"], episodes=4, seed=0, max_steps=60)
    return root


def tiny_config(demos, out, **kw) -> SpecVLAConfig:
    base = dict(demos=str(demos), out_dir=str(out), target=TINY, draft=TINY, rs=[0, 2], bins=16, n=2, max_steps=30,
                num_envs=2, timing_samples=4, gamma=2)
    base.update(kw)
    cfg = SpecVLAConfig(**base)
    cfg.vq.codebook_size, cfg.vq.num_tokens, cfg.vq.steps = 8, 2, 20
    return cfg


def test_r0_is_greedy_and_orders_are_permutations(demos, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(demos, tmp_path)
    data = load_demos(demos, cfg.horizon)
    pair = train_pair(data, "vq", cfg)
    ranks = order_ranks(pair, seed=0)
    assert set(ranks) == {"native", "seriated", "shuffled"}
    for rank in ranks.values():
        assert torch.equal(torch.sort(rank).values, torch.arange(8))
    stats = open_loop(pair, ranks["shuffled"], data.val.obs[:3].float(), ["reach-v3"] * 3, gamma=2, r=0, adaptive=None)
    assert stats["mse_vs_greedy"] == 0.0  # r = 0 decodes exactly the target's greedy chunk


def test_quick_study_writes_the_table_and_plot(demos, tmp_path):
    torch.set_num_threads(1)
    study = run_study(tiny_config(demos, tmp_path), command="test")
    rows = study["rows"]
    assert {r["tokenizer"] for r in rows} == {"vq256", "bins16"}
    assert all(0.0 <= r["success"] <= 1.0 and r["ci_low"] <= r["success"] <= r["ci_high"] for r in rows)
    assert (tmp_path / "success_vs_speedup.png").is_file()
    saved = json.loads((tmp_path / "specvla.json").read_text())
    assert not saved["partial"] and "| vq" in (tmp_path / "specvla.md").read_text()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="gamma"):
        SpecVLAConfig(gamma=0)
    with pytest.raises(ValueError, match="rs"):
        load_specvla_config(None, {"rs": [-1]})

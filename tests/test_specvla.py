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


def _study(seed: int, greedy: tuple[int, int], relaxed: tuple[int, int] | None, accepted: float) -> dict:
    rows = [{"tokenizer": "vq8", "K": 8, "L": 4, "order": "-", "r": "greedy", "successes": greedy[0], "n": greedy[1],
             "speedup_time": 1.0, "speedup_passes": 1.0, "mse_vs_greedy": 0.0, "accepted_per_round": float("nan")},
            {"tokenizer": "vq8", "K": 8, "L": 4, "order": "seriated", "r": "4", "accepted_per_round": accepted,
             "target_passes_per_chunk": 2.0, "speedup_time": 1.5, "speedup_passes": 2.0, "mse_vs_greedy": 0.01,
             **({"successes": relaxed[0], "n": relaxed[1]} if relaxed else {"successes": 0, "n": 0})}]
    return {"config": {"seed": seed}, "rows": rows, "machine": "m", "wall_seconds": 60.0, "command": "c"}


def test_merge_pools_closed_loop_seeds_and_compares_with_their_greedy_rows():
    from vqstudy.policy.specvla import merge_studies, merged_markdown

    merged = merge_studies([_study(0, (50, 100), (30, 100), 2.0), _study(1, (40, 100), None, 3.0),
                            _study(2, (60, 100), (40, 100), 2.5)])
    rows = {(r["order"], r["r"]): r for r in merged["rows"]}
    greedy, relaxed = rows["-", "greedy"], rows["seriated", "4"]
    assert (greedy["successes"], greedy["n"]) == (150, 300) and greedy["target_passes_per_chunk"] == 4
    assert (relaxed["successes"], relaxed["n"], relaxed["seeds_closed_loop"]) == (70, 200, [0, 2])
    assert relaxed["accepted_per_round"] == pytest.approx(2.5) and relaxed["accepted_per_round_range"] == [2.0, 3.0]
    # compared with the greedy rows of seeds 0 and 2 only (110/200), not seed 1's
    assert relaxed["diff_vs_greedy"] == pytest.approx(70 / 200 - 110 / 200)
    low, high = relaxed["diff_ci"]
    assert low < relaxed["diff_vs_greedy"] < high < 0  # a 20-point drop at n = 200 is detectable
    assert "| seriated | 4 | 0,2 |" in merged_markdown(merged)
    with pytest.raises(ValueError, match="each seed once"):
        merge_studies([_study(0, (1, 2), None, 1.0), _study(0, (1, 2), None, 1.0)])

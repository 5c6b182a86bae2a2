"""Meta-World demonstrations: LeRobot v3.0 round trip, same seed -> same bytes, resume, seeds, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="Meta-World is the optional extra: pip install 'vqstudy[sim]'")
pq = pytest.importorskip("pyarrow.parquet")

from vqstudy.actions.data.lerobot import load_lerobot  # noqa: E402
from vqstudy.files import sha256_file  # noqa: E402
from vqstudy.sim.demos import FPS, make_demonstrations, read_demo_seeds, split_by_episode  # noqa: E402
from vqstudy.sim.env import SPLIT_BIT, MetaWorldEnv, initial_state_seed  # noqa: E402

TINY = dict(tasks="reach-v3,push-v3", episodes=2, seed=0, max_steps=25)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demos") / "tiny"
    make_demonstrations(out, **TINY)
    return out


def test_layout_and_lerobot_round_trip(tiny):
    for rel in ("data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet", "meta/info.json",
                "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/metaworld.json"):
        assert (tiny / rel).is_file(), rel
    info = json.loads((tiny / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 4 and info["total_tasks"] == 2
    assert info["fps"] == FPS == 1 / MetaWorldEnv("reach-v3").dt
    result = load_lerobot(tiny)
    assert not result.skipped and [e.task for e in result.episodes] == ["reach-v3"] * 2 + ["push-v3"] * 2
    rows = pq.read_table(tiny / "data/chunk-000/file-001.parquet").to_pylist()
    episode = result.episodes[2]
    np.testing.assert_array_equal(episode.actions, [r["action"] for r in rows if r["episode_index"] == 2])
    state = episode.obs["observation.state"]
    assert state.shape == (len(episode), 39) and episode.actions.shape == (len(episode), 4)
    np.testing.assert_array_equal(episode.obs["observation.hand_pos"], state[:, :3])  # hand position comes first
    assert np.abs(episode.actions).max() <= 1.0
    index = pq.read_table(tiny / "data/chunk-000/file-001.parquet", columns=["index", "frame_index", "task_index"])
    assert index.column("task_index").to_pylist() == [1] * index.num_rows
    all_index = np.concatenate([pq.read_table(p, columns=["index"]).column("index").to_numpy()
                                for p in sorted((tiny / "data").rglob("*.parquet"))])
    np.testing.assert_array_equal(all_index, np.arange(info["total_frames"]))


def test_failed_episodes_kept_and_flagged(tiny):
    episodes = pq.read_table(tiny / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert len(episodes) == 4
    for row in episodes:  # max_steps=25 is too short for either expert: every episode fails, all are kept
        assert row["success"] is False and row["success_step"] == -1 and row["length"] == 25
    made = json.loads((tiny / "meta/metaworld.json").read_text())
    assert made["counts"]["failed_episodes"] == 4 and made["versions"]["metaworld"]


def test_seeds_recorded_and_disjoint_from_eval(tiny):
    seeds = read_demo_seeds(tiny)
    assert seeds["push-v3"] == [initial_state_seed(0, "push-v3", e, "train") for e in range(2)]
    episodes = pq.read_table(tiny / "meta/episodes/chunk-000/file-000.parquet", columns=["seed"]).column("seed")
    assert episodes.to_pylist() == seeds["reach-v3"] + seeds["push-v3"]
    assert all(s < SPLIT_BIT for s in episodes.to_pylist())
    assert all(initial_state_seed(0, "push-v3", e, "eval") >= SPLIT_BIT for e in range(100))
    assert len({initial_state_seed(0, "push-v3", e) for e in range(100)}) == 100


def test_same_seed_same_bytes_and_resume(tiny, tmp_path):
    class Interrupt(Exception):
        pass

    def stop_after_first(shard):
        raise Interrupt

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        make_demonstrations(out, **TINY, on_task=stop_after_first)
    assert (out / "data/chunk-000/file-000.parquet").exists() and not (out / "meta/info.json").exists()
    summary = make_demonstrations(out, **TINY)
    assert [s.resumed for s in summary.shards] == [True, False] and summary.recorded_episodes == 2
    assert _digests(out) == _digests(tiny)


@pytest.mark.slow  # starts two worker processes (~5 s)
def test_parallel_workers_same_bytes(tiny, tmp_path):
    out = tmp_path / "parallel"
    make_demonstrations(out, **TINY, workers=2)
    assert _digests(out) == _digests(tiny)


def test_different_seed_different_data(tiny, tmp_path):
    out = tmp_path / "seed1"
    make_demonstrations(out, **{**TINY, "tasks": "reach-v3", "seed": 1})
    a = pq.read_table(tiny / "data/chunk-000/file-000.parquet", columns=["observation.state"])
    b = pq.read_table(out / "data/chunk-000/file-000.parquet", columns=["observation.state"])
    assert not a.equals(b)


def test_bad_requests_write_nothing(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"unknown Meta-World task\(s\) \['reach-v9'\]; valid: mt10, mt50 .*reach-v3"):
        make_demonstrations(tmp_path / "a", tasks="reach-v9", episodes=1)
    with pytest.raises(ValueError, match=r"episodes \(0\) must be an integer >= 1"):
        make_demonstrations(tmp_path / "b", tasks="reach-v3", episodes=0)
    with pytest.raises(ValueError, match="holds a different request"):
        make_demonstrations(tiny, **{**TINY, "episodes": 3})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_demonstrations(tmp_path / "c", tasks="reach-v3", episodes=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["notes.txt"]


def test_split_by_episode_holds_out_whole_episodes_per_task(tiny):
    episodes = load_lerobot(tiny).episodes
    split = split_by_episode(episodes, val_fraction=0.5, seed=0)
    assert sorted(e.task for e in split.val) == ["push-v3", "reach-v3"]
    assert {e.name for e in split.train}.isdisjoint({e.name for e in split.val})
    assert all(e.offset == 0 for e in split.train + split.val)  # whole episodes, never time blocks
    assert sum(len(e) for e in split.train + split.val) == sum(len(e) for e in episodes)

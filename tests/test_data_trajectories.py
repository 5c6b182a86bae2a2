"""Trajectory data: loaders on tiny files of the real schemas, normalization, splits, chunks, fetch."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from vqstudy.actions.data import robosuite as rs  # noqa: E402
from vqstudy.actions.data.chunks import ChunkDataset  # noqa: E402
from vqstudy.actions.data.episode import Episode, TrajectoryDataError  # noqa: E402
from vqstudy.actions.data.lerobot import load_lerobot  # noqa: E402
from vqstudy.actions.data.libero import load_robomimic_hdf5  # noqa: E402
from vqstudy.actions.data.normalize import QuantileNormalizer  # noqa: E402
from vqstudy.actions.data.trajectories import (  # noqa: E402
    TrajectoryDataConfig,
    build_trajectory_datasets,
    load_episodes,
    split_episodes,
)

RNG = np.random.default_rng(0)


def _actions(t: int, a: int = 7) -> np.ndarray:
    x = RNG.uniform(-1, 1, size=(t, a))
    if a == 7:
        x[:, 6] = np.where(RNG.random(t) < 0.5, -1.0, 1.0)
    return x


def write_libero(path: Path, lengths: list[int], instruction: str = "put the bowl on the plate", names=None) -> list[np.ndarray]:
    """A LIBERO `*_demo.hdf5` (robomimic layout) with the obs keys of the real files, tiny images."""
    actions = [_actions(t) for t in lengths]
    names = names or [f"demo_{i}" for i in range(len(lengths))]
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop", "language_instruction": instruction})
        data.attrs["env_args"] = json.dumps({"env_name": "Libero_Tabletop_Manipulation", "type": 1})
        data.attrs["num_demos"] = len(lengths)
        for name, a in zip(names, actions):
            t = len(a)
            g = data.create_group(name)
            g["actions"] = a
            g["dones"] = np.r_[np.zeros(t - 1), 1].astype(np.uint8)
            g["rewards"] = np.r_[np.zeros(t - 1), 1].astype(np.uint8)
            g["robot_states"] = RNG.normal(size=(t, 9))
            g["states"] = RNG.normal(size=(t, 20))
            o = g.create_group("obs")
            for key, dim in [("ee_pos", 3), ("ee_ori", 3), ("ee_states", 6), ("gripper_states", 2), ("joint_states", 7)]:
                o[key] = RNG.normal(size=(t, dim))
            o["agentview_rgb"] = RNG.integers(0, 255, size=(t, 4, 4, 3), dtype=np.uint8)
            o["eye_in_hand_rgb"] = RNG.integers(0, 255, size=(t, 4, 4, 3), dtype=np.uint8)
    return actions


def write_robosuite(path: Path, env: str, t: int, action_dim: int = 7) -> np.ndarray:
    """A robosuite 1.0.1 `demo.hdf5`: data/demo_1/{actions, states, joint_torques}, attrs env/env_info."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = _actions(t, action_dim)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs.update({"env": env, "env_info": json.dumps({"env_name": env, "robots": "Panda"}),
                           "date": "9-4-2020", "repository_version": "1.0.0"})
        g = data.create_group("demo_1")
        g.attrs["model_file"] = "model_1.xml"
        g["actions"] = a
        g["states"] = RNG.normal(size=(t, 15))
        g["joint_torques"] = RNG.normal(size=(t, 7))
    return a


def _vector_column(x: np.ndarray, fixed: bool) -> pa.Array:
    flat = pa.array(x.astype(np.float32).reshape(-1))
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    return pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)), flat)


def write_lerobot_v2(root: Path, lengths: list[int]) -> list[np.ndarray]:
    """LeRobot v2.1 (LIBERO conversion style): one parquet per episode, `actions`/`state`/`image`."""
    actions = []
    (root / "meta").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 20,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"}))
    tasks = ["open the drawer", "close the drawer"]
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    episodes_meta = []
    for ep, t in enumerate(lengths):
        a = _actions(t).astype(np.float32)
        actions.append(a)
        image = pa.array([{"bytes": b"\x89PNG", "path": None}] * t)
        table = pa.table({
            "image": image,
            "state": _vector_column(RNG.normal(size=(t, 8)), fixed=False),
            "actions": _vector_column(a, fixed=False),
            "timestamp": pa.array(np.arange(t, dtype=np.float32) / 20),
            "frame_index": pa.array(np.arange(t)),
            "episode_index": pa.array(np.full(t, ep)),
            "index": pa.array(np.arange(t) + sum(lengths[:ep])),
            "task_index": pa.array(np.full(t, ep % 2)),
        })
        pq.write_table(table, root / "data" / "chunk-000" / f"episode_{ep:06d}.parquet")
        episodes_meta.append({"episode_index": ep, "tasks": [tasks[ep % 2]], "length": t})
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(m) + "\n" for m in episodes_meta))
    return actions


def write_lerobot_v3(root: Path, lengths: list[int]) -> list[np.ndarray]:
    """LeRobot v3.0: episodes packed in file-000.parquet (rows shuffled), tasks.parquet with a string index."""
    import pandas as pd

    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": 20,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"}))
    pd.DataFrame({"task_index": [0, 1]}, index=["stack the blocks", "lift the cube"]).to_parquet(root / "meta" / "tasks.parquet")
    actions = [_actions(t).astype(np.float32) for t in lengths]
    a_all = np.concatenate(actions)
    ep_all = np.concatenate([np.full(t, i) for i, t in enumerate(lengths)])
    frame_all = np.concatenate([np.arange(t) for t in lengths])
    perm = RNG.permutation(len(a_all))  # rows out of order: the loader must sort by frame_index
    table = pa.table({
        "action": _vector_column(a_all[perm], fixed=True),
        "observation.state": _vector_column(RNG.normal(size=(len(a_all), 8))[perm], fixed=True),
        "frame_index": pa.array(frame_all[perm]),
        "episode_index": pa.array(ep_all[perm]),
        "task_index": pa.array((ep_all[perm] + 1) % 2),
    })
    pq.write_table(table, root / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"episode_index": list(range(len(lengths))), "length": lengths}),
                   root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return actions


def _episode(name: str, t: int, a: int = 7) -> Episode:
    return Episode(actions=_actions(t, a).astype(np.float32), obs={"s": np.arange(t)[:, None]}, task="t", source="f", name=name)


# Loaders


def test_libero_hdf5_reads_actions_task_and_lowdim_obs(tmp_path):
    path = tmp_path / "KITCHEN_SCENE1_put_the_bowl_demo.hdf5"
    written = write_libero(path, [12, 9, 15], names=["demo_2", "demo_10", "demo_0"])
    result = load_robomimic_hdf5(path)
    assert [e.name for e in result.episodes] == ["demo_0", "demo_2", "demo_10"]
    by_name = dict(zip(["demo_2", "demo_10", "demo_0"], written))
    for ep in result.episodes:
        assert ep.actions.dtype == np.float32
        np.testing.assert_array_equal(ep.actions, by_name[ep.name].astype(np.float32))
        assert ep.task == "put the bowl on the plate" and ep.source == str(path)
        assert set(ep.obs) == {"ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states", "robot_states", "states"}
        assert all(len(v) == len(ep) for v in ep.obs.values())
    with_images = load_robomimic_hdf5(path, obs_keys=["agentview_rgb", "ee_pos"]).episodes[0]
    assert with_images.obs["agentview_rgb"].shape == (15, 4, 4, 3)


def test_robosuite_source_excludes_or_pads_wipe(tmp_path):
    lift = write_robosuite(tmp_path / "lift" / "demo.hdf5", "Lift", 20)
    wipe = write_robosuite(tmp_path / "wipe" / "demo.hdf5", "Wipe", 18, action_dim=6)
    paths = [str(tmp_path / "lift" / "demo.hdf5"), str(tmp_path / "wipe" / "demo.hdf5")]
    default = load_episodes(TrajectoryDataConfig(source="robosuite", paths=paths, horizon=4)).episodes
    assert [e.task for e in default] == ["Lift"]
    np.testing.assert_array_equal(default[0].actions, lift.astype(np.float32))
    assert default[0].obs["states"].shape == (20, 15)
    both = load_episodes(TrajectoryDataConfig(source="robosuite", paths=paths, horizon=4, include_wipe=True)).episodes
    padded = next(e for e in both if e.task == "Wipe")
    assert padded.actions.shape == (18, 7)
    np.testing.assert_array_equal(padded.actions[:, :6], wipe.astype(np.float32))
    assert (padded.actions[:, 6] == -1).all()


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_lerobot_reads_episodes_in_frame_order_with_tasks(tmp_path, version):
    lengths = [7, 11, 5]
    writer = write_lerobot_v2 if version == "v2" else write_lerobot_v3
    written = writer(tmp_path, lengths)
    result = load_lerobot(tmp_path)
    assert [e.name for e in result.episodes] == ["episode_000000", "episode_000001", "episode_000002"]
    for ep, a in zip(result.episodes, written):
        np.testing.assert_array_equal(ep.actions, a)
        assert set(ep.obs) == ({"state"} if version == "v2" else {"observation.state"})  # images left out
        assert ep.obs[next(iter(ep.obs))].shape == (len(a), 8)
    expected_tasks = (["open the drawer", "close the drawer", "open the drawer"] if version == "v2"
                      else ["lift the cube", "stack the blocks", "lift the cube"])
    assert [e.task for e in result.episodes] == expected_tasks


# Bad files


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}_demo.hdf5"
    write_libero(path, [10, 10])
    with h5py.File(path, "a") as f:
        g = f["data/demo_1"]
        del g["actions"]
        if kind == "rank":
            g["actions"] = np.zeros(10)
        elif kind == "nan":
            a = np.zeros((10, 7))
            a[3, 2] = np.nan
            g["actions"] = a
        elif kind == "short":
            g["actions"] = np.zeros((3, 7))
            for key in list(g["obs"]):
                del g["obs"][key]
            for key in ("robot_states", "states"):
                del g[key]
    return path


@pytest.mark.parametrize(
    ("kind", "needle"),
    [("missing", "'actions' missing"), ("rank", "shape (10,)"), ("nan", "non-finite"), ("short", "3 steps, fewer than")],
)
def test_bad_files_name_file_demo_and_key_or_are_skipped(tmp_path, kind, needle):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(TrajectoryDataError) as info:
        load_robomimic_hdf5(path, min_length=5)
    message = str(info.value)
    assert str(path) in message and "demo_1" in message and needle in message
    if kind != "missing":
        assert "'actions'" in message
    result = load_robomimic_hdf5(path, min_length=5, on_error="skip")
    assert [e.name for e in result.episodes] == ["demo_0"]
    assert len(result.skipped) == 1 and result.skipped[0].name == "demo_1" and needle in result.skipped[0].reason


def test_mismatched_obs_length_and_missing_lerobot_action_column(tmp_path):
    path = tmp_path / "x_demo.hdf5"
    write_libero(path, [10])
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/ee_pos"]
        f["data/demo_0/obs/ee_pos"] = np.zeros((9, 3))
    with pytest.raises(TrajectoryDataError, match="demo_0.*'ee_pos'.*10 rows"):
        load_robomimic_hdf5(path)
    (tmp_path / "lr" / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table({"episode_index": [0, 0], "frame_index": [0, 1]}),
                   tmp_path / "lr" / "data" / "chunk-000" / "episode_000000.parquet")
    with pytest.raises(TrajectoryDataError, match="episode_000000.parquet.*'actions' or 'action'"):
        load_lerobot(tmp_path / "lr")


# Normalization


def test_quantile_normalizer_maps_quantiles_round_trips_and_keeps_gripper_binary():
    x = RNG.normal(size=(2000, 7)) * [1, 2, 0.1, 1, 1, 5, 1] + [0, 1, 0, 0, 0, -3, 0]
    x[:, 6] = np.where(RNG.random(2000) < 0.3, 1.0, -1.0)
    x[:, 4] = 0.25  # zero range: q01 == q99
    x = x.astype(np.float32)
    norm = QuantileNormalizer().fit(x, gripper_dims=(6,))
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    y = norm.normalize(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.abs(y).max() <= 1.0
    cont = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(norm.normalize(np.stack([q01, q99]))[:, cont], [[-1] * 5, [1] * 5], atol=1e-5)
    assert set(np.unique(y[:, 6])) == {-1.0, 1.0}
    np.testing.assert_array_equal(y[:, 6], x[:, 6])
    assert (y[:, 4] == 0).all()
    back = norm.unnormalize(y)
    np.testing.assert_allclose(back, np.clip(x, norm.q_low, norm.q_high), atol=1e-5)
    assert (back[:, 4] == 0.25).all()
    # torch in, torch out (same values), and a continuous-valued gripper input is binarized
    t = norm.normalize(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), y, atol=1e-6)
    soft = norm.unnormalize(torch.tensor([[0.3, -0.2, 0.0, 0.9, 0.0, -1.5, 0.4]]))
    assert soft[0, 6].item() == 1.0 and soft[0, 5].item() == pytest.approx(float(norm.q_low[5]))


def test_normalizer_state_dict_round_trip_is_exact_through_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    x = RNG.normal(size=(500, 7)).astype(np.float32)
    norm = QuantileNormalizer((0.02, 0.98)).fit(x, gripper_dims=[6])
    safetensors_torch.save_file(norm.state_dict(), tmp_path / "norm.safetensors")
    loaded = QuantileNormalizer.from_state_dict(safetensors_torch.load_file(tmp_path / "norm.safetensors"))
    assert loaded.quantiles == (0.02, 0.98)
    probe = torch.from_numpy(RNG.normal(size=(3, 5, 7)).astype(np.float32)) * 2
    torch.testing.assert_close(loaded.normalize(probe), norm.normalize(probe), atol=0, rtol=0)
    torch.testing.assert_close(loaded.unnormalize(probe), norm.unnormalize(probe), atol=0, rtol=0)
    with pytest.raises(ValueError, match="missing keys \\['q_high'\\]"):
        QuantileNormalizer.from_state_dict({k: v for k, v in norm.state_dict().items() if k != "q_high"})
    with pytest.raises(ValueError, match="last dim \\(6\\) must equal action_dim \\(7\\)"):
        norm.normalize(np.zeros((2, 6)))


# Splits and chunks


def test_episode_split_never_shares_an_episode_and_is_seeded():
    episodes = [_episode(f"demo_{i}", 20) for i in range(10)]
    a = split_episodes(episodes, val_fraction=0.3, seed=1)
    names_train, names_val = {e.name for e in a.train}, {e.name for e in a.val}
    assert len(names_val) == 3 and not names_train & names_val and len(names_train | names_val) == 10
    assert [e.name for e in split_episodes(episodes, 0.3, seed=1).val] == [e.name for e in a.val]
    assert len({tuple(e.name for e in split_episodes(episodes, 0.3, seed=s).val) for s in range(6)}) > 1
    with pytest.raises(ValueError, match="time_block"):
        split_episodes(episodes[:1], 0.2)


def test_time_block_split_chunks_never_cross_the_boundary():
    episodes = [_episode("demo_0", 50), _episode("demo_1", 31)]
    split = split_episodes(episodes, val_fraction=0.2, split="time_block")
    cuts = {"demo_0": 40, "demo_1": 25}
    h = 4
    train, val = ChunkDataset(split.train, h, stride=2), ChunkDataset(split.val, h, stride=1)
    train_steps = {(train.episodes[loc.episode].name, loc.step + k)
                   for loc in map(train.locate, range(len(train))) for k in range(h)}
    val_steps = {(val.episodes[loc.episode].name, loc.step + k) for loc in map(val.locate, range(len(val))) for k in range(h)}
    assert not train_steps & val_steps
    assert all(step < cuts[name] for name, step in train_steps)
    assert all(step >= cuts[name] for name, step in val_steps)
    assert {e.name: e.offset for e in split.val} == cuts
    np.testing.assert_array_equal(split.val[0].obs["s"][:, 0], np.arange(40, 50))  # obs sliced with actions


def test_chunk_dataset_items_are_normalized_windows_at_their_located_start():
    episodes = [_episode("demo_0", 23), _episode("demo_1", 10)]
    norm = QuantileNormalizer().fit(np.concatenate([e.actions for e in episodes]))
    ds = ChunkDataset(episodes, horizon=5, stride=3, normalizer=norm)
    assert len(ds) == (23 - 5) // 3 + 1 + (10 - 5) // 3 + 1
    for i in range(len(ds)):
        loc = ds.locate(i)
        expected = norm.normalize(episodes[loc.episode].actions[loc.start : loc.start + 5])
        torch.testing.assert_close(ds[i], torch.from_numpy(expected), atol=0, rtol=0)
    torch.testing.assert_close(ds.all_chunks(), torch.stack([ds[i] for i in range(len(ds))]), atol=0, rtol=0)
    assert ds.starts.max().item() == 18 and set(ds.episode_ids.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="f, demo_1: episode has 10 steps, fewer than horizon 12"):
        ChunkDataset(episodes, horizon=12)


def test_build_trajectory_datasets_fits_on_train_only_and_auto_split(tmp_path):
    for env, t in [("Lift", 40), ("Stack", 30), ("Door", 25)]:
        write_robosuite(tmp_path / env / "demo.hdf5", env, t)
    paths = [str(tmp_path / env / "demo.hdf5") for env in ("Lift", "Stack", "Door")]
    cfg = TrajectoryDataConfig(source="robosuite", paths=paths, horizon=4, stride=2)
    assert cfg.resolved_split == "time_block"
    data = build_trajectory_datasets(cfg)
    assert len(data.train.episodes) == 3 and len(data.val.episodes) == 3
    train_actions = np.concatenate([e.actions for e in data.train.episodes])
    np.testing.assert_array_equal(data.normalizer.q_high, np.quantile(train_actions, 0.99, axis=0).astype(np.float32))
    assert data.train[0].shape == (4, 7) and data.train[0].abs().max() <= 1
    cfg_ep = TrajectoryDataConfig(source="libero_hdf5", paths=paths, horizon=4, val_fraction=0.34)
    data_ep = build_trajectory_datasets(cfg_ep)
    assert len(data_ep.val.episodes) == 1 and data_ep.val.episodes[0].offset == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"source": "hub"}, "source ('hub')"),
        ({"source": "lerobot"}, "paths ([])"),
        ({"horizon": 0}, "horizon (0)"),
        ({"stride": -1}, "stride (-1)"),
        ({"val_fraction": 1.0}, "val_fraction (1.0)"),
        ({"split": "random"}, "split ('random')"),
        ({"on_error": "ignore"}, "on_error ('ignore')"),
        ({"gripper_dims": [-1]}, "gripper_dims ([-1])"),
        ({"source": "libero_hdf5", "paths": ["x"], "include_wipe": True}, "include_wipe (True)"),
    ],
)
def test_config_validation_names_field_and_value(kwargs, needle):
    with pytest.raises(ValueError) as info:
        TrajectoryDataConfig(**kwargs)
    assert needle in str(info.value)


# Fetch


def _fake_wheel(path: Path, contents: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for task, data in contents.items():
            zf.writestr(f"robosuite/models/assets/demonstrations/{task}/panda/demo.hdf5", data)
        zf.writestr("robosuite/__init__.py", "")
    return path


def test_fetch_refuses_sha_mismatch_and_leaves_nothing(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "robosuite-1.0.1-py3-none-any.whl", {t: b"not the demo " + t.encode() for t in rs.ROBOSUITE_TASKS})
    monkeypatch.setattr(rs, "_download_wheel", lambda dest: wheel)
    cache = tmp_path / "cache"
    with pytest.raises(rs.AssetHashError) as info:
        rs.fetch_robosuite_demos(cache)
    message = str(info.value)
    assert "door/panda/demo.hdf5" in message and rs.ROBOSUITE_DEMO_SHA256["door"] in message
    assert hashlib.sha256(b"not the demo door").hexdigest() in message
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def test_fetch_extracts_verifies_and_then_uses_the_cache(tmp_path, monkeypatch):
    contents = {t: f"demo bytes of {t}".encode() for t in rs.ROBOSUITE_TASKS}
    monkeypatch.setattr(rs, "ROBOSUITE_DEMO_SHA256", {t: hashlib.sha256(b).hexdigest() for t, b in contents.items()})
    wheel = _fake_wheel(tmp_path / "robosuite-1.0.1-py3-none-any.whl", contents)
    calls = []
    monkeypatch.setattr(rs, "_download_wheel", lambda dest: calls.append(dest) or wheel)
    monkeypatch.setenv("VQSTUDY_CACHE", str(tmp_path / "env-cache"))
    paths = rs.fetch_robosuite_demos()
    assert [p.read_bytes() for p in paths] == [contents[t] for t in rs.ROBOSUITE_TASKS]
    assert all(str(p).startswith(str(tmp_path / "env-cache")) for p in paths)
    assert rs.fetch_robosuite_demos() == paths and len(calls) == 1
    paths[2].write_bytes(b"corrupted")
    rs.fetch_robosuite_demos()
    assert len(calls) == 2 and paths[2].read_bytes() == contents[rs.ROBOSUITE_TASKS[2]]


def test_downloaded_wheel_with_wrong_sha_is_refused(tmp_path, monkeypatch):
    import subprocess

    def fake_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "robosuite-1.0.1-py3-none-any.whl").write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(rs.subprocess, "run", fake_pip)
    with pytest.raises(rs.AssetHashError) as info:
        rs._download_wheel(tmp_path)
    assert rs.ROBOSUITE_WHEEL_SHA256 in str(info.value) and hashlib.sha256(b"tampered").hexdigest() in str(info.value)


@pytest.mark.slow
def test_real_robosuite_demos_have_3723_steps_without_wipe(tmp_path):
    try:
        paths = rs.fetch_robosuite_demos(tmp_path)
    except RuntimeError as err:
        if "pip download" in str(err):
            pytest.skip(f"PyPI not reachable: {err}")
        raise
    cfg = TrajectoryDataConfig(source="robosuite", paths=[str(p) for p in paths], horizon=16)
    episodes = load_episodes(cfg).episodes
    assert sum(len(e) for e in episodes) == 3723 and all(e.action_dim == 7 for e in episodes)
    with_wipe = load_episodes(TrajectoryDataConfig(source="robosuite", paths=[str(p) for p in paths], include_wipe=True))
    assert sum(len(e) for e in with_wipe.episodes) == sum(rs.ROBOSUITE_DEMO_STEPS.values()) == 3897
    assert all(e.obs["states"].shape[0] == len(e) for e in episodes)


def test_two_arm_actions_get_both_grippers_or_a_warning_naming_the_other():
    """14-D two-arm actions (two 7-D arms, each with its own -1/+1 gripper at 6 and 13)."""
    g = np.random.default_rng(0)
    x = g.normal(size=(400, 14)).astype(np.float32)
    x[:, 6] = g.choice([-1.0, 1.0], size=400)
    x[:, 13] = g.choice([-1.0, 1.0], size=400)
    inferred = QuantileNormalizer().fit(x)
    assert np.flatnonzero(inferred.gripper_mask).tolist() == [6, 13]
    normalized = inferred.normalize(torch.as_tensor(x))
    assert set(normalized[:, 13].unique().tolist()) == {-1.0, 1.0}  # kept binary, not rescaled
    with pytest.warns(UserWarning, match=r"action dims \[13\] take only the values -1/\+1"):
        QuantileNormalizer().fit(x, gripper_dims=[6])
    with pytest.raises(ValueError, match=r"gripper_dims \(\[6, 14\]\) has \[14\] out of range"):
        QuantileNormalizer().fit(x, gripper_dims=[6, 14])

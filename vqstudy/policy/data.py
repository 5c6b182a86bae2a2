"""Behaviour-cloning samples from demonstrations: (state, task) at step t -> action chunk a[t : t + H].

The observation of a sample is the low-dimensional state at the chunk's first step, built as:

- the observation keys in `state_keys` flattened and concatenated per step (robosuite demos: `states`,
  the MuJoCo sim state `[time, qpos, qvel]` of robot and objects; its first column, the sim clock, is
  dropped when `drop_sim_time` is set, since it tells the policy how far into the demo it is);
- zero-padded on the right to the widest task (robosuite: door 22, lift 31, nut-assembly 44,
  pick-place 70, stack 44 after dropping the clock), so a given column means different things in
  different tasks; the task one-hot (kept apart in `task`) lets a policy tell them apart;
- standardized with the train split's per-column mean and std (std < 1e-6 -> 1).

The task one-hot plays the part of the language instruction of a VLA: every encoder rung passes it
through untouched, and only the state goes through the encoder. Targets are the chunks normalized
with the `QuantileNormalizer` fitted on the train actions, and the original actions for the errors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from vqstudy.actions.data.episode import Episode, TrajectoryDataError
from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.actions.data.trajectories import TrajectoryDataConfig, load_episodes, split_episodes

logger = logging.getLogger(__name__)

IMAGE_NDIM = 3
"""Observations with more than this many dims per step ((T, H, W, C) images) are never state."""


class BCSplit(NamedTuple):
    """Samples of one split; N samples, state width S, chunk (H, A)."""

    states: Tensor
    """(N, S) standardized, zero-padded state at the chunk's first step."""
    tasks: Tensor
    """(N,) int64 task index."""
    chunks: Tensor
    """(N, H, A) normalized action chunk (targets of the heads, inputs of the tokenizers)."""
    actions: Tensor
    """(N, H, A) the same chunk in original units (for the errors)."""
    episodes: Tensor
    """(N,) int64 index of the episode piece the sample comes from (for per-episode phases)."""
    steps: Tensor
    """(N,) int64 step of the chunk's first action in the original demo."""


class BCData(NamedTuple):
    train: BCSplit
    val: BCSplit
    normalizer: QuantileNormalizer
    task_names: list[str]
    split: str
    """How val was held out ('time_block', 'interleaved time_block (n segments)' or 'episode')."""

    @property
    def state_dim(self) -> int:
        return int(self.train.states.shape[1])

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def horizon(self) -> int:
        return int(self.train.chunks.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.train.chunks.shape[2])


def episode_state(episode: Episode, state_keys: Sequence[str], drop_sim_time: bool) -> np.ndarray:
    """(T, S_e) float32: the named observations of `episode` flattened and concatenated per step."""
    parts = []
    for key in state_keys:
        if key not in episode.obs:
            raise TrajectoryDataError(f"{episode.where}: state key {key!r} not found; available: {sorted(episode.obs)}")
        value = np.asarray(episode.obs[key], dtype=np.float32)
        if value.ndim > IMAGE_NDIM:
            raise TrajectoryDataError(f"{episode.where}: state key {key!r} has shape {value.shape}; "
                                      "images are not state (expected (T,) or (T, D))")
        value = value.reshape(len(value), -1)  # (T, D)
        if key == "states" and drop_sim_time:
            value = value[:, 1:]  # MuJoCo sim state [time, qpos, qvel]: drop the clock
        parts.append(value)
    return np.concatenate(parts, axis=1)


def default_state_keys(episodes: Sequence[Episode]) -> list[str]:
    """['states'] when every episode has it (robosuite/LIBERO sim state), else every low-dim key they share."""
    shared = set.intersection(*(set(e.obs) for e in episodes))
    if "states" in shared:
        return ["states"]
    keys = sorted(k for k in shared if np.asarray(episodes[0].obs[k]).ndim <= 2)
    if not keys:
        raise TrajectoryDataError(f"no low-dimensional observation shared by all episodes (found {sorted(shared)})")
    return keys


def _windows(pieces: Sequence[Episode], states: Sequence[np.ndarray], tasks: Sequence[int], horizon: int,
             stride: int) -> tuple[np.ndarray, ...]:
    s_out, t_out, a_out, e_out, k_out = [], [], [], [], []
    for i, (piece, state, task) in enumerate(zip(pieces, states, tasks)):
        starts = np.arange(0, len(piece) - horizon + 1, stride)  # (n_i,)
        if len(starts) == 0:
            continue
        idx = starts[:, None] + np.arange(horizon)[None, :]  # (n_i, H)
        s_out.append(state[starts])
        t_out.append(np.full(len(starts), task))
        a_out.append(piece.actions[idx])  # (n_i, H, A)
        e_out.append(np.full(len(starts), i))
        k_out.append(piece.offset + starts)
    if not s_out:
        raise TrajectoryDataError(f"no episode piece has >= {horizon} steps (horizon)")
    return tuple(np.concatenate(x) for x in (s_out, t_out, a_out, e_out, k_out))


def segments(episodes: Sequence[Episode], segment_steps: int) -> list[Episode]:
    """Each episode cut into max(1, round(T / segment_steps)) consecutive, near-equal segments."""
    out = []
    for ep in episodes:
        n = max(1, int(round(len(ep) / segment_steps)))
        edges = np.linspace(0, len(ep), n + 1).round().astype(int)
        out += [ep.slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    return out


def build_bc_data(
    cfg: TrajectoryDataConfig,
    state_keys: Sequence[str] | None = None,
    drop_sim_time: bool = True,
    episodes: Sequence[Episode] | None = None,
    segment_steps: int = 0,
) -> BCData:
    """Load (unless `episodes` is given), split by `cfg`, and cut (state, chunk) samples of both splits.

    `segment_steps` > 0 (time_block split only) first cuts every episode into segments of about that many
    steps and holds out the last `val_fraction` of each segment (interleaved time blocks) instead of the
    last `val_fraction` of the whole episode.
    """
    if episodes is None:
        episodes = load_episodes(cfg).episodes
    if not episodes:
        raise TrajectoryDataError(f"no episodes for source {cfg.source!r}")
    keys = list(state_keys) if state_keys else default_state_keys(episodes)
    task_names = sorted({e.task for e in episodes})
    if segment_steps < 0:
        raise ValueError(f"segment_steps ({segment_steps}) must be >= 0")
    if segment_steps and cfg.resolved_split != "time_block":
        raise ValueError(f"segment_steps ({segment_steps}) needs the time_block split, not {cfg.resolved_split!r}")
    pieces = segments(episodes, segment_steps) if segment_steps else list(episodes)
    split = split_episodes(pieces, cfg.val_fraction, cfg.seed, cfg.resolved_split)
    if not split.val:
        raise ValueError(f"val_fraction ({cfg.val_fraction}) left no held-out steps; it must be > 0")
    all_pieces = split.train + split.val
    raw = [episode_state(p, keys, drop_sim_time) for p in all_pieces]
    width = max(s.shape[1] for s in raw)
    padded = [np.pad(s, ((0, 0), (0, width - s.shape[1]))) for s in raw]  # (T, S) each
    tasks = [task_names.index(p.task) for p in all_pieces]
    n_train = len(split.train)
    train = _windows(split.train, padded[:n_train], tasks[:n_train], cfg.horizon, cfg.stride)
    val = _windows(split.val, padded[n_train:], tasks[n_train:], cfg.horizon, cfg.stride)

    mean = train[0].mean(0)  # (S,)
    std = train[0].std(0)
    std = np.where(std < 1e-6, 1.0, std)
    train_actions = np.concatenate([p.actions for p in split.train])  # (N, A)
    normalizer = QuantileNormalizer().fit(train_actions, gripper_dims=cfg.gripper_dims)

    def to_split(arrays: tuple[np.ndarray, ...]) -> BCSplit:
        states, task, actions, episode, steps = arrays
        actions_t = torch.as_tensor(actions, dtype=torch.float32)
        return BCSplit(
            states=torch.as_tensor((states - mean) / std, dtype=torch.float32),
            tasks=torch.as_tensor(task, dtype=torch.long),
            chunks=normalizer.normalize(actions_t),
            actions=actions_t,
            episodes=torch.as_tensor(episode, dtype=torch.long),
            steps=torch.as_tensor(steps, dtype=torch.long),
        )

    name = f"interleaved time_block ({len(pieces)} segments)" if segment_steps else cfg.resolved_split
    data = BCData(to_split(train), to_split(val), normalizer, task_names, name)
    logger.info("BC data: %d train / %d val samples, state %d (keys %s), %d tasks, H=%d, split %s",
                len(data.train.states), len(data.val.states), width, keys, len(task_names), cfg.horizon, data.split)
    return data


def flatten_chunks(chunks: Tensor) -> Tensor:
    """(N, H, A) -> (N, H*A)."""
    return rearrange(chunks, "n h a -> n (h a)")

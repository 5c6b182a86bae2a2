"""Recording the scripted expert: one episode from a seeded initial state, or all episodes of a task.

Kept free of torch so that worker processes of `make_demonstrations(workers=N)` start quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from vqstudy.sim.env import MetaWorldEnv, initial_state_seed


class EpisodeRecord(NamedTuple):
    """One recorded expert episode (arrays have T rows)."""

    task: str
    seed: int
    state: np.ndarray
    """(T, 39) float32 observations before each action."""
    action: np.ndarray
    """(T, 4) float32 executed actions."""
    hand_pos: np.ndarray
    """(T, 3) float32."""
    hand_vel: np.ndarray
    """(T, 3) float32."""
    reward: np.ndarray
    """(T,) float32 reward after each action."""
    success: np.ndarray
    """(T,) bool success flag after each action."""

    @property
    def succeeded(self) -> bool:
        return bool(self.success.any())


def record_expert_episode(env: MetaWorldEnv, seed: int, max_steps: int) -> EpisodeRecord:
    """Run the scripted expert from the initial state of `seed` until success or `max_steps`."""
    obs = env.reset(seed)
    states, actions, pos, vel, rewards, flags = [], [], [], [], [], []
    for _ in range(max_steps):
        action = env.expert_action(obs)
        states.append(obs)
        pos.append(env.hand_pos())
        vel.append(env.hand_vel())
        actions.append(action)
        obs, reward, success = env.step(action)
        rewards.append(reward)
        flags.append(success)
        if success:
            break
    f32 = lambda rows: np.asarray(rows, dtype=np.float32)  # noqa: E731
    return EpisodeRecord(env.task, int(seed), f32(states), f32(actions), f32(pos), f32(vel), f32(rewards),
                         np.asarray(flags, dtype=bool))


def record_task(task: str, episodes: int, seed: int, max_steps: int,
                on_episode: Callable[[str, int], None] | None = None) -> list[EpisodeRecord]:
    """Episodes 0..episodes-1 of `task` from their recorded training seeds (one simulator, reused)."""
    env = MetaWorldEnv(task)
    records = []
    for e in range(episodes):
        records.append(record_expert_episode(env, initial_state_seed(seed, task, e, "train"), max_steps))
        if on_episode is not None:
            on_episode(task, e)
    env.close()
    return records

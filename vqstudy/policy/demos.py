"""Behaviour-cloning samples from the Meta-World demonstrations written by `vqstudy data make metaworld`.

One sample per demonstration step t: the 39-D observation at t, the task index, and the action chunk
a[t : t + H] (past the episode's end the last action is repeated, so every step is a sample). Splits
hold out whole episodes per task (`vqstudy.sim.demos.split_by_episode`): the held-out samples start
from initial states the policy never saw. Failed expert episodes are dropped from training (they are
rare: 9 of 500 in the MT10 set).

Observation layout (Meta-World `SawyerXYZEnv._get_obs`, checked against metaworld 3.1.1): [0:3] hand
position, [3] gripper opening, [4:7] first object position, [7:11] its quaternion, [11:18] second
object, [18:36] the same 18 values one step earlier, [36:39] goal position.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vqstudy.actions.data.episode import Episode
from vqstudy.actions.data.lerobot import load_lerobot
from vqstudy.sim.demos import split_by_episode

logger = logging.getLogger(__name__)

HAND_POS = slice(0, 3)
"""Hand (end-effector) position in the 39-D Meta-World observation."""
OBJECT_POS = slice(4, 7)
"""First object's position in the 39-D Meta-World observation."""
STATE_KEY = "observation.state"


class Samples(NamedTuple):
    """N samples of one split."""

    obs: Tensor
    """(N, 39) float32 raw observations."""
    tasks: Tensor
    """(N,) int64 task index (into `DemoData.task_names`)."""
    chunks: Tensor
    """(N, H, 4) float32 action chunks in environment units."""
    episodes: Tensor
    """(N,) int64 episode number (for per-episode statistics)."""
    episode_names: tuple[str, ...] = ()
    """Dataset name of each episode number (`episode_000012`), for replaying episodes in the simulator."""
    states: Tensor | None = None
    """(N, 39) raw states when `obs` holds something else (pixel features); the probes read them."""

    @property
    def probe_states(self) -> Tensor:
        """The raw states the encoder-quality probes predict from: `states`, else `obs`."""
        return self.obs if self.states is None else self.states


class DemoData(NamedTuple):
    train: Samples
    val: Samples
    task_names: list[str]
    horizon: int
    root: str

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)


def episode_samples(episode: Episode, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, 39) observations and (T, H, A) chunks a[t : t + H] of one episode (last action repeated)."""
    obs = np.asarray(episode.obs[STATE_KEY], dtype=np.float32)  # (T, 39)
    actions = np.asarray(episode.actions, dtype=np.float32)  # (T, A)
    padded = np.concatenate([actions, np.repeat(actions[-1:], horizon - 1, axis=0)])  # (T + H - 1, A)
    index = np.arange(len(actions))[:, None] + np.arange(horizon)[None]  # (T, H)
    return obs, padded[index]


def _samples(episodes: Sequence[Episode], task_index: dict[str, int], horizon: int) -> Samples:
    obs, tasks, chunks, ids = [], [], [], []
    for number, episode in enumerate(episodes):
        o, c = episode_samples(episode, horizon)
        obs.append(o)
        chunks.append(c)
        tasks.append(np.full(len(o), task_index[episode.task], dtype=np.int64))
        ids.append(np.full(len(o), number, dtype=np.int64))
    return Samples(torch.from_numpy(np.concatenate(obs)), torch.from_numpy(np.concatenate(tasks)),
                   torch.from_numpy(np.concatenate(chunks)), torch.from_numpy(np.concatenate(ids)),
                   tuple(e.name for e in episodes))


def successful(episodes: Sequence[Episode], root: Path) -> list[Episode]:
    """The episodes whose expert succeeded (per `next.success` when the column was loaded, else all)."""
    import pyarrow.parquet as pq

    table = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pandas()
    if "success" not in table.columns or "episode_index" not in table.columns:
        return list(episodes)
    ok = {f"episode_{int(e):06d}" for e, s in zip(table["episode_index"], table["success"]) if s}
    return [e for e in episodes if e.name in ok]


def load_demos(root: str | Path, horizon: int = 8, val_fraction: float = 0.2, split_seed: int = 0,
               tasks: Sequence[str] | None = None, max_episodes: int | None = None) -> DemoData:
    """Samples of the dataset `root`, split by episode per task; `tasks` keeps only those tasks (in that
    order), `max_episodes` the first episodes of each task (quick runs)."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon ({horizon!r}) must be an integer >= 1")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction ({val_fraction}) must be in (0, 1)")
    root = Path(root)
    episodes = load_lerobot(root, obs_keys=[STATE_KEY]).episodes
    names = list(dict.fromkeys(e.task for e in episodes))
    if tasks is not None:
        missing = sorted(set(tasks) - set(names))
        if missing:
            raise ValueError(f"tasks {missing} are not in {root} (it has {names})")
        names = list(tasks)
    episodes = [e for e in successful(episodes, root) if e.task in names]
    if max_episodes is not None:
        kept: dict[str, int] = {}
        episodes = [e for e in episodes if (kept.__setitem__(e.task, kept.get(e.task, 0) + 1) or kept[e.task]) <= max_episodes]
    split = split_by_episode(episodes, val_fraction, seed=split_seed)
    index = {t: i for i, t in enumerate(names)}
    data = DemoData(_samples(split.train, index, horizon), _samples(split.val, index, horizon), names, horizon, str(root))
    logger.info("%s: %d tasks, %d train / %d val episodes, %d / %d samples", root, len(names), len(split.train),
                len(split.val), len(data.train.obs), len(data.val.obs))
    return data

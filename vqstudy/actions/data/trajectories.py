"""Robot action trajectories: config, loading by source, episode-safe splits, chunk datasets.

Pipeline: `load_episodes(cfg)` -> `split_episodes(...)` -> `QuantileNormalizer.fit(train actions)`
-> `ChunkDataset(train)`, `ChunkDataset(val)`; `build_trajectory_datasets(cfg)` does all of it.

Sources (all the same action meaning, OSC_POSE deltas: 3 position, 3 axis-angle, gripper -1/+1):
- "robosuite": the 6 Panda demos inside the robosuite 1.0.1 wheel (`fetch_robosuite_demos`).
  Wipe has 6-D actions (a wiping tool, no gripper) and is left out by default (`include_wipe`);
  when included it gets a constant -1 (open) gripper column so every episode is 7-D.
- "libero_hdf5": LIBERO `*_demo.hdf5` files (robomimic layout), 20 Hz.
- "lerobot": local LeRobot v2.x / v3.0 parquet dataset directories.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import numpy as np

from vqstudy.actions.data.chunks import ChunkDataset
from vqstudy.actions.defaults import HORIZON
from vqstudy.actions.data.episode import (
    ON_ERROR_CHOICES,
    Episode,
    LoadResult,
    OnError,
    SkippedEpisode,
    TrajectoryDataError,
    handle_error,
)
from vqstudy.actions.data.libero import load_hdf5_files
from vqstudy.actions.data.lerobot import load_lerobot
from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.actions.data.robosuite import fetch_robosuite_demos

logger = logging.getLogger(__name__)

SOURCES = ("robosuite", "libero_hdf5", "lerobot")
SPLITS = ("auto", "episode", "time_block")
WIPE_GRIPPER = -1.0


@dataclass
class TrajectoryDataConfig:
    """Where action trajectories come from and how they are cut into chunks and split."""

    source: Literal["robosuite", "libero_hdf5", "lerobot"] = "robosuite"
    """Data source: robosuite 1.0.1 demos (fetched), LIBERO hdf5 files, or LeRobot parquet dirs."""
    paths: list[str] = field(default_factory=list)
    """hdf5 files/dirs or LeRobot dataset roots; empty for robosuite means the fetched cache."""
    horizon: int = HORIZON
    """Steps per action chunk (H)."""
    stride: int = 1
    """Steps between the starts of consecutive chunks of an episode."""
    split: Literal["auto", "episode", "time_block"] = "auto"
    """episode: hold out whole episodes; time_block: last steps of each; auto: robosuite time_block, else episode."""
    val_fraction: float = 0.2
    """Fraction of episodes (episode split) or of each episode's steps (time_block) for validation."""
    seed: int = 0
    """Seed of the episode shuffle for the episode split."""
    include_wipe: bool = False
    """robosuite only: also use the wipe demo (6-D actions, padded with a constant -1 gripper)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad episode (missing key, wrong rank, NaN, shorter than horizon): raise, or skip, count and log."""
    gripper_dims: list[int] | None = None
    """Action dims that are binary grippers (kept as -1/+1, not rescaled); None: inferred per arm from the training
    actions (every binary dimension: 6 for one 7-D arm, 6 and 13 for two); declared dims are checked against the data."""
    obs_keys: list[str] | None = None
    """Observations to load; None: every low-dim one (hdf5 obs/* and states, LeRobot state columns)."""
    cache_dir: str | None = None
    """Cache for fetched files; None: $VQSTUDY_CACHE or ~/.cache/vqstudy."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source ({self.source!r}) must be one of {SOURCES}")
        if isinstance(self.paths, str):
            raise ValueError(f"paths ({self.paths!r}) must be a list of paths, not a string")
        if self.source != "robosuite" and not self.paths:
            raise ValueError(f"paths ({self.paths}) must name at least one file or directory for {self.source!r}")
        if self.horizon < 1:
            raise ValueError(f"horizon ({self.horizon}) must be >= 1")
        if self.stride < 1:
            raise ValueError(f"stride ({self.stride}) must be >= 1")
        if self.split not in SPLITS:
            raise ValueError(f"split ({self.split!r}) must be one of {SPLITS}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction ({self.val_fraction}) must be in [0, 1)")
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error ({self.on_error!r}) must be one of {ON_ERROR_CHOICES}")
        if self.gripper_dims is not None and any(not isinstance(d, int) or d < 0 for d in self.gripper_dims):
            raise ValueError(f"gripper_dims ({self.gripper_dims}) must be non-negative ints")
        if self.include_wipe and self.source != "robosuite":
            raise ValueError(f"include_wipe ({self.include_wipe}) is for source 'robosuite', not {self.source!r}")

    @property
    def resolved_split(self) -> Literal["episode", "time_block"]:
        """The split actually used ("auto" resolved by source)."""
        if self.split != "auto":
            return self.split
        return "time_block" if self.source == "robosuite" else "episode"


def _pad_gripper(episode: Episode, value: float = WIPE_GRIPPER) -> Episode:
    column = np.full((len(episode), 1), value, dtype=np.float32)
    return replace(episode, actions=np.concatenate([episode.actions, column], axis=1))  # (T, 6) -> (T, 7)


def load_episodes(cfg: TrajectoryDataConfig) -> LoadResult:
    """Read every episode `cfg` names, validated (actions (T, A) finite, T >= horizon)."""
    if cfg.source == "lerobot":
        episodes: list[Episode] = []
        skipped: list[SkippedEpisode] = []
        for root in cfg.paths:
            result = load_lerobot(root, cfg.obs_keys, cfg.horizon, cfg.on_error)
            episodes += result.episodes
            skipped += result.skipped
        result = LoadResult(episodes, skipped)
    else:
        paths = cfg.paths or fetch_robosuite_demos(cfg.cache_dir)
        result = load_hdf5_files(paths, cfg.obs_keys, cfg.horizon, cfg.on_error)
    episodes = result.episodes
    if cfg.source == "robosuite":
        is_wipe = [e.task.lower() == "wipe" for e in episodes]
        if cfg.include_wipe:
            episodes = [_pad_gripper(e) if w and e.action_dim == 6 else e for e, w in zip(episodes, is_wipe)]
        else:
            episodes = [e for e, w in zip(episodes, is_wipe) if not w]
    dims = sorted({e.action_dim for e in episodes})
    if len(dims) > 1:
        raise TrajectoryDataError(f"episodes have different action dims {dims}: " + ", ".join(
            f"{e.where} -> {e.action_dim}" for e in episodes[:8]))
    if result.skipped:
        logger.warning("skipped %d bad episodes/files (on_error='skip')", len(result.skipped))
    logger.info("loaded %d episodes, %d steps", len(episodes), sum(len(e) for e in episodes))
    return LoadResult(episodes, result.skipped)


class EpisodeSplit(NamedTuple):
    """Train and validation episodes (or episode pieces for the time-block split)."""

    train: list[Episode]
    val: list[Episode]


def split_episodes(
    episodes: list[Episode],
    val_fraction: float,
    seed: int = 0,
    split: Literal["episode", "time_block"] = "episode",
) -> EpisodeSplit:
    """Split without ever sharing a step between train and val.

    "episode": a seeded shuffle holds out round(n * val_fraction) whole episodes (at least one when
    val_fraction > 0, at least one left for training). "time_block": steps `[0, cut)` of every episode
    go to train and `[cut, T)` to val, cut = round(T * (1 - val_fraction)); chunks are cut per piece,
    so none crosses the boundary. With the 5 robosuite demos (one per task) an episode split would
    hold out a whole task, so val would measure transfer to an unseen task and train would lose a
    fifth of the tasks; the time-block split keeps every task on both sides (val = each demo's
    last phase), which is why it is the "auto" choice for robosuite.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction ({val_fraction}) must be in [0, 1)")
    if split == "time_block":
        train, val = [], []
        for ep in episodes:
            cut = int(round(len(ep) * (1.0 - val_fraction)))
            if cut > 0:
                train.append(ep.slice(0, cut))
            if cut < len(ep):
                val.append(ep.slice(cut, len(ep)))
        return EpisodeSplit(train, val)
    if split != "episode":
        raise ValueError(f"split ({split!r}) must be 'episode' or 'time_block'")
    n = len(episodes)
    if val_fraction == 0.0:
        return EpisodeSplit(list(episodes), [])
    if n < 2:
        raise ValueError(f"cannot hold out whole episodes from {n} episode(s); use split='time_block'")
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    held_out = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return EpisodeSplit(
        [e for i, e in enumerate(episodes) if i not in held_out],
        [e for i, e in enumerate(episodes) if i in held_out],
    )


class TrajectoryData(NamedTuple):
    """Chunk datasets, the normalizer fitted on the train actions, and the skipped episodes."""

    train: ChunkDataset
    val: ChunkDataset
    normalizer: QuantileNormalizer
    skipped: list[SkippedEpisode]


def _long_enough(
    pieces: list[Episode], horizon: int, on_error: OnError, skipped: list[SkippedEpisode]
) -> list[Episode]:
    kept = []
    for piece in pieces:
        if len(piece) >= horizon:
            kept.append(piece)
            continue
        err = TrajectoryDataError(
            f"{piece.where}: split piece at step {piece.offset} has {len(piece)} steps, fewer than horizon {horizon}"
        )
        handle_error(err, piece.source, piece.name, on_error, skipped)
    return kept


def build_trajectory_datasets(cfg: TrajectoryDataConfig, episodes: list[Episode] | None = None) -> TrajectoryData:
    """Load (unless `episodes` is given), split, fit the normalizer on train, and chunk both splits."""
    skipped: list[SkippedEpisode] = []
    if episodes is None:
        episodes, skipped = load_episodes(cfg)
    if not episodes:
        raise TrajectoryDataError(
            f"no usable episodes for source {cfg.source!r} in {cfg.paths} ({len(skipped)} skipped)"
        )
    split = split_episodes(episodes, cfg.val_fraction, cfg.seed, cfg.resolved_split)
    train = _long_enough(split.train, cfg.horizon, cfg.on_error, skipped)
    val = _long_enough(split.val, cfg.horizon, cfg.on_error, skipped)
    if not train:
        raise TrajectoryDataError(
            f"no training episode has >= {cfg.horizon} steps after the {cfg.resolved_split} split"
        )
    actions = np.concatenate([e.actions for e in train])  # (N, A)
    normalizer = QuantileNormalizer().fit(actions, gripper_dims=cfg.gripper_dims)
    return TrajectoryData(
        ChunkDataset(train, cfg.horizon, cfg.stride, normalizer),
        ChunkDataset(val, cfg.horizon, cfg.stride, normalizer),
        normalizer,
        skipped,
    )

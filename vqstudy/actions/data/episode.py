"""One demonstration as arrays, and the checks every trajectory loader applies.

An `Episode` is what all loaders (robomimic/LIBERO hdf5, LeRobot parquet, the robosuite demos)
return: actions `(T, A)` float32, per-step observations `{key: (T, ...)}`, a task string and
where it came from. Bad episodes raise `TrajectoryDataError` naming file, demo and key, or are
skipped and recorded as `SkippedEpisode` when the caller asked for `on_error="skip"`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES = ("raise", "skip")


class TrajectoryDataError(ValueError):
    """A trajectory file or episode does not have the expected layout or values."""


@dataclass
class Episode:
    """One demonstration: actions `(T, A)` float32 and per-step observations `{key: (T, ...)}`."""

    actions: np.ndarray
    """(T, A) float32 actions; for LIBERO/robosuite OSC_POSE: 3 pos deltas, 3 axis-angle deltas, gripper."""
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-step observations, each with T rows (e.g. `ee_pos` (T, 3), robosuite `states` (T, S))."""
    task: str = ""
    """Task name or language instruction."""
    source: str = ""
    """File (or dataset root) the episode was read from."""
    name: str = ""
    """Demo key inside the source (`demo_3`, `episode_000012`)."""
    offset: int = 0
    """Index of `actions[0]` within the original demo (non-zero for time-block pieces)."""

    def __post_init__(self) -> None:
        assert self.actions.ndim == 2, f"{self.where}: actions must be (T, A), got {self.actions.shape}"
        for key, value in self.obs.items():
            assert len(value) == len(self.actions), (
                f"{self.where}: obs[{key!r}] has {len(value)} rows, actions have {len(self.actions)}"
            )

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def where(self) -> str:
        """`file, demo` for messages."""
        return f"{self.source}, {self.name}"

    def slice(self, start: int, stop: int) -> Episode:
        """Steps `[start, stop)` of this episode (actions and observations), keeping the true offset."""
        return replace(
            self,
            actions=self.actions[start:stop],
            obs={k: v[start:stop] for k, v in self.obs.items()},
            offset=self.offset + start,
        )


class SkippedEpisode(NamedTuple):
    """An episode (or whole file, `name="*"`) left out because of `reason`."""

    source: str
    name: str
    reason: str


class LoadResult(NamedTuple):
    """Episodes read from some files, and what was skipped (empty unless `on_error="skip"`)."""

    episodes: list[Episode]
    skipped: list[SkippedEpisode]


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error ({on_error!r}) must be one of {ON_ERROR_CHOICES}")


def validate_actions(actions: np.ndarray, where: str, key: str = "actions", min_length: int = 1) -> np.ndarray:
    """Return `actions` as (T, A) float32 or raise `TrajectoryDataError` naming `where` and `key`."""
    actions = np.asarray(actions)
    if actions.ndim != 2:
        raise TrajectoryDataError(f"{where}: key {key!r} has shape {actions.shape}, expected (T, A)")
    if not np.issubdtype(actions.dtype, np.number):
        raise TrajectoryDataError(f"{where}: key {key!r} has dtype {actions.dtype}, expected a number type")
    bad = ~np.isfinite(actions)
    if bad.any():
        t, d = np.argwhere(bad)[0]
        raise TrajectoryDataError(
            f"{where}: key {key!r} has {int(bad.sum())} non-finite values (first at step {t}, dim {d})"
        )
    if actions.shape[0] < min_length:
        raise TrajectoryDataError(
            f"{where}: key {key!r} has {actions.shape[0]} steps, fewer than the required {min_length} (horizon)"
        )
    return actions.astype(np.float32, copy=False)


def validate_obs(obs: dict[str, np.ndarray], length: int, where: str) -> dict[str, np.ndarray]:
    """Check every observation has `length` rows; raise `TrajectoryDataError` naming the key."""
    for key, value in obs.items():
        if value.ndim == 0 or value.shape[0] != length:
            raise TrajectoryDataError(
                f"{where}: observation {key!r} has shape {value.shape}, expected {length} rows like 'actions'"
            )
    return obs


def handle_error(
    err: TrajectoryDataError, source: str, name: str, on_error: OnError, skipped: list[SkippedEpisode]
) -> None:
    """Raise `err`, or record and log it as skipped."""
    if on_error == "raise":
        raise err
    skipped.append(SkippedEpisode(source, name, str(err)))
    logger.warning("skipping %s %s: %s", source, name, err)

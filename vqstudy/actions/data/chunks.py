"""Fixed-horizon action chunks cut from episodes, never across an episode's end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange
from torch.utils.data import Dataset

from vqstudy.actions.data.episode import Episode
from vqstudy.actions.data.normalize import QuantileNormalizer


class ChunkLocation(NamedTuple):
    """Where chunk i comes from: `episodes[episode].actions[start:start + H]`, original step `step`."""

    episode: int
    start: int
    step: int


class ChunkDataset(Dataset):
    """Windows `(H, A)` of normalized actions at starts 0, stride, 2*stride, ... of every episode.

    Each window lies inside one episode (starts `0 .. T - H`); when `stride` does not divide `T - H`
    the last `(T - H) % stride` steps are not the start of any window. Items are float32 tensors;
    `locate(i)` (or `episode_ids` / `starts`) says which episode and start each one has.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        horizon: int,
        stride: int = 1,
        normalizer: QuantileNormalizer | None = None,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon ({horizon}) must be >= 1")
        if stride < 1:
            raise ValueError(f"stride ({stride}) must be >= 1")
        self.episodes = list(episodes)
        self.horizon, self.stride, self.normalizer = horizon, stride, normalizer
        dims = {e.action_dim for e in self.episodes}
        if len(dims) > 1:
            raise ValueError(f"episodes have different action dims {sorted(dims)}; pad or filter them first")
        self.action_dim = dims.pop() if dims else (normalizer.action_dim if normalizer else 0)
        self._actions: list[torch.Tensor] = []  # per episode (T, A) float32, normalized
        index: list[torch.Tensor] = []
        for i, ep in enumerate(self.episodes):
            if len(ep) < horizon:
                raise ValueError(f"{ep.where}: episode has {len(ep)} steps, fewer than horizon {horizon}")
            actions = normalizer.normalize(ep.actions) if normalizer is not None else ep.actions
            self._actions.append(torch.as_tensor(actions, dtype=torch.float32))
            starts = torch.arange(0, len(ep) - horizon + 1, stride)  # (n_i,)
            index.append(torch.stack([torch.full_like(starts, i), starts], dim=1))  # (n_i, 2)
        self._index = torch.cat(index) if index else torch.zeros(0, 2, dtype=torch.long)  # (N, 2)

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        """Chunk `i` as a (H, A) float32 tensor."""
        episode, start = self._index[i].tolist()
        return self._actions[episode][start : start + self.horizon]

    @property
    def episode_ids(self) -> torch.Tensor:
        """(N,) index into `episodes` of each chunk."""
        return self._index[:, 0]

    @property
    def starts(self) -> torch.Tensor:
        """(N,) start of each chunk within its episode's `actions`."""
        return self._index[:, 1]

    def locate(self, i: int) -> ChunkLocation:
        """Episode, start within it, and step within the original demo of chunk `i`."""
        episode, start = self._index[i].tolist()
        return ChunkLocation(episode, start, self.episodes[episode].offset + start)

    def all_chunks(self) -> torch.Tensor:
        """Every chunk stacked, (N, H, A) float32."""
        if not self._actions:
            return torch.zeros(0, self.horizon, self.action_dim)
        windows = [
            rearrange(a.unfold(0, self.horizon, self.stride), "n a h -> n h a")  # (T, A) -> (n_i, H, A)
            for a in self._actions
        ]
        return torch.cat(windows)

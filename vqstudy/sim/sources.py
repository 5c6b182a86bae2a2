"""Action sources for closed-loop rollouts: the scripted expert, its open-loop chunks, and those
chunks passed through an `ActionTokenizer`.

A source gets one batch with the observations of every live environment and returns an action chunk
for each, `(B, H, 4)`; the harness executes each chunk open loop for H steps, then asks again.
Learned policies implement the same `ActionSource` protocol and ignore `envs` (only the privileged
expert sources look at the simulators).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch

from vqstudy.sim.env import ACTION_DIM, MetaWorldEnv


class SourceBatch(NamedTuple):
    """What an action source sees at one decision step (B live environments)."""

    obs: np.ndarray
    """(B, 39) float64 observations."""
    task_ids: np.ndarray
    """(B,) int64 index of each environment's task in the evaluated task list."""
    tasks: list[str]
    """(B,) task names."""
    steps: np.ndarray
    """(B,) int64 steps already taken in each episode."""
    envs: Sequence[MetaWorldEnv]
    """The live simulators (privileged: for scripted sources only; a source must leave them as it found them)."""
    rng: np.random.Generator
    """Seeded by the harness, for sources that sample."""


@runtime_checkable
class ActionSource(Protocol):
    """Batched observations -> action chunks `(B, H, 4)` in the environment's units ([-1, 1])."""

    name: str
    horizon: int
    """H, steps executed from each chunk before the source is asked again."""

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        ...


class ExpertSource:
    """The scripted Meta-World expert, one step at a time (the ceiling)."""

    horizon = 1

    def __init__(self) -> None:
        self.name = "expert"

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        actions = [env.expert_action(obs) for env, obs in zip(batch.envs, batch.obs)]
        return np.stack(actions)[:, None]  # (B, 4) -> (B, 1, 4)


class ExpertChunkSource:
    """What the expert would do over the next H steps from the current state: rolled forward on the
    simulator from a snapshot, which is then restored exactly. Executed open loop, it isolates the
    cost of chunking alone."""

    def __init__(self, horizon: int) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon ({horizon!r}) must be an integer >= 1")
        self.horizon = horizon
        self.name = f"expert_chunks_h{horizon}"

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        chunks = np.empty((len(batch.obs), self.horizon, ACTION_DIM), dtype=np.float32)  # (B, H, 4)
        for b, (env, obs) in enumerate(zip(batch.envs, batch.obs)):
            snap = env.snapshot() if self.horizon > 1 else None
            for h in range(self.horizon):
                chunks[b, h] = env.expert_action(obs)
                if h + 1 < self.horizon:
                    obs = env.step(chunks[b, h]).obs
            if snap is not None:
                env.restore(snap)
        return chunks


class TokenizedSource:
    """Chunks of another source encoded and decoded by an `ActionTokenizer` (batched) before execution:
    the tokenizer's closed-loop floor. Also records the chunks' reconstruction error (open loop)."""

    def __init__(self, inner: ActionSource, tokenizer: Any, name: str | None = None) -> None:
        if tokenizer.action_dim != ACTION_DIM:
            raise ValueError(f"tokenizer action_dim ({tokenizer.action_dim}) does not match the Meta-World "
                             f"action dim {ACTION_DIM}")
        if tokenizer.horizon != inner.horizon:
            raise ValueError(f"tokenizer horizon ({tokenizer.horizon}) does not match the source's chunk "
                             f"horizon ({inner.horizon}); use --horizon {tokenizer.horizon}")
        self.inner, self.tokenizer = inner, tokenizer
        self.horizon = inner.horizon
        self.name = name or f"{inner.name}+tokenizer"
        self._sq_err = 0.0
        self._count = 0

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        chunks = self.inner(batch)  # (B, H, 4)
        ids = self.tokenizer.encode(torch.as_tensor(chunks, dtype=torch.float32))  # (B, L)
        decoded = self.tokenizer.decode(ids).detach().cpu().numpy().astype(np.float32)  # (B, H, 4)
        self._sq_err += float(((decoded - chunks) ** 2).sum())
        self._count += chunks.size
        return decoded

    def stats(self) -> dict[str, float]:
        """Open-loop reconstruction error of the executed chunks (mean squared, action units)."""
        return {"chunk_mse": self._sq_err / max(self._count, 1)}

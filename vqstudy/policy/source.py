"""A learned policy as an `ActionSource` of the closed-loop harness (`vqstudy.sim.rollout.evaluate`).

Each call runs one batched forward pass over every live environment of the task (the harness's
`num_envs` lockstep simulators) and returns the first `execute` steps of each predicted chunk; the
harness executes them open loop and asks again (re-planning every `execute` steps; `execute = H`, the
default, runs whole chunks open loop). The simulators in the batch are never touched.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from vqstudy.policy.model import LearnedPolicy
from vqstudy.sim.sources import SourceBatch


class PolicySource:
    """`ActionSource` over a `LearnedPolicy`; also records its open-loop inference time."""

    def __init__(self, policy: LearnedPolicy, execute: int | None = None, name: str | None = None) -> None:
        execute = policy.horizon if execute is None else execute
        if isinstance(execute, bool) or not isinstance(execute, int) or not 1 <= execute <= policy.horizon:
            raise ValueError(f"execute ({execute!r}) must be an integer in [1, {policy.horizon}] (the chunk horizon)")
        self.policy = policy.eval()
        self.horizon = execute
        self.name = name or policy.name + (f"@{execute}" if execute != policy.horizon else "")
        self._calls = 0
        self._rows = 0
        self._seconds = 0.0

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        start = time.perf_counter()
        with torch.inference_mode():
            chunks = self.policy.act(batch.obs, batch.tasks)  # (B, H, 4)
        self._seconds += time.perf_counter() - start
        self._calls += 1
        self._rows += len(batch.obs)
        return chunks[:, : self.horizon]

    def stats(self) -> dict[str, float]:
        """Mean batch size and inference milliseconds per call."""
        calls = max(self._calls, 1)
        return {"mean_batch": self._rows / calls, "infer_ms_per_call": 1000 * self._seconds / calls}

"""The simulator: Meta-World tasks with seeded initial states and scripted experts (`env`), expert
recording (`record`), the demonstration maker (`demos`), action sources (`sources`), the closed-loop
harness (`rollout`) and the command handlers (`commands`).

Needs the optional extra: `pip install 'vqstudy[sim]'`. Names are imported lazily: importing this
package imports neither Meta-World nor torch; the functions that need Meta-World raise an ImportError
naming the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "ACTION_DIM": "vqstudy.sim.env",
    "OBS_DIM": "vqstudy.sim.env",
    "MetaWorldEnv": "vqstudy.sim.env",
    "initial_state_seed": "vqstudy.sim.env",
    "resolve_tasks": "vqstudy.sim.env",
    "record_expert_episode": "vqstudy.sim.record",
    "DemoRequest": "vqstudy.sim.demos",
    "DemoSummary": "vqstudy.sim.demos",
    "make_demonstrations": "vqstudy.sim.demos",
    "read_demo_seeds": "vqstudy.sim.demos",
    "split_by_episode": "vqstudy.sim.demos",
    "ActionSource": "vqstudy.sim.sources",
    "SourceBatch": "vqstudy.sim.sources",
    "ExpertSource": "vqstudy.sim.sources",
    "ExpertChunkSource": "vqstudy.sim.sources",
    "TokenizedSource": "vqstudy.sim.sources",
    "RolloutConfig": "vqstudy.sim.rollout",
    "EvalResult": "vqstudy.sim.rollout",
    "evaluate": "vqstudy.sim.rollout",
    "wilson_interval": "vqstudy.sim.rollout",
    "write_eval": "vqstudy.sim.rollout",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vqstudy.sim' has no attribute {name!r}")

"""The simulator: Meta-World tasks with seeded initial states and scripted experts (`env`), the
demonstration maker (`demos`), action sources (`sources`) and the closed-loop harness (`rollout`).

Needs the optional extra: `pip install 'vqstudy[sim]'`. Importing this package does not import
Meta-World; the functions that need it raise an ImportError naming the extra.
"""

from vqstudy.sim.demos import DemoRequest, DemoSummary, make_demonstrations, read_demo_seeds, split_by_episode
from vqstudy.sim.env import ACTION_DIM, OBS_DIM, MetaWorldEnv, initial_state_seed, resolve_tasks
from vqstudy.sim.rollout import EvalResult, RolloutConfig, evaluate, wilson_interval, write_eval
from vqstudy.sim.sources import ActionSource, ExpertChunkSource, ExpertSource, SourceBatch, TokenizedSource

__all__ = [
    "ACTION_DIM", "OBS_DIM", "ActionSource", "DemoRequest", "DemoSummary", "EvalResult", "ExpertChunkSource",
    "ExpertSource", "MetaWorldEnv", "RolloutConfig", "SourceBatch", "TokenizedSource", "evaluate",
    "initial_state_seed", "make_demonstrations", "read_demo_seeds", "resolve_tasks", "split_by_episode",
    "wilson_interval", "write_eval",
]

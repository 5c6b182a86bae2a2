"""Closed-loop evaluation of an action source on Meta-World: success with Wilson intervals, episode
length, action smoothness, and where the time goes.

Rollouts start from held-out initial states (`initial_state_seed(seed, task, i, "eval")`, disjoint from
every demonstration seed) and end at the first success or after `max_steps`. Every task gets
`num_envs` simulators and all of them run together: at each step the source gets one batch with the
observations of every live simulator that has finished its chunk (all tasks mixed, `task_ids` says
which) and returns chunks `(B, H, 4)`, each executed open loop for its H steps. A simulator whose
rollout ends starts its task's next rollout. Given the seed (and `num_envs`) the result is
deterministic; episodes are reported in (task, rollout) order.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vqstudy.files import write_atomic
from vqstudy.sim.env import ACTION_DIM, DEFAULT_MAX_STEPS, MetaWorldEnv, initial_state_seed, resolve_tasks
from vqstudy.sim.sources import ActionSource, SourceBatch

Z95 = 1.959963984540054
"""Two-sided 95% standard normal quantile."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927): (low, high) in [0, 1]."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes ({successes}) <= n ({n}) and n >= 1")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding leaves 1 - 1e-16
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def smoothness(actions: np.ndarray) -> float:
    """Mean squared second difference of executed actions `(T, A)` (0.0 when T < 3)."""
    if len(actions) < 3:
        return 0.0
    d2 = actions[2:] - 2 * actions[1:-1] + actions[:-2]  # (T - 2, A)
    return float(np.mean(d2.astype(np.float64) ** 2))


@dataclass
class RolloutConfig:
    """Which rollouts to run."""

    tasks: list[str]
    """Meta-World task names."""
    n: int = 50
    """Rollouts per task."""
    seed: int = 0
    """Base seed of the held-out initial states (split 'eval') and of the source's rng."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Steps before an unsuccessful rollout is cut."""
    num_envs: int = 10
    """Simulators per task run in lockstep (the source's batch size)."""

    def __post_init__(self) -> None:
        for name in ("n", "max_steps", "num_envs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} ({value!r}) must be an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed ({self.seed!r}) must be an integer >= 0")


class EpisodeResult(NamedTuple):
    task: str
    seed: int
    success: bool
    length: int
    """Steps executed (to the first success, else max_steps)."""
    smoothness: float


class TaskResult(NamedTuple):
    """Aggregates over a task's rollouts (or all of them, task="overall")."""

    task: str
    n: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    mean_smoothness: float


class Timing(NamedTuple):
    wall_s: float
    setup_s: float
    """Building simulators (excluded from the rates and fractions below)."""
    env_steps: int
    """Executed environment steps (lookahead inside sources not counted)."""
    env_steps_per_s: float
    sim_fraction: float
    """Share of the rollout time (wall minus setup) spent inside executed simulator steps."""
    source_fraction: float
    """Share spent inside the source (policy inference, expert lookahead, tokenization)."""


@dataclass
class EvalResult:
    source: str
    horizon: int
    config: RolloutConfig
    tasks: list[TaskResult]
    overall: TaskResult
    timing: Timing
    episodes: list[EpisodeResult] = field(default_factory=list)
    source_stats: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "horizon": self.horizon, "config": asdict(self.config),
            "overall": self.overall._asdict(), "tasks": [t._asdict() for t in self.tasks],
            "timing": self.timing._asdict(), "source_stats": self.source_stats,
            "episodes": [e._asdict() for e in self.episodes],
        }


def aggregate(task: str, episodes: Sequence[EpisodeResult]) -> TaskResult:
    """Success rate with its Wilson 95% interval, mean length and smoothness of `episodes`."""
    n = len(episodes)
    k = sum(e.success for e in episodes)
    low, high = wilson_interval(k, n)
    return TaskResult(task, n, k, k / n, low, high, float(np.mean([e.length for e in episodes])),
                      float(np.mean([e.smoothness for e in episodes])))


class _Slot:
    """One simulator and the rollout it is running."""

    def __init__(self, env: MetaWorldEnv, task_id: int) -> None:
        self.env, self.task_id = env, task_id
        self.index = self.seed = -1
        self.obs = np.zeros(0)
        self.actions: list[np.ndarray] = []
        self.chunk: np.ndarray | None = None
        self.pos = 0
        self.success = False

    def start(self, index: int, seed: int) -> None:
        self.index, self.seed = index, seed
        self.obs = self.env.reset(seed)
        self.actions, self.chunk, self.pos, self.success = [], None, 0, False


def _check_chunks(chunks: Any, batch: int, source: str, tasks: list[str]) -> np.ndarray:
    task = ", ".join(tasks)
    chunks = np.asarray(chunks, dtype=np.float32)
    if chunks.ndim != 3 or chunks.shape[0] != batch or chunks.shape[1] < 1 or chunks.shape[2] != ACTION_DIM:
        raise ValueError(f"source {source!r} returned shape {chunks.shape} on {task}; expected ({batch}, H, {ACTION_DIM})")
    if not np.isfinite(chunks).all():
        raise ValueError(f"source {source!r} returned {int((~np.isfinite(chunks)).sum())} non-finite actions on {task}")
    return np.clip(chunks, -1.0, 1.0)


def evaluate(
    source: ActionSource,
    config: RolloutConfig,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    env_cache: dict[str, list[MetaWorldEnv]] | None = None,
) -> EvalResult:
    """Run `config.n` closed-loop rollouts of `source` per task from held-out initial states.
    `env_cache` (task -> simulators) keeps simulators for later calls instead of building and
    closing them (building one takes ~0.2 s; a seeded reset makes reuse exact)."""
    tasks = resolve_tasks(config.tasks)
    done: list[tuple[int, int, EpisodeResult]] = []  # (task_id, rollout index, result)
    t_source = t_sim = 0.0
    steps = 0
    start = time.perf_counter()
    want = min(config.num_envs, config.n)
    slots: list[_Slot] = []
    for task_id, task in enumerate(tasks):
        pool = env_cache.setdefault(task, []) if env_cache is not None else []
        pool += [MetaWorldEnv(task) for _ in range(want - len(pool))]
        slots += [_Slot(env, task_id) for env in pool[:want]]
    t_setup = time.perf_counter() - start
    next_index = [0] * len(tasks)

    def refill(slot: _Slot) -> bool:
        """Start the task's next rollout on this simulator; False when the task has none left."""
        i = next_index[slot.task_id]
        if i >= config.n:
            return False
        next_index[slot.task_id] += 1
        slot.start(i, initial_state_seed(config.seed, tasks[slot.task_id], i, "eval"))
        return True

    live = [s for s in slots if refill(s)]
    rng = np.random.default_rng(config.seed)
    while live:
        need = [s for s in live if s.chunk is None or s.pos == len(s.chunk)]
        if need:
            batch = SourceBatch(
                obs=np.stack([s.obs for s in need]),
                task_ids=np.array([s.task_id for s in need], dtype=np.int64),
                tasks=[tasks[s.task_id] for s in need],
                steps=np.array([s.env.steps for s in need], dtype=np.int64),
                envs=[s.env for s in need], rng=rng)
            t0 = time.perf_counter()
            chunks = _check_chunks(source(batch), len(need), source.name, sorted(set(batch.tasks)))
            t_source += time.perf_counter() - t0
            for s, chunk in zip(need, chunks):
                s.chunk, s.pos = chunk, 0
        still = []
        for s in live:
            action = s.chunk[s.pos]
            s.pos += 1
            t0 = time.perf_counter()
            s.obs, _, s.success = s.env.step(action)
            t_sim += time.perf_counter() - t0
            steps += 1
            s.actions.append(action)
            if s.success or s.env.steps >= config.max_steps:
                result = EpisodeResult(tasks[s.task_id], s.seed, s.success, s.env.steps, smoothness(np.stack(s.actions)))
                done.append((s.task_id, s.index, result))
                if on_episode is not None:
                    on_episode(result)
                if refill(s):
                    still.append(s)
            else:
                still.append(s)
        live = still
    if env_cache is None:
        for s in slots:
            s.env.close()
    episodes = [r for _, _, r in sorted(done, key=lambda d: d[:2])]
    wall = time.perf_counter() - start
    per_task = [aggregate(task, [e for e in episodes if e.task == task]) for task in tasks]
    busy = wall - t_setup
    timing = Timing(wall, t_setup, steps, steps / busy if busy > 0 else 0.0, t_sim / busy if busy > 0 else 0.0,
                    t_source / busy if busy > 0 else 0.0)
    stats = source.stats() if callable(getattr(source, "stats", None)) else {}
    return EvalResult(source.name, source.horizon, RolloutConfig(tasks, config.n, config.seed, config.max_steps,
                      config.num_envs), per_task, aggregate("overall", episodes), timing, episodes, stats)


def markdown_table(results: Sequence[EvalResult]) -> str:
    """One row per (source, task) and an overall row per source."""
    lines = ["| source | task | n | success | 95% interval | mean length | smoothness |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for t in [*r.tasks, r.overall]:
            name = f"**{t.task}**" if t.task == "overall" else t.task
            lines.append(f"| {r.source} | {name} | {t.n} | {t.success_rate:.3f} | [{t.ci_low:.3f}, {t.ci_high:.3f}] | "
                         f"{t.mean_length:.1f} | {t.mean_smoothness:.4f} |")
    return "\n".join(lines) + "\n"


def write_eval(results: Sequence[EvalResult], out: str | Path, header: str = "") -> tuple[Path, Path]:
    """`out/eval.json` (every rollout) and `out/eval.md` (the table, timing, `header` on top)."""
    out = Path(out)
    json_path, md_path = out / "eval.json", out / "eval.md"
    write_atomic(json_path, (json.dumps([r.to_dict() for r in results], indent=2) + "\n").encode())
    timing = ["| source | env steps | env steps/s | sim fraction | source fraction | wall (s) | setup (s) | source stats |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r.timing
        extra = ", ".join(f"{k}={v:.3g}" for k, v in r.source_stats.items())
        timing.append(f"| {r.source} | {t.env_steps} | {t.env_steps_per_s:.0f} | {t.sim_fraction:.2f} | "
                      f"{t.source_fraction:.2f} | {t.wall_s:.1f} | {t.setup_s:.1f} | {extra} |")
    text = (header + "\n\n" if header else "") + markdown_table(results) + "\n" + "\n".join(timing) + "\n"
    write_atomic(md_path, text.encode())
    return json_path, md_path

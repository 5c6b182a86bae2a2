"""Scripted-expert demonstrations on Meta-World, written as a LeRobot v3.0 dataset.

Layout (read back by `vqstudy.actions.data.lerobot.load_lerobot`):

    DIR/data/chunk-000/file-{k:03d}.parquet     one file per task k (in the order given), all its episodes
    DIR/meta/info.json                          LeRobot info: version v3.0, fps, features, counts
    DIR/meta/tasks.parquet                      task_index, task
    DIR/meta/episodes/chunk-000/file-000.parquet  one row per episode (length, seed, success, file, rows)
    DIR/meta/metaworld.json                     how it was made: seeds per episode, package versions, counts
    DIR/meta/make.json                          the request (tasks, episodes, seed, max steps), written first

Per step: `observation.state` (39), `action` (4, the clipped action executed), `observation.hand_pos`,
`observation.hand_vel` (3 each, before the action), `next.reward`, `next.success`, `next.done`,
`task_name`, and LeRobot's `episode_index`, `frame_index`, `index`, `task_index`, `timestamp`.
An episode ends at the expert's first success or after `max_steps`; failed episodes are kept, with
`success = False` in the episode table.

Each task file is written atomically once all its episodes are done, so an interrupted run resumes
by skipping the task files already there (the request must match `make.json`); the meta files are
written last. Nothing depends on time or on the order of resumption: the same request gives the
same bytes.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vqstudy.actions.data.episode import Episode
from vqstudy.actions.data.trajectories import EpisodeSplit, split_episodes
from vqstudy.files import write_atomic
from vqstudy.sim.env import (
    ACTION_DIM,
    DEFAULT_MAX_STEPS,
    OBS_DIM,
    import_metaworld,
    initial_state_seed,
    package_versions,
    resolve_tasks,
)
from vqstudy.sim.record import EpisodeRecord, record_task

logger = logging.getLogger(__name__)

FORMAT_NAME = "vqstudy-metaworld-demos"
FORMAT_VERSION = 1
CHUNK = "chunk-000"
FPS = 80.0
"""Steps per second of simulated time: Meta-World's frame_skip 5 x MuJoCo timestep 0.0025 s (checked in tests)."""
VECTOR_COLUMNS = {"observation.state": OBS_DIM, "action": ACTION_DIM, "observation.hand_pos": 3, "observation.hand_vel": 3}


@dataclass
class DemoRequest:
    """What to record; stored in `meta/make.json` and checked when a run resumes."""

    tasks: list[str]
    """Meta-World task names, in file order."""
    episodes: int = 50
    """Expert episodes per task."""
    seed: int = 0
    """Base seed; episode e of task t starts from `initial_state_seed(seed, t, e, "train")`."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Steps before an unsuccessful episode is cut (and flagged failed)."""
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes < 1:
            raise ValueError(f"episodes ({self.episodes!r}) must be an integer >= 1")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps ({self.max_steps!r}) must be an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed ({self.seed!r}) must be an integer >= 0")


class TaskShard(NamedTuple):
    """One finished task file: what the progress callback and the summary see."""

    task: str
    task_index: int
    path: Path
    episodes: int
    frames: int
    successes: int
    resumed: bool
    """True when the file was already there (not re-recorded)."""


@dataclass
class DemoSummary:
    """What `make_demonstrations` wrote."""

    out: Path
    request: DemoRequest
    shards: list[TaskShard] = field(default_factory=list)

    @property
    def episodes(self) -> int:
        return sum(s.episodes for s in self.shards)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.shards)

    @property
    def successes(self) -> int:
        return sum(s.successes for s in self.shards)

    @property
    def recorded_episodes(self) -> int:
        """Episodes simulated in this call (resumed task files excluded)."""
        return sum(s.episodes for s in self.shards if not s.resumed)


def _shard_path(out: Path, k: int) -> Path:
    return out / "data" / CHUNK / f"file-{k:03d}.parquet"


def _vector(pa, rows: np.ndarray, dim: int):
    flat = pa.array(np.ascontiguousarray(rows, dtype=np.float32).reshape(-1))  # (T, D) -> (T * D,)
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _shard_table(records: Sequence[EpisodeRecord], task_index: int, first_episode: int, first_frame: int, fps: float):
    import pyarrow as pa

    lengths = [len(r.action) for r in records]
    n = sum(lengths)
    episode_index = np.repeat(np.arange(first_episode, first_episode + len(records)), lengths)
    frame_index = np.concatenate([np.arange(t) for t in lengths])
    done = np.concatenate([np.arange(t) == t - 1 for t in lengths])
    cat = lambda key: np.concatenate([getattr(r, key) for r in records])  # noqa: E731
    columns = {
        "observation.state": _vector(pa, cat("state"), OBS_DIM),
        "action": _vector(pa, cat("action"), ACTION_DIM),
        "observation.hand_pos": _vector(pa, cat("hand_pos"), 3),
        "observation.hand_vel": _vector(pa, cat("hand_vel"), 3),
        "next.reward": pa.array(cat("reward"), pa.float32()),
        "next.success": pa.array(cat("success"), pa.bool_()),
        "next.done": pa.array(done, pa.bool_()),
        "task_name": pa.array([records[0].task] * n, pa.string()),
        "episode_index": pa.array(episode_index, pa.int64()),
        "frame_index": pa.array(frame_index, pa.int64()),
        "index": pa.array(np.arange(first_frame, first_frame + n), pa.int64()),
        "task_index": pa.array(np.full(n, task_index), pa.int64()),
        "timestamp": pa.array((frame_index / fps).astype(np.float32), pa.float32()),
    }
    return pa.table(columns)


def _check_out_dir(out: Path, request: DemoRequest) -> bool:
    """True when `out` holds an earlier run of the same request (resume); raise when it holds anything else."""
    make = out / "meta" / "make.json"
    if make.exists():
        before = json.loads(make.read_text())
        if before != asdict(request):
            changed = sorted(k for k in set(before) | set(asdict(request)) if before.get(k) != asdict(request).get(k))
            raise ValueError(f"{out} holds a different request (fields {changed} differ from {make}); "
                             "use a new --out or the same arguments to resume")
        return True
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty (no meta/make.json); give an empty or new directory")
    return False


def make_demonstrations(
    out: str | Path,
    tasks: str | Sequence[str] = "mt10",
    episodes: int = 50,
    seed: int = 0,
    max_steps: int = DEFAULT_MAX_STEPS,
    workers: int = 1,
    on_episode: Callable[[str, int], None] | None = None,
    on_task: Callable[[TaskShard], None] | None = None,
) -> DemoSummary:
    """Record `episodes` scripted-expert episodes per task into the LeRobot v3.0 dataset `out`
    (resuming a matching interrupted run). `workers` > 1 records tasks in that many spawned processes
    (the bytes do not change; a calling script needs the `if __name__ == "__main__":` guard). `on_episode(task, e)` and `on_task(shard)` report progress; with workers,
    a task's episodes are reported when the task is done."""
    import_metaworld()
    import pyarrow.parquet as pq

    request = DemoRequest(tasks=resolve_tasks(tasks), episodes=episodes, seed=seed, max_steps=max_steps)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers ({workers!r}) must be an integer >= 1")
    out = Path(out)
    resuming = _check_out_dir(out, request)
    if not resuming:
        write_atomic(out / "meta" / "make.json", (json.dumps(asdict(request), indent=2) + "\n").encode())
    pending = [task for k, task in enumerate(request.tasks) if not _shard_path(out, k).exists()]
    args = (request.episodes, request.seed, request.max_steps)
    pool = None
    if workers > 1 and len(pending) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(min(workers, len(pending)), mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {task: pool.submit(record_task, task, *args) for task in pending} if pool is not None else {}
        summary = DemoSummary(out, request)
        frames = 0
        for k, task in enumerate(request.tasks):
            path = _shard_path(out, k)
            if task not in pending:
                episode_index = pq.read_table(path, columns=["episode_index"]).column("episode_index").to_numpy()
                shard = TaskShard(task, k, path, len(np.unique(episode_index)), len(episode_index),
                                  _shard_successes(path), resumed=True)
                logger.info("%s: %s already recorded, skipped", task, path)
            else:
                if pool is not None:
                    records = futures[task].result()
                    for e in range(len(records)):
                        if on_episode is not None:
                            on_episode(task, e)
                else:
                    records = record_task(task, *args, on_episode=on_episode)
                table = _shard_table(records, k, k * request.episodes, frames, FPS)
                write_atomic(path, _parquet_bytes(table))
                shard = TaskShard(task, k, path, len(records), table.num_rows, sum(r.succeeded for r in records), False)
            frames += shard.frames
            summary.shards.append(shard)
            if on_task is not None:
                on_task(shard)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    _write_meta(out, request)
    return summary


def _shard_successes(path: Path) -> int:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["episode_index", "next.success"])
    ep, ok = table.column("episode_index").to_numpy(), table.column("next.success").to_numpy()
    return int(sum(ok[ep == e].any() for e in np.unique(ep)))


def _write_meta(out: Path, request: DemoRequest) -> None:
    """Episode table, tasks, info.json and metaworld.json from the task files on disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: dict[str, list[Any]] = {k: [] for k in (
        "episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
        "dataset_to_index", "task_index", "seed", "success", "success_step")}
    seeds: dict[str, list[int]] = {}
    per_task: dict[str, dict[str, int]] = {}
    for k, task in enumerate(request.tasks):
        table = pq.read_table(_shard_path(out, k), columns=["episode_index", "index", "next.success"])
        ep = table.column("episode_index").to_numpy()
        index = table.column("index").to_numpy()
        ok = table.column("next.success").to_numpy()
        seeds[task] = [initial_state_seed(request.seed, task, e, "train") for e in range(request.episodes)]
        wins = 0
        for e, episode in enumerate(np.unique(ep)):
            mask = ep == episode
            hits = np.flatnonzero(ok[mask])
            wins += bool(hits.size)
            for key, value in (("episode_index", int(episode)), ("tasks", [task]), ("length", int(mask.sum())),
                               ("data/chunk_index", 0), ("data/file_index", k),
                               ("dataset_from_index", int(index[mask][0])), ("dataset_to_index", int(index[mask][-1]) + 1),
                               ("task_index", k), ("seed", seeds[task][e]), ("success", bool(hits.size)),
                               ("success_step", int(hits[0]) if hits.size else -1)):
                rows[key].append(value)
        per_task[task] = {"episodes": int(len(np.unique(ep))), "frames": int(len(ep)), "successes": wins}
    types = {"tasks": pa.list_(pa.string()), "success": pa.bool_()}
    episodes = pa.table({k: pa.array(v, types.get(k, pa.int64())) for k, v in rows.items()})
    write_atomic(out / "meta" / "episodes" / CHUNK / "file-000.parquet", _parquet_bytes(episodes))
    tasks = pa.table({"task_index": pa.array(range(len(request.tasks)), pa.int64()),
                      "task": pa.array(request.tasks, pa.string())})
    write_atomic(out / "meta" / "tasks.parquet", _parquet_bytes(tasks))
    total_episodes, total_frames = len(rows["episode_index"]), sum(rows["length"])
    failed = total_episodes - sum(rows["success"])
    features: dict[str, Any] = {k: {"dtype": "float32", "shape": [d], "names": None} for k, d in VECTOR_COLUMNS.items()}
    features["observation.hand_pos"]["names"] = features["observation.hand_vel"]["names"] = ["x", "y", "z"]
    features["action"]["names"] = ["dx", "dy", "dz", "gripper"]
    features.update({
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "task_name": {"dtype": "string", "shape": [1], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None}
           for k in ("episode_index", "frame_index", "index", "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    })
    info = {
        "codebase_version": "v3.0",
        "robot_type": "sawyer",
        "total_episodes": total_episodes,
        "total_frames": total_frames,
        "total_tasks": len(request.tasks),
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{total_episodes}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
        "features": features,
    }
    made = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "request": asdict(request),
        "seed_split": "train",
        "seeds": seeds,
        "counts": {"episodes": total_episodes, "frames": total_frames, "failed_episodes": failed,
                   "tasks": per_task},
        "versions": package_versions(),
    }
    write_atomic(out / "meta" / "metaworld.json", (json.dumps(made, indent=2) + "\n").encode())
    write_atomic(out / "meta" / "info.json", (json.dumps(info, indent=2) + "\n").encode())


def read_demo_seeds(root: str | Path) -> dict[str, list[int]]:
    """Initial-state seeds per task of a dataset written by `make_demonstrations`."""
    path = Path(root) / "meta" / "metaworld.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {root} is not a dataset written by `vqstudy data make metaworld`")
    return {task: [int(s) for s in seeds] for task, seeds in json.loads(path.read_text())["seeds"].items()}


def split_by_episode(episodes: Sequence[Episode], val_fraction: float, seed: int = 0) -> EpisodeSplit:
    """Hold out whole episodes (i.e. initial states) per task, never time blocks: each task keeps
    round(n_task * val_fraction) of its episodes (at least one) for validation."""
    by_task: dict[str, list[Episode]] = {}
    for episode in episodes:
        by_task.setdefault(episode.task, []).append(episode)
    train: list[Episode] = []
    val: list[Episode] = []
    for i, task in enumerate(sorted(by_task)):
        part = split_episodes(by_task[task], val_fraction, seed=seed + i, split="episode")
        train += part.train
        val += part.val
    return EpisodeSplit(train, val)

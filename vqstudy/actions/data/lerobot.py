"""LeRobot parquet datasets (v2.x and v3.0) read from a local directory with pyarrow.

v2.x: `data/chunk-XXX/episode_XXXXXX.parquet` (one episode per file), `meta/info.json`,
`meta/episodes.jsonl`, `meta/tasks.jsonl` (`{"task_index": i, "task": "..."}` per line).
v3.0: `data/chunk-XXX/file-XXX.parquet` (many episodes per file, `episode_index` column),
`meta/episodes/chunk-XXX/file-XXX.parquet`, `meta/tasks.parquet` (task strings as the pandas index
or a `task` column, plus `task_index`).

Both are read the same way: every `data/**/*.parquet` row, grouped by `episode_index`, ordered by
`frame_index`. Actions come from `actions` (LIBERO conversions) or `action`; observations are the
numeric vector columns `state` / `observation.*` (image columns are left out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vqstudy.actions.data.episode import (
    Episode,
    LoadResult,
    OnError,
    SkippedEpisode,
    TrajectoryDataError,
    check_on_error,
    handle_error,
    validate_actions,
    validate_obs,
)

logger = logging.getLogger(__name__)

ACTION_COLUMNS = ("actions", "action")
INDEX_COLUMNS = ("episode_index", "frame_index", "index", "task_index", "timestamp")


def _import_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is a core dependency
        raise ImportError("reading LeRobot datasets needs pyarrow: pip install 'pyarrow>=15'") from err
    return pa, pq


def read_tasks(root: Path) -> dict[int, str]:
    """`task_index -> task` from `meta/tasks.jsonl` (v2.x) or `meta/tasks.parquet` (v3.0); {} if neither."""
    jsonl = root / "meta" / "tasks.jsonl"
    if jsonl.exists():
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        return {int(r["task_index"]): str(r["task"]) for r in rows}
    table_path = root / "meta" / "tasks.parquet"
    if table_path.exists():
        _, pq = _import_pyarrow()
        frame = pq.read_table(table_path).to_pandas()
        texts = frame["task"] if "task" in frame.columns else frame.index
        return {int(i): str(t) for i, t in zip(frame["task_index"], texts)}
    return {}


def _is_vector_column(pa, dtype) -> bool:
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        return pa.types.is_integer(dtype.value_type) or pa.types.is_floating(dtype.value_type)
    return pa.types.is_floating(dtype)


def _column_array(pa, column, key: str, where: str) -> np.ndarray:
    """A list/fixed-size-list column as (N, D), a scalar float column as (N, 1)."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    n = len(column)
    if pa.types.is_floating(column.type):
        return column.to_numpy(zero_copy_only=False).reshape(n, 1)  # (N,) -> (N, 1)
    if column.null_count:
        raise TrajectoryDataError(f"{where}: column {key!r} has {column.null_count} null rows")
    values = column.flatten().to_numpy(zero_copy_only=False)
    if n == 0 or values.size % n:
        raise TrajectoryDataError(f"{where}: column {key!r} rows have different lengths, expected (T, A)")
    lengths = np.diff(column.offsets.to_numpy()) if hasattr(column, "offsets") else None
    if lengths is not None and (lengths != lengths[0]).any():
        raise TrajectoryDataError(f"{where}: column {key!r} rows have different lengths, expected (T, A)")
    return values.reshape(n, -1)  # (N * D,) -> (N, D)


def load_lerobot(
    root: str | Path,
    obs_keys: Sequence[str] | None = None,
    min_length: int = 1,
    on_error: OnError = "raise",
) -> LoadResult:
    """Read every episode of a local LeRobot v2.x or v3.0 dataset directory."""
    check_on_error(on_error)
    pa, pq = _import_pyarrow()
    root = Path(root)
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no data/**/*.parquet files (expected a LeRobot dataset directory)")
    info_path = root / "meta" / "info.json"
    version = json.loads(info_path.read_text()).get("codebase_version", "?") if info_path.exists() else "?"
    tasks = read_tasks(root)
    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    for file in files:
        source = str(file)
        schema = pq.read_schema(file)
        names = schema.names
        action_key = next((k for k in ACTION_COLUMNS if k in names), None)
        if action_key is None or "episode_index" not in names:
            missing = "'actions' or 'action'" if action_key is None else "'episode_index'"
            err = TrajectoryDataError(f"{source}: column {missing} missing; columns are {names}")
            handle_error(err, source, "*", on_error, skipped)
            continue
        if obs_keys is None:
            skip = set(ACTION_COLUMNS) | set(INDEX_COLUMNS)
            keys = [k for k in names if k not in skip and _is_vector_column(pa, schema.field(k).type)]
        else:
            keys = list(obs_keys)
            missing_obs = [k for k in keys if k not in names]
            not_vectors = [k for k in keys if k in names and not _is_vector_column(pa, schema.field(k).type)]
            if missing_obs or not_vectors:
                err = TrajectoryDataError(
                    f"{source}: observation columns {missing_obs} missing, {not_vectors} not numeric vectors "
                    f"(images are not loaded); columns are {names}"
                )
                handle_error(err, source, "*", on_error, skipped)
                continue
        columns = [action_key, *keys] + [k for k in ("episode_index", "frame_index", "task_index") if k in names]
        table = pq.read_table(file, columns=list(dict.fromkeys(columns)))  # images are never read
        episode_index = table.column("episode_index").to_numpy()
        frame_index = table.column("frame_index").to_numpy() if "frame_index" in names else np.arange(len(table))
        task_index = table.column("task_index").to_numpy() if "task_index" in names else None
        for ep in np.unique(episode_index):
            name = f"episode_{int(ep):06d}"
            where = f"{source}, {name}"
            rows = np.flatnonzero(episode_index == ep)
            rows = rows[np.argsort(frame_index[rows], kind="stable")]
            part = table.take(pa.array(rows))
            try:
                raw = _column_array(pa, part.column(action_key), action_key, where)  # (T, A)
                actions = validate_actions(raw, where, action_key, min_length)
                obs = {k: _column_array(pa, part.column(k), k, where) for k in keys}
                obs = validate_obs(obs, len(actions), where)
            except TrajectoryDataError as err:
                handle_error(err, source, name, on_error, skipped)
                continue
            task = tasks.get(int(task_index[rows[0]]), "") if task_index is not None else ""
            episodes.append(Episode(actions=actions, obs=obs, task=task, source=source, name=name))
    episodes.sort(key=lambda e: e.name)
    for a, b in zip(episodes, episodes[1:]):
        if a.name == b.name:
            raise TrajectoryDataError(f"{a.name} appears in both {a.source} and {b.source}; expected one file each")
    logger.info("%s (LeRobot %s): %d episodes, %d skipped", root, version, len(episodes), len(skipped))
    return LoadResult(episodes, skipped)

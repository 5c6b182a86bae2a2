"""Robomimic-layout hdf5 demonstrations: LIBERO `*_demo.hdf5` and the robosuite 1.0.1 demos.

Layout read here::

    data/                      attrs: problem_info (JSON, LIBERO), env_args (JSON), env (robosuite)
    data/demo_<i>/actions      (T, A)   LIBERO/robosuite OSC_POSE: 3 pos, 3 axis-angle deltas, gripper
    data/demo_<i>/obs/<key>    (T, ...) LIBERO: ee_pos, ee_ori, ee_states, gripper_states, joint_states,
                                        agentview_rgb, eye_in_hand_rgb
    data/demo_<i>/<key>        (T, ...) robot_states, states (MuJoCo sim state), joint_torques, ...

Observations: by default every low-dimensional (`(T,)` or `(T, D)`) dataset under `obs/` plus the
demo-level ones (`states`, `robot_states`, ...); images only when named in `obs_keys`, since a LIBERO
file holds ~1 GB of them.
"""

from __future__ import annotations

import json
import logging
import re
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

NOT_OBSERVATIONS = ("actions", "rewards", "dones")


def _import_h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is a core dependency
        raise ImportError("reading hdf5 demonstrations needs h5py: pip install 'h5py>=3.10'") from err
    return h5py


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def task_from_attrs(attrs, fallback: str) -> str:
    """LIBERO `problem_info.language_instruction`, else robosuite `env`, else `env_args.env_name`."""
    if "problem_info" in attrs:
        try:
            instruction = json.loads(_text(attrs["problem_info"])).get("language_instruction", "")
        except (json.JSONDecodeError, AttributeError):
            instruction = ""
        if isinstance(instruction, list):
            instruction = " ".join(instruction)
        if instruction:
            return str(instruction)
    if "env" in attrs:
        return _text(attrs["env"])
    if "env_args" in attrs:
        try:
            name = json.loads(_text(attrs["env_args"])).get("env_name", "")
        except (json.JSONDecodeError, AttributeError):
            name = ""
        if name:
            return str(name)
    return fallback


def _demo_order(name: str) -> tuple[int, str]:
    match = re.search(r"(\d+)$", name)
    return (int(match.group(1)) if match else -1, name)


def _read_obs(demo, obs_keys: Sequence[str] | None, where: str) -> dict[str, np.ndarray]:
    h5py = _import_h5py()
    found: dict[str, object] = {}
    if "obs" in demo and isinstance(demo["obs"], h5py.Group):
        found.update({k: v for k, v in demo["obs"].items() if isinstance(v, h5py.Dataset)})
    for key, value in demo.items():
        if key not in NOT_OBSERVATIONS and key not in found and isinstance(value, h5py.Dataset):
            found[key] = value
    if obs_keys is None:
        return {k: np.asarray(v[()]) for k, v in found.items() if 1 <= v.ndim <= 2}
    missing = [k for k in obs_keys if k not in found]
    if missing:
        raise TrajectoryDataError(f"{where}: observation keys {missing} not found; available: {sorted(found)}")
    return {k: np.asarray(found[k][()]) for k in obs_keys}


def load_robomimic_hdf5(
    path: str | Path,
    obs_keys: Sequence[str] | None = None,
    min_length: int = 1,
    on_error: OnError = "raise",
) -> LoadResult:
    """Read every `data/demo_*` of one robomimic-layout hdf5 file (LIBERO or robosuite demos)."""
    check_on_error(on_error)
    h5py = _import_h5py()
    path = Path(path)
    source = str(path)
    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        handle_error(TrajectoryDataError(f"{source}: cannot open as hdf5 ({err})"), source, "*", on_error, skipped)
        return LoadResult(episodes, skipped)
    with handle as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            err = TrajectoryDataError(f"{source}: no 'data' group (expected robomimic layout data/demo_<i>/actions)")
            handle_error(err, source, "*", on_error, skipped)
            return LoadResult(episodes, skipped)
        data = f["data"]
        task = task_from_attrs(data.attrs, fallback=path.stem)
        for name in sorted(data.keys(), key=_demo_order):
            where = f"{source}, {name}"
            try:
                demo = data[name]
                if not isinstance(demo, h5py.Group) or "actions" not in demo:
                    raise TrajectoryDataError(f"{where}: key 'actions' missing (expected data/{name}/actions (T, A))")
                actions = validate_actions(demo["actions"][()], where, "actions", min_length)
                obs = validate_obs(_read_obs(demo, obs_keys, where), len(actions), where)
            except TrajectoryDataError as err:
                handle_error(err, source, name, on_error, skipped)
                continue
            episodes.append(Episode(actions=actions, obs=obs, task=task, source=source, name=name))
    logger.info("%s: %d episodes, %d skipped", source, len(episodes), len(skipped))
    return LoadResult(episodes, skipped)


def load_hdf5_files(
    paths: Sequence[str | Path],
    obs_keys: Sequence[str] | None = None,
    min_length: int = 1,
    on_error: OnError = "raise",
) -> LoadResult:
    """`load_robomimic_hdf5` over several files (a directory means every `*.hdf5` in it, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.hdf5")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"trajectory file {p} does not exist")
    if not files:
        raise FileNotFoundError(f"no *.hdf5 files found in {[str(p) for p in paths]}")
    episodes: list[Episode] = []
    skipped: list[SkippedEpisode] = []
    for file in files:
        result = load_robomimic_hdf5(file, obs_keys, min_length, on_error)
        episodes += result.episodes
        skipped += result.skipped
    return LoadResult(episodes, skipped)

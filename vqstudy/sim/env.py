"""Meta-World (v3, arXiv 1910.10897) tasks as simulators with seeded initial states, exact snapshots
and their scripted experts.

Observations are the 39-D state vectors of the goal-observable MT benchmarks: hand xyz (0:3), gripper
opening (3), object poses (4:18), the previous step's 18 values (18:36), goal xyz (36:39). Actions are
4-D: hand xyz delta and gripper effort, each in [-1, 1] (the environment clips; we record and execute
the clipped action).

Initial states: each episode's object and goal positions are drawn by the environment from its own
`np_random`, seeded with one integer (`initial_state_seed`): the seed is what is recorded, and the
same seed gives the same initial state. Training demonstrations use seeds below 2**31, evaluation
seeds at or above it, so the two can never share an initial state by construction.

Snapshots: Meta-World's `get_env_state`/`set_env_state` store only (qpos, qvel); the mocap target that
actions move and MuJoCo's solver warm start are missing, so a restored simulator drifts from the
original (up to 1.3 in action units after 8 steps on pick-place). `MetaWorldEnv.snapshot` stores
MuJoCo's full integration state (`mj_getState(mjSTATE_INTEGRATION)`) plus the environment's frame
stack and step counter, and restoring it replays bit for bit.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

OBS_DIM = 39
"""Meta-World state observation size."""
ACTION_DIM = 4
"""Meta-World action size: hand xyz delta + gripper effort."""
DEFAULT_MAX_STEPS = 500
"""Meta-World's own episode limit (`max_path_length`)."""
INSTALL_HINT = "pip install 'vqstudy[sim]'"
MIN_METAWORLD = "3"
SPLIT_BIT = 1 << 31
"""Evaluation initial-state seeds have this bit set, training seeds never do."""
Split = Literal["train", "eval"]
UPSIDE_DOWN_CAMERAS = ("corner", "corner2", "corner3")
"""Cameras whose MuJoCo frames come out upside down with metaworld 3.1.1's camera poses; `render` flips them."""


def import_metaworld() -> Any:
    """The `metaworld` module, or an ImportError saying what to install."""
    try:
        import metaworld
        import mujoco  # noqa: F401  (metaworld's simulator)
    except ImportError as err:
        raise ImportError(f"the Meta-World simulator is not installed ({err}): {INSTALL_HINT}") from err
    try:
        from packaging.version import Version

        installed = version("metaworld")
        if Version(installed) < Version(MIN_METAWORLD):
            raise ImportError(f"metaworld {installed} is too old (v3 tasks need metaworld>={MIN_METAWORLD}): "
                              f"{INSTALL_HINT}")
    except PackageNotFoundError:  # pragma: no cover - importable but without metadata (a source checkout)
        pass
    return metaworld


@lru_cache(maxsize=1)
def _task_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    import_metaworld()
    from metaworld.env_dict import MT10_V3, MT50_V3

    return tuple(MT10_V3), tuple(MT50_V3)


def all_task_names() -> list[str]:
    """The 50 Meta-World v3 task names (MT50 order)."""
    return list(_task_lists()[1])


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """`"mt10"`, `"mt50"`, `"reach-v3,push-v3"` or a list of names -> task names, in order, no repeats."""
    mt10, mt50 = _task_lists()
    if isinstance(tasks, str):
        key = tasks.strip().lower()
        if key in ("mt10", "mt50"):
            return list(mt10 if key == "mt10" else mt50)
        names = [t.strip() for t in tasks.split(",") if t.strip()]
    else:
        names = [str(t).strip() for t in tasks]
    if not names:
        raise ValueError(f"tasks ({tasks!r}) is empty; give mt10, mt50 or comma-separated names from: {', '.join(mt50)}")
    unknown = [t for t in names if t not in mt50]
    if unknown:
        raise ValueError(f"unknown Meta-World task(s) {unknown}; valid: mt10, mt50 or comma-separated names "
                         f"from: {', '.join(mt50)}")
    repeated = sorted({t for t in names if names.count(t) > 1})
    if repeated:
        raise ValueError(f"tasks {repeated} are listed more than once in {tasks!r}")
    return names


def initial_state_seed(seed: int, task: str, episode: int, split: Split = "train") -> int:
    """The recorded seed of episode `episode` of `task`: a hash of (seed, task name, episode), below 2**31
    for "train", at or above 2**31 for "eval" (so the two sets are disjoint)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split ({split!r}) must be 'train' or 'eval'")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed ({seed!r}) must be an integer >= 0")
    if episode < 0:
        raise ValueError(f"episode ({episode}) must be >= 0")
    key = (zlib.crc32(task.encode()), int(episode), 0 if split == "train" else 1)
    word = int(np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1, np.uint32)[0])
    return (word >> 1) | (SPLIT_BIT if split == "eval" else 0)


class StepResult(NamedTuple):
    """What one simulator step returns."""

    obs: np.ndarray
    """(39,) float64 observation after the step."""
    reward: float
    success: bool
    """Meta-World's success flag after the step."""


class Snapshot(NamedTuple):
    """Everything `MetaWorldEnv.restore` needs to continue exactly from a saved step."""

    mj_state: np.ndarray
    prev_obs: np.ndarray
    last_stable_obs: np.ndarray | None
    path_length: int
    steps: int


class MetaWorldEnv:
    """One Meta-World v3 task (goal observable, states only, no rendering) and its scripted expert."""

    def __init__(self, task: str) -> None:
        import_metaworld()
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        (self.task,) = resolve_tasks([task])
        env = ALL_V3_ENVIRONMENTS[self.task]()
        env._partially_observable = False  # MT benchmarks: the goal is part of the observation
        del env.sawyer_observation_space  # cached property computed for the hidden goal
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # initial states come from env.np_random, seeded per episode
        env._set_task_called = True
        env.max_path_length = 2**62  # the caller enforces its own limit; lookahead may pass Meta-World's
        self._env = env
        self._mujoco = mujoco
        self._expert = ENV_POLICY_MAP[self.task]()
        self._spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self._state_size = mujoco.mj_stateSize(env.model, self._spec)
        self._hand_id = env.model.body("hand").id
        self._vel = np.zeros(6)
        self.steps = 0
        """Steps taken since the last reset."""
        self.seed: int | None = None
        """Initial-state seed of the current episode."""
        self._renderers: dict[tuple[int, int], Any] = {}

    @property
    def dt(self) -> float:
        """Seconds of simulated time per step (frame_skip x MuJoCo timestep)."""
        return float(self._env.dt)

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode from the initial state drawn with `seed`; returns the (39,) observation."""
        self._env.seed(int(seed))
        obs, _ = self._env.reset()
        self.steps, self.seed = 0, int(seed)
        return obs

    def step(self, action: np.ndarray) -> StepResult:
        """Execute one (4,) action (clipped to [-1, 1])."""
        obs, reward, _, _, info = self._env.step(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))
        self.steps += 1
        return StepResult(obs, float(reward), bool(info["success"]))

    def hand_pos(self) -> np.ndarray:
        """(3,) world position of the hand body."""
        return self._env.data.body("hand").xpos.copy()

    def hand_vel(self) -> np.ndarray:
        """(3,) linear world-frame velocity of the hand body (m/s)."""
        self._mujoco.mj_objectVelocity(self._env.model, self._env.data, self._mujoco.mjtObj.mjOBJ_BODY,
                                       self._hand_id, self._vel, 0)
        return self._vel[3:].copy()  # [angular(3), linear(3)] -> linear

    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        """The scripted expert's (4,) action for `obs`, clipped to [-1, 1], float32."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the experts warn when their gains saturate the clip
            action = self._expert.get_action(obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def snapshot(self) -> Snapshot:
        """The full simulator state now (see the module docstring for why not `get_env_state`)."""
        state = np.empty(self._state_size)
        self._mujoco.mj_getState(self._env.model, self._env.data, state, self._spec)
        last = self._env._last_stable_obs
        return Snapshot(state, self._env._prev_obs.copy(), None if last is None else last.copy(),
                        int(self._env.curr_path_length), self.steps)

    def restore(self, snap: Snapshot) -> None:
        """Return to a `snapshot()` of this environment exactly."""
        self._mujoco.mj_setState(self._env.model, self._env.data, snap.mj_state, self._spec)
        self._env._prev_obs = snap.prev_obs.copy()
        self._env._last_stable_obs = None if snap.last_stable_obs is None else snap.last_stable_obs.copy()
        self._env.curr_path_length = snap.path_length
        self.steps = snap.steps

    def render(self, size: int = 64, camera: str = "corner2") -> np.ndarray:
        """(size, size, 3) uint8 RGB frame of the current state from the model camera `camera`.

        Needs an OpenGL backend chosen before MuJoCo is imported: MUJOCO_GL=egl (GPU) or
        MUJOCO_GL=osmesa (CPU; Debian's libosmesa6). Rendering does not change the simulator state.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"render size ({size!r}) must be an integer >= 8 pixels")
        model = self._env.model
        cameras = [model.camera(i).name for i in range(model.ncam)]
        if camera not in cameras:
            raise ValueError(f"camera ({camera!r}) must be one of this model's cameras {cameras}")
        renderer = self._renderers.get((size, size))
        if renderer is None:
            try:
                renderer = self._mujoco.Renderer(model, size, size)
            except Exception as e:  # no GL context: the backend is missing or MUJOCO_GL is unset
                raise RuntimeError(
                    f"MuJoCo could not create an offscreen renderer ({e}); set MUJOCO_GL=egl (GPU) or "
                    "MUJOCO_GL=osmesa (CPU, apt install libosmesa6) before starting Python") from e
            self._renderers[(size, size)] = renderer
        renderer.update_scene(self._env.data, camera=camera)
        frame = renderer.render()
        if camera in UPSIDE_DOWN_CAMERAS:
            frame = frame[::-1]
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self._env.close()


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that determine simulated data (for the info files)."""
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("vqstudy", "metaworld", "mujoco", "gymnasium", "numpy", "pyarrow"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out

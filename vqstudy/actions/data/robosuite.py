"""The Panda teleoperation demos shipped inside the `robosuite==1.0.1` wheel: fetch, verify, cache.

Six robomimic-layout files, one demo each (`data/demo_1/{actions, states, joint_torques}`), OSC_POSE
delta control (the same action meaning as LIBERO: 3 position deltas, 3 axis-angle deltas, gripper
-1 open / +1 close), recorded 2020-09-04 with robosuite 1.0.0:

    task          T     actions   states (MuJoCo sim state)
    door          261   (T, 7)    (T, 23)   gripper stays -1 the whole demo
    lift          412   (T, 7)    (T, 32)
    nut-assembly  1036  (T, 7)    (T, 45)
    pick-place    1482  (T, 7)    (T, 71)
    stack         532   (T, 7)    (T, 45)
    wipe          174   (T, 6)    (T, 15)   wiping tool, no gripper column

3,723 steps without wipe, 3,897 with it. Pos/rot deltas are in [-1, 1] (scaled by the controller to
0.05 m / 0.5 rad) except wipe's z, which goes to -1.24.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from vqstudy.assets import AssetHashError, default_cache_dir
from vqstudy.files import sha256_bytes, sha256_file, write_atomic

logger = logging.getLogger(__name__)

ROBOSUITE_WHEEL = "robosuite==1.0.1"
ROBOSUITE_WHEEL_SHA256 = "92d45d7ad57e6d8a63becc96d14a038e17ab1919c00d771a4bbb6e6fc7aa4810"
"""sha256 of robosuite-1.0.1-py3-none-any.whl on PyPI (92,386,222 bytes)."""
ROBOSUITE_TASKS = ("door", "lift", "nut-assembly", "pick-place", "stack", "wipe")
_MEMBER = "robosuite/models/assets/demonstrations/{task}/panda/demo.hdf5"

ROBOSUITE_DEMO_SHA256: dict[str, str] = {
    "door": "d53be75d5a906d6355be05a882197c9cfdc6ddedd15f577311d51d4efe07a4a2",
    "lift": "694f2701136b57354e6b45c0b06a70f147416030239ce8fbc7a28984c5a2b989",
    "nut-assembly": "876a5bc9fa6f05f9a3dcd9e0e4f05675f3c8fed76b61122a6ac17ddccd88ce86",
    "pick-place": "01d72fbe67b917c93df411779fa7037170509f435c6dcf8d1aa705ccb9b7f93c",
    "stack": "6d5dc16f2f32fd87a25f8e71efd6edb405d77ca500aed62733c6c036fd6b3899",
    "wipe": "06c164a9fc609d6374b5ecc30e14e3f331e7f18e2ea6d7cb5888b14f16630a5f",
}
"""sha256 of each extracted `demo.hdf5`, recorded from the PyPI wheel."""

ROBOSUITE_DEMO_STEPS: dict[str, int] = {
    "door": 261, "lift": 412, "nut-assembly": 1036, "pick-place": 1482, "stack": 532, "wipe": 174,
}
"""Number of steps of the single demo in each file."""


def robosuite_demo_dir(cache_dir: str | Path | None = None) -> Path:
    """`<cache>/robosuite-1.0.1-demos`, cache = `cache_dir`, else `$VQSTUDY_CACHE`, else ~/.cache/vqstudy."""
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "robosuite-1.0.1-demos"


def robosuite_demo_paths(cache_dir: str | Path | None = None) -> list[Path]:
    """Where the six demo files live once fetched (`<cache>/robosuite-1.0.1-demos/<task>/demo.hdf5`)."""
    root = robosuite_demo_dir(cache_dir)
    return [root / task / "demo.hdf5" for task in ROBOSUITE_TASKS]


def _cached_ok(path: Path, task: str) -> bool:
    return path.is_file() and sha256_file(path) == ROBOSUITE_DEMO_SHA256[task]


def _download_wheel(dest: Path) -> Path:
    """`pip download` the robosuite 1.0.1 wheel (no dependencies) into `dest`; check its sha256; return it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", ROBOSUITE_WHEEL,
           "-d", str(dest), "--disable-pip-version-check"]
    logger.info("downloading %s: %s", ROBOSUITE_WHEEL, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {ROBOSUITE_WHEEL} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    wheels = sorted(dest.glob("robosuite-1.0.1-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {ROBOSUITE_WHEEL} left no wheel in {dest}: {sorted(os.listdir(dest))}")
    got = sha256_file(wheels[0])
    if got != ROBOSUITE_WHEEL_SHA256:
        raise AssetHashError(f"{wheels[0].name}: sha256 mismatch, expected {ROBOSUITE_WHEEL_SHA256}, got {got}")
    return wheels[0]


def extract_robosuite_demos(wheel: str | Path, cache_dir: str | Path | None = None) -> list[Path]:
    """Extract and verify the six demo files from a robosuite 1.0.1 wheel into the cache.

    Every file is checked against `ROBOSUITE_DEMO_SHA256` before any is written, so a bad wheel
    leaves nothing behind; each write is atomic (temporary file + rename).
    """
    contents: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        members = set(zf.namelist())
        for task in ROBOSUITE_TASKS:
            member = _MEMBER.format(task=task)
            if member not in members:
                raise AssetHashError(f"{wheel}: {member} not found in the wheel")
            data = zf.read(member)
            got, expected = sha256_bytes(data), ROBOSUITE_DEMO_SHA256[task]
            if got != expected:
                raise AssetHashError(f"{member} from {wheel}: sha256 mismatch, expected {expected}, got {got}")
            contents[task] = data
    paths = robosuite_demo_paths(cache_dir)
    for task, path in zip(ROBOSUITE_TASKS, paths):
        write_atomic(path, contents[task])
    logger.info("robosuite demos verified and cached in %s", robosuite_demo_dir(cache_dir))
    return paths


def fetch_robosuite_demos(cache_dir: str | Path | None = None) -> list[Path]:
    """The six robosuite 1.0.1 Panda demo files (door ... wipe), downloading them once if needed.

    Cached files are re-checked against their sha256 on every call; a missing or changed one makes
    the wheel be downloaded again (pip, PyPI) and all six re-extracted.
    """
    paths = robosuite_demo_paths(cache_dir)
    if all(_cached_ok(p, task) for p, task in zip(paths, ROBOSUITE_TASKS)):
        return paths
    with tempfile.TemporaryDirectory(prefix="vqstudy-robosuite-") as tmp:
        wheel = _download_wheel(Path(tmp))
        return extract_robosuite_demos(wheel, cache_dir)

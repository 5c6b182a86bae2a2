"""Sanity numbers of the Meta-World infrastructure (issue 9): demonstration speed, the scripted expert's
closed-loop success on held-out initial states, expert chunks executed open loop (H=8), and the same
chunks through a 256-uniform-bins ActionTokenizer fitted on the demonstrations' actions.

python scripts/sim_sanity.py --out results/sim   # 13.4 min wall / 7.1 CPU-min on the shared 2-core CPU (load ~6)
python scripts/sim_sanity.py --tasks reach-v3,push-v3 --episodes 4 --n 4 --out runs/sim/smoke   # a quick smoke run
"""

import argparse
import json
import logging
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from vqstudy import ActionTokenizer
from vqstudy.actions.baselines import UniformBinConfig, UniformBinTokenizer
from vqstudy.actions.data.lerobot import load_lerobot
from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.files import write_atomic
from vqstudy.machine import machine_info, machine_line
from vqstudy.sim.demos import make_demonstrations
from vqstudy.sim.env import resolve_tasks
from vqstudy.sim.rollout import RolloutConfig, evaluate, markdown_table
from vqstudy.sim.sources import ExpertChunkSource, ExpertSource, TokenizedSource


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def bins_tokenizer(actions: np.ndarray, horizon: int, num_bins: int, binarize_gripper: bool) -> ActionTokenizer:
    """256 uniform bins per value (OpenVLA) over the demonstrations' [q01, q99] range per dimension."""
    normalizer = QuantileNormalizer().fit(actions, gripper_dims=(3,) if binarize_gripper else ())
    return ActionTokenizer(UniformBinTokenizer(UniformBinConfig(horizon=horizon, action_dim=4, num_bins=num_bins)),
                           normalizer)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes", type=int, default=50, help="demonstrations per task")
    p.add_argument("--n", type=int, default=50, help="held-out rollouts per task and source")
    p.add_argument("--horizon", type=int, default=8)
    p.add_argument("--num-bins", type=int, default=256)
    p.add_argument("--num-envs", type=int, default=5, help="simulators per task (all tasks run together)")
    p.add_argument("--workers", type=int, default=1, help="processes recording demonstrations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="runs/sim/mt10_demos", help="demonstration dataset (recorded unless complete)")
    p.add_argument("--out", default="results/sim")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python scripts/sim_sanity.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    info = machine_info()
    start = time.perf_counter()
    tasks = resolve_tasks(args.tasks)

    data = Path(args.data)
    if (data / "meta" / "info.json").exists():
        demo = {"reused": True}
        print(f"{data} is complete: reused, demonstration speed not measured")
    else:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        summary = make_demonstrations(data, tasks, episodes=args.episodes, seed=args.seed, workers=args.workers)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        demo = {"reused": False, "episodes": summary.recorded_episodes, "frames": summary.frames,
                "failed": summary.episodes - summary.successes, "wall_s": wall, "cpu_s": cpu,
                "episodes_per_s": summary.recorded_episodes / wall, "workers": args.workers}
        print(f"demonstrations: {demo}")
    episodes = load_lerobot(data).episodes
    actions = np.concatenate([e.actions for e in episodes])  # (N, 4) training actions

    cfg = RolloutConfig(tasks, n=args.n, seed=args.seed, num_envs=args.num_envs)
    cache: dict = {}
    sources = [
        ExpertSource(),
        ExpertChunkSource(args.horizon),
        TokenizedSource(ExpertChunkSource(args.horizon),
                        bins_tokenizer(actions, args.horizon, args.num_bins, binarize_gripper=False),
                        name=f"expert_chunks_h{args.horizon}+bins{args.num_bins}"),
        TokenizedSource(ExpertChunkSource(args.horizon),
                        bins_tokenizer(actions, args.horizon, args.num_bins, binarize_gripper=True),
                        name=f"expert_chunks_h{args.horizon}+bins{args.num_bins}_binary_gripper"),
    ]
    results = []
    for source in sources:
        result = evaluate(source, cfg, env_cache=cache)
        o = result.overall
        print(f"{result.source}: {o.successes}/{o.n} [{o.ci_low:.3f}, {o.ci_high:.3f}] "
              f"{result.timing.env_steps_per_s:.0f} steps/s, {result.timing.wall_s:.0f} s")
        results.append(result)
    expert, chunks, bins = results[0], results[1], results[2]
    checks = {
        "chunks_identical_to_expert": chunks.episodes == expert.episodes,
        "bins_minus_chunks_points": 100 * (bins.overall.success_rate - chunks.overall.success_rate),
        "binary_gripper_minus_chunks_points": 100 * (results[3].overall.success_rate - chunks.overall.success_rate),
        "tasks_differing": [b.task for a, b in zip(chunks.tasks, bins.tasks) if a.successes != b.successes],
    }
    wall = time.perf_counter() - start
    out = Path(args.out)
    report = {"command": command, "machine": info, "wall_s": wall, "demonstrations": demo, "checks": checks,
              "results": [r.to_dict() for r in results]}
    write_atomic(out / "sanity.json", (json.dumps(report, indent=2) + "\n").encode())
    lines = [
        "# Meta-World sanity numbers (issue 9)", "",
        f"command: `{command}`", "", f"machine: {machine_line(info)}", "", f"wall time: {wall / 60:.1f} min", "",
        "## Demonstrations", "",
    ]
    if demo["reused"]:
        lines.append(f"`{data}` was already complete and was reused: speed not measured in this run.")
    else:
        lines.append(f"{demo['episodes']} expert episodes ({len(tasks)} tasks x {args.episodes}), {demo['frames']} frames, "
                     f"{demo['failed']} failed (kept, flagged): {demo['wall_s']:.1f} s wall, {demo['cpu_s']:.1f} CPU s, "
                     f"**{demo['episodes_per_s']:.2f} episodes/s** with {demo['workers']} process(es).")
    lines += [
        "", f"## Closed loop: {args.n} held-out initial states per task (seeds disjoint from the demonstrations)", "",
        markdown_table(results),
        "Rates and fractions exclude setup (building simulators; cached across sources after the first).", "",
        "| source | env steps | env steps/s | sim fraction | source fraction | wall (s) | setup (s) | chunk MSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r.timing
        mse = r.source_stats.get("chunk_mse")
        lines.append(f"| {r.source} | {t.env_steps} | {t.env_steps_per_s:.0f} | {t.sim_fraction:.2f} | "
                     f"{t.source_fraction:.2f} | {t.wall_s:.1f} | {t.setup_s:.1f} | {'' if mse is None else f'{mse:.2e}'} |")
    lines += [
        "", "## Checks", "",
        f"- expert chunks (H={args.horizon}) executed open loop give the same rollouts as the closed-loop expert, "
        f"episode by episode: **{checks['chunks_identical_to_expert']}**",
        f"- {args.num_bins} uniform bins (gripper as a continuous dimension) minus expert chunks: "
        f"**{checks['bins_minus_chunks_points']:+.1f} points** (tolerance 2); tasks whose success count differs: "
        f"{checks['tasks_differing'] or 'none'}",
        f"- the same bins with the package's binarized gripper (sign: 0 -> open, 0.6 -> close): "
        f"{checks['binary_gripper_minus_chunks_points']:+.1f} points",
    ]
    write_atomic(out / "sanity.md", ("\n".join(lines) + "\n").encode())
    print((out / "sanity.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

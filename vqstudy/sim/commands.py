"""Command-line layer of the simulator: `vqstudy data make metaworld` and `vqstudy policy eval`.

`vqstudy.cli` wires these in: `add_data_make_parser(data_subparsers)` adds `make` under `vqstudy data`,
`add_policy_eval_parser(policy_subparsers)` adds `eval` under `vqstudy policy`; each sets
`func=<handler>` and the handlers return 0 or raise (ValueError, ImportError, FileNotFoundError):
the CLI turns exceptions into exit codes. Progress bars and tables live here, not in the library.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vqstudy.sim.env import DEFAULT_MAX_STEPS, import_metaworld, initial_state_seed, resolve_tasks
from vqstudy.sim.sources import ActionSource, ExpertChunkSource, ExpertSource, TokenizedSource

TASKS_HELP = "mt10, mt50, or comma-separated Meta-World task names (e.g. reach-v3,push-v3)"


def add_data_make_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`make metaworld --tasks mt10 --episodes 50 --seed 0 --out DIR` under `vqstudy data`."""
    p = subparsers.add_parser("make", help="record scripted-expert demonstrations: `vqstudy data make metaworld ...`",
                              description="Scripted-expert Meta-World demonstrations in the LeRobot v3.0 layout; "
                                          "an interrupted run resumes when given the same arguments.")
    p.add_argument("dataset", choices=["metaworld"], help="simulator to record")
    p.add_argument("--tasks", default="mt10", help=TASKS_HELP)
    p.add_argument("--episodes", type=int, default=50, help="expert episodes per task")
    p.add_argument("--seed", type=int, default=0, help="base seed of the recorded initial-state seeds")
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help="steps before an episode is cut (failed)")
    p.add_argument("--workers", type=int, default=1, help="processes recording tasks in parallel (same bytes)")
    p.add_argument("--out", required=True, help="dataset directory (new, empty, or an interrupted run of the same request)")
    p.set_defaults(func=cmd_data_make)
    return p


def cmd_data_make(args: argparse.Namespace) -> int:
    """Record the demonstrations with a progress bar; print the counts and episodes per second."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vqstudy.sim.demos import make_demonstrations

    import_metaworld()
    tasks = resolve_tasks(args.tasks)
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("episodes", total=len(tasks) * args.episodes)

        def on_episode(task: str, episode: int) -> None:
            progress.update(bar, advance=1, description=task)

        def on_task(shard) -> None:
            if shard.resumed:
                progress.update(bar, advance=shard.episodes, description=f"{shard.task} (resumed)")

        summary = make_demonstrations(args.out, tasks, episodes=args.episodes, seed=args.seed,
                                      max_steps=args.max_steps, workers=args.workers, on_episode=on_episode,
                                      on_task=on_task)
    wall = time.perf_counter() - start
    rate = summary.recorded_episodes / wall if wall > 0 else 0.0
    print(f"wrote {summary.out}: {summary.episodes} episodes ({summary.episodes - summary.successes} failed, kept), "
          f"{summary.frames} frames, {len(tasks)} tasks; recorded {summary.recorded_episodes} episodes in "
          f"{wall:.1f} s ({rate:.2f} episodes/s)")
    return 0


SourceBuilder = Callable[[argparse.Namespace], ActionSource]


def _tokenized(args: argparse.Namespace) -> ActionSource:
    from vqstudy import ActionTokenizer

    if not args.tokenizer:
        raise ValueError("--source tokenized needs --tokenizer DIR (a saved ActionTokenizer)")
    tokenizer = ActionTokenizer.from_pretrained(args.tokenizer)
    return TokenizedSource(ExpertChunkSource(args.horizon), tokenizer, name=f"expert_chunks_h{args.horizon}+{Path(args.tokenizer).name}")


SOURCES: dict[str, SourceBuilder] = {
    "expert": lambda args: ExpertSource(),
    "expert-chunks": lambda args: ExpertChunkSource(args.horizon),
    "tokenized": _tokenized,
}
"""`--source` choices -> builders; learned policies add theirs here (or pass a builder to `run_policy_eval`)."""


def add_policy_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`eval --source expert|expert-chunks|tokenized ...` under `vqstudy policy`."""
    p = subparsers.add_parser("eval", help="closed-loop success of an action source in Meta-World",
                              description="Closed-loop rollouts from held-out initial states: success with Wilson "
                                          "95% intervals, episode length, smoothness, environment steps per second.")
    p.add_argument("--source", choices=sorted(SOURCES), default="expert",
                   help="expert: scripted expert; expert-chunks: its H-step chunks executed open loop; "
                        "tokenized: those chunks through --tokenizer")
    p.add_argument("--horizon", type=int, default=8, help="H, chunk length of expert-chunks / tokenized")
    p.add_argument("--tokenizer", default=None, help="saved ActionTokenizer directory (for --source tokenized)")
    p.add_argument("--tasks", default="mt10", help=TASKS_HELP)
    p.add_argument("--n", type=int, default=50, help="rollouts per task")
    p.add_argument("--seed", type=int, default=0, help="base seed of the held-out initial states")
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help="steps before a rollout is cut")
    p.add_argument("--num-envs", type=int, default=10, help="simulators per task in lockstep (the batch size)")
    p.add_argument("--demos", default=None, help="demonstration dataset: refuse if it shares an initial state seed")
    p.add_argument("--out", default=None, help="directory for eval.json and eval.md")
    p.set_defaults(func=cmd_policy_eval)
    return p


def check_disjoint(demos: str | Path, tasks: list[str], n: int, seed: int) -> None:
    """Raise ValueError if an evaluation initial-state seed is also a seed of the dataset `demos`."""
    from vqstudy.sim.demos import read_demo_seeds

    used = {s for seeds in read_demo_seeds(demos).values() for s in seeds}
    shared = sorted({initial_state_seed(seed, t, i, "eval") for t in tasks for i in range(n)} & used)
    if shared:
        raise ValueError(f"{len(shared)} evaluation seeds are demonstration seeds of {demos} (e.g. {shared[:3]})")


def cmd_policy_eval(args: argparse.Namespace, builder: SourceBuilder | None = None) -> int:
    """Evaluate the chosen source (or `builder(args)`), show a rich table, write eval.json/eval.md to --out."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from vqstudy.machine import machine_line
    from vqstudy.sim.rollout import RolloutConfig, evaluate, write_eval

    import_metaworld()
    config = RolloutConfig(resolve_tasks(args.tasks), n=args.n, seed=args.seed, max_steps=args.max_steps,
                           num_envs=args.num_envs)
    if args.demos:
        check_disjoint(args.demos, config.tasks, config.n, config.seed)
    source = (builder or SOURCES[args.source])(args)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task(source.name, total=len(config.tasks) * config.n)
        result = evaluate(source, config, on_episode=lambda e: progress.update(bar, advance=1, description=e.task))
    table = Table(title=f"{result.source}: closed loop, {config.n} held-out rollouts per task")
    for name in ("task", "success", "95% interval", "length", "smoothness"):
        table.add_column(name, justify="right")
    for t in [*result.tasks, result.overall]:
        table.add_row(t.task, f"{t.success_rate:.3f}", f"[{t.ci_low:.3f}, {t.ci_high:.3f}]", f"{t.mean_length:.1f}",
                      f"{t.mean_smoothness:.4f}")
    console = Console()
    console.print(table)
    tm = result.timing
    console.print(f"{tm.env_steps} env steps in {tm.wall_s:.1f} s ({tm.setup_s:.1f} s building simulators; "
                  f"{tm.env_steps_per_s:.0f} steps/s after that); simulator "
                  f"{tm.sim_fraction:.0%}, source {tm.source_fraction:.0%} of the time"
                  + "".join(f"; {k} {v:.3g}" for k, v in result.source_stats.items()))
    if args.out:
        header = (f"# Closed-loop evaluation: {result.source}\n\ncommand: `{shlex.join(['vqstudy', *sys.argv[1:]])}`\n\n"
                  f"machine: {machine_line()}\n\nwall time: {tm.wall_s:.1f} s")
        for path in write_eval([result], args.out, header=header):
            print(f"wrote {path}")
    return 0

"""The `vqstudy` command: parses arguments, calls the library, prints results, and is the only place that
turns exceptions into exit codes.

Config merge order for every subcommand that takes one: dataclass defaults <- YAML (--config)
<- `--set a.b=value` overrides (each value converted by its field's type), in that order.

    vqstudy pair --config configs/pair_default.yaml [--set train.max_steps=50] [--out runs]
    vqstudy plot RUN_DIR
    vqstudy eval RUN_DIR [--config FILE] [--set data.source=imagefolder --set data.root=DIR] [--out DIR]
    vqstudy actions train|eval|sweep --config configs/actions_vq.yaml [--set k=v] [--checkpoint DIR]
    vqstudy export --checkpoint DIR --out DIR [--id-mode last_n --lm-vocab-size 32000] [--order keep]
    vqstudy bottleneck --config configs/bottleneck_default.yaml
    vqstudy policy train --config configs/policy_train.yaml [--set head_kind=ar]
    vqstudy policy eval --policy DIR [--tasks mt10 --n 50 --execute 8] | --source expert|expert-chunks|tokenized
    vqstudy policy grid --config configs/policy_grid_quick.yaml [--report-only]
    vqstudy data fetch robosuite-demos
    vqstudy data make metaworld --tasks mt10 --episodes 50 --seed 0 --out DIR
    vqstudy assets fetch
    vqstudy bench [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vqstudy.config import parse_overrides

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError)
"""Exceptions that mean bad input or a missing install: one line on stderr and exit code 2."""


# ------------------------------------------------------------------------------------------------
# Output helpers (the one results-table printer)
# ------------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """Floats with 4 significant digits (nan as 'nan'), lists joined, everything else as str."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]], file: Any = None) -> None:
    """A rich table on a terminal; full-width plain text (a markdown table) when stdout is not a terminal."""
    file = file or sys.stdout
    if not rows:
        print(f"{title}: no rows", file=file)
        return
    keys = list(rows[0])
    if not file.isatty():
        print(title, file=file)
        print("| " + " | ".join(map(str, keys)) + " |", file=file)
        print("|" + "---|" * len(keys), file=file)
        for row in rows:
            print("| " + " | ".join(format_value(row.get(k, "")) for k in keys) + " |", file=file)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in keys:
        table.add_column(str(key), justify="right", overflow="fold")
    for row in rows:
        table.add_row(*(format_value(row.get(k, "")) for k in keys))
    Console(file=file).print(table)


def _add_config_args(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", help="YAML file of config fields (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"override, e.g. {example}")


def _command_line(argv: Sequence[str]) -> str:
    return "vqstudy " + shlex.join(list(argv))


# ------------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------------


def cmd_pair(args: argparse.Namespace) -> int:
    from vqstudy.images.pair import load_pair_config, run_pair, summary_rows

    overrides = parse_overrides(args.set + ([f"out_dir={args.out}"] if args.out else []))
    cfg = load_pair_config(args.config, overrides)
    results = run_pair(cfg, command=_command_line(args.argv))
    print_table(f"{cfg.name}: capacity-matched pair", summary_rows(results))
    print(f"wrote {Path(cfg.out_dir) / cfg.name}/")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from vqstudy.images.plots import plot_run

    out = args.out
    if out is None and "results" in Path(args.run_dir).resolve().parts:  # committed references stay untouched
        out = str(Path("runs") / "plots" / Path(args.run_dir).name)
    for path in plot_run(args.run_dir, out_dir=out):
        print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vqstudy.images.pair import eval_output_dir, load_eval_config, run_eval, summary_rows

    cfg = load_eval_config(args.run_dir, args.config, parse_overrides(args.set))
    out = eval_output_dir(args.run_dir, args.out, cfg)
    results = run_eval(args.run_dir, cfg, out, command=_command_line(args.argv))
    print_table(f"{args.run_dir} evaluated on {cfg.data.source} {cfg.data.root or ''}", summary_rows(results))
    print(f"wrote {out}/")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vqstudy.bench import main as bench_main

    return bench_main(args.rest) or 0


def cmd_assets(args: argparse.Namespace) -> int:
    from vqstudy.assets import fetch_assets

    for name, path in fetch_assets(cache_dir=args.cache_dir, force=args.force).items():
        print(f"{name}: {path}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from vqstudy.actions.data.robosuite import fetch_robosuite_demos

    for path in fetch_robosuite_demos(cache_dir=args.cache_dir):
        print(path)
    return 0


def _metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"metric": k, "value": v} for k, v in metrics.items() if k != "checkpoint"]


def cmd_actions(args: argparse.Namespace) -> int:
    from vqstudy.actions.train import eval_run, load_actions_config, train_run

    overrides = parse_overrides(args.set)
    if args.action == "sweep":
        from vqstudy.actions.study import load_sweep_config, run_sweep

        study = run_sweep(load_sweep_config(args.config, overrides), command=_command_line(args.argv))
        print_table(f"sweep ({study['wall_seconds']:.0f} s)", study["table"])
        print(f"wrote {study['out_dir']}/")
        return 0
    cfg = load_actions_config(args.config, overrides)
    if args.action == "train":
        run = train_run(cfg)
        last = run.fit.curve[-1]
        print_table(f"{cfg.name}: {cfg.tokenizer} trained", [
            {"steps": last.step, "recon_mse": last.recon_mse, "utilization": last.utilization,
             "bits_effective": last.bits_effective, "bits_nominal": run.action_tokenizer.bits_per_chunk,
             "seconds": run.fit.seconds}])
        print(f"wrote {run.run_dir}/")
        return 0
    metrics = eval_run(cfg, args.checkpoint)
    out = (Path(args.checkpoint).parent if args.checkpoint else cfg.run_dir) / "eval.json"
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    print_table(f"{cfg.name}: validation fidelity (original units)", _metric_rows(metrics))
    print(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vqstudy.actions.train import reexport

    tok = reexport(args.checkpoint, args.out, args.id_mode, args.token_offset, args.lm_vocab_size, args.order)
    low, high = tok.id_range
    print(f"wrote {args.out}: {tok.tokenizer.kind}, {tok.num_tokens} ids per chunk, LM ids [{low}, {high}), "
          f"{'ordered' if tok.order is not None else 'unordered'}")
    return 0


def cmd_bottleneck(args: argparse.Namespace) -> int:
    from vqstudy.policy.bottleneck import run_bottleneck
    from vqstudy.policy.config import load_bottleneck_config

    cfg = load_bottleneck_config(args.config, parse_overrides(args.set))
    _, paths = run_bottleneck(cfg, _command_line(args.argv))
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def cmd_policy_train(args: argparse.Namespace) -> int:
    from vqstudy.policy.learn import load_policy_config, run_train

    overrides = parse_overrides(args.set + ([f"out_dir={args.out}"] if args.out else []))
    trained, out = run_train(load_policy_config(args.config, overrides))
    print_table(f"{trained.policy.name}: trained (held-out episodes, open loop)", _metric_rows(trained.metrics))
    print(f"wrote {out}/")
    return 0


def _policy_source(args: argparse.Namespace) -> Any:
    from vqstudy.policy.model import LearnedPolicy
    from vqstudy.policy.pixels import policy_source

    return policy_source(LearnedPolicy.from_pretrained(args.policy), args.execute)


def cmd_policy_eval(args: argparse.Namespace) -> int:
    from vqstudy.sim.commands import cmd_policy_eval as sim_policy_eval

    if args.policy is None and args.execute is not None:
        raise ValueError("--execute applies to --policy DIR only")
    return sim_policy_eval(args, builder=_policy_source if args.policy else None)


def cmd_policy_grid(args: argparse.Namespace) -> int:
    from vqstudy.machine import machine_line
    from vqstudy.policy.closed_report import write_report
    from vqstudy.policy.grid import load_grid_config, run_grid

    overrides = parse_overrides(args.set + ([f"out_dir={args.out}"] if args.out else []))
    cfg = load_grid_config(args.config, overrides)
    start = time.perf_counter()
    rows = Path(cfg.out_dir) / "rows.jsonl" if args.report_only else run_grid(cfg)
    header = (f"# {cfg.name}: closed-loop bottleneck grid\n\ncommand: `{_command_line(args.argv)}`\n\n"
              f"machine: {machine_line()}\n\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    for path in write_report(rows, cfg.out_dir, cfg.reference_head, header).values():
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------
# Parser and entry point
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqstudy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pair", help="train a hierarchical VQ-VAE and its capacity-matched single-level twin")
    _add_config_args(p, "train.max_steps=50")
    p.add_argument("--out", help="parent folder of the run folder (sets out_dir; default runs/)")
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("plot", help="redraw the figures of a run directory")
    p.add_argument("run_dir")
    p.add_argument("--out", help="folder for the figures (default: the run directory; runs/plots/NAME for a "
                   "committed reference under results/)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("eval", help="evaluate the models of a `vqstudy pair` run on any image source")
    p.add_argument("run_dir", help="a run directory written by `vqstudy pair` (holds <model>/model.safetensors)")
    _add_config_args(p, "data.source=imagefolder --set data.root=DIR")
    p.add_argument("--out", help="parent folder of the output folder (default runs/eval; never the run directory)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="nearest-code search benchmark (see scripts/bench_nearest.py)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("assets", help="offline weights: `vqstudy assets fetch`")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("data", help="data sets: `vqstudy data fetch robosuite-demos`, `vqstudy data make metaworld`")
    data_sub = p.add_subparsers(dest="data_action", required=True)
    d = data_sub.add_parser("fetch", help="fetch embedded data")
    d.add_argument("dataset", choices=["robosuite-demos"])
    d.add_argument("--cache-dir", default=None)
    d.set_defaults(func=cmd_data)
    from vqstudy.sim.commands import add_data_make_parser  # cheap: vqstudy.sim imports Meta-World lazily

    add_data_make_parser(data_sub)

    p = sub.add_parser("actions", help="action-chunk tokenizers: train | eval | sweep")
    actions_sub = p.add_subparsers(dest="action", required=True)
    for action, text in (("train", "train and save a tokenizer"), ("eval", "evaluate a saved tokenizer on val"),
                         ("sweep", "run the study grid (vqstudy.actions.study)")):
        a = actions_sub.add_parser(action, help=text)
        _add_config_args(a, "train.steps=50")
        if action == "eval":
            a.add_argument("--checkpoint", help="saved tokenizer directory (default <out_dir>/<name>/tokenizer)")
        a.set_defaults(func=cmd_actions)

    p = sub.add_parser("export", help="re-export a trained action tokenizer with an LM id mapping for a VLA head")
    p.add_argument("--checkpoint", required=True, help="directory written by save_pretrained (e.g. runs/actions/NAME/tokenizer)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--id-mode", choices=["offset", "last_n"], default="offset")
    p.add_argument("--token-offset", type=int, default=0, help="first LM id of the action tokens (offset mode)")
    p.add_argument("--lm-vocab-size", type=int, default=None, help="LM vocabulary size (required for last_n)")
    p.add_argument("--order", choices=["keep", "seriate_action", "seriate", "none"], default="keep",
                   help="id order: keep the saved one, seriate anew (on decoded actions or latent codes), or none")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bottleneck", help="encoder quality x policy head x codebook size grid (arXiv 2604.03191)")
    _add_config_args(p, "head.steps=50 or seeds=[0]")
    p.set_defaults(func=cmd_bottleneck)

    p = sub.add_parser("policy", help="learned Meta-World policies: train | eval | grid (arXiv 2604.03191)")
    policy_sub = p.add_subparsers(dest="policy_action", required=True)
    a = policy_sub.add_parser("train", help="behaviour cloning on `vqstudy data make metaworld` demonstrations")
    _add_config_args(a, "head_kind=flow --set encoder.kind=random_proj")
    a.add_argument("--out", help="parent folder of the policy folder (sets out_dir; default runs/policy)")
    a.set_defaults(func=cmd_policy_train)
    from vqstudy.sim.commands import add_policy_eval_parser

    a = add_policy_eval_parser(policy_sub)
    a.add_argument("--policy", default=None, help="a policy directory written by `vqstudy policy train` (replaces --source)")
    a.add_argument("--execute", type=int, default=None, help="with --policy: steps of each chunk executed before "
                   "re-planning (default: the whole chunk, open loop)")
    a.set_defaults(func=cmd_policy_eval)
    a = policy_sub.add_parser("grid", help="encoder rung x head x codebook size x seed, closed loop")
    _add_config_args(a, "seeds=[0] --set rollout.n=10")
    a.add_argument("--out", help="output folder (sets out_dir)")
    a.add_argument("--report-only", action="store_true", help="only rewrite the report from <out_dir>/rows.jsonl")
    a.set_defaults(func=cmd_policy_grid)
    return parser


PASSTHROUGH: dict[str, Callable[[argparse.Namespace], int]] = {"bench": cmd_bench}
"""Subcommands that hand every following argument to their own parser (so `--help` reaches it)."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(command=argv[0], rest=argv[1:], func=PASSTHROUGH[argv[0]], verbose=False)
    else:
        args = build_parser().parse_args(argv)
    args.argv = argv
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"vqstudy {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

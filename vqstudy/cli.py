"""The `vqstudy` command.

Config merge order for every subcommand that takes one: dataclass defaults <- YAML (--config)
<- `--set a.b=value` overrides (values parsed as YAML), in that order.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from vqstudy.config import parse_overrides


def _rich_table(title: str, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from vqstudy.pair import _fmt

    table = Table(title=title)
    if not rows:
        Console().print(f"{title}: no rows")
        return
    for key in rows[0]:
        table.add_column(str(key), justify="right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    Console().print(table)


def cmd_pair(args: argparse.Namespace) -> int:
    from vqstudy.pair import load_pair_config, run_pair, summary_rows

    cfg = load_pair_config(args.config, parse_overrides(args.set))
    results = run_pair(cfg)
    _rich_table(f"{cfg.name}: capacity-matched pair", summary_rows(results))
    print(f"wrote {cfg.out_dir}/{cfg.name}/")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from vqstudy.plots import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")
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
    from vqstudy.data.robosuite import fetch_robosuite_demos

    for path in fetch_robosuite_demos(cache_dir=args.cache_dir):
        print(path)
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    from vqstudy.actions import main as actions_main

    return actions_main([args.action, *args.rest]) or 0


def cmd_export(args: argparse.Namespace) -> int:
    from vqstudy.actions import export_main

    return export_main(args.rest) or 0


def cmd_bottleneck(args: argparse.Namespace) -> int:
    from vqstudy.bottleneck import main as bottleneck_main

    return bottleneck_main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqstudy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pair", help="train a hierarchical VQ-VAE and its capacity-matched single-level twin")
    p.add_argument("--config", help="YAML file of PairConfig fields (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.max_steps=50")
    p.set_defaults(func=cmd_pair)

    p = sub.add_parser("plot", help="redraw the figures of a results directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bench", help="nearest-code search benchmark (see scripts/bench_nearest.py)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("assets", help="offline weights: `vqstudy assets fetch`")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("data", help="embedded data: `vqstudy data fetch robosuite-demos`")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("dataset", choices=["robosuite-demos"])
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("actions", help="action-chunk tokenizers: train | eval | sweep", add_help=False)
    p.add_argument("action", choices=["train", "eval", "sweep"])
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_actions)

    p = sub.add_parser("bottleneck", help="encoder quality x policy head x codebook size grid (arXiv 2604.03191)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bottleneck)

    p = sub.add_parser("export", help="export a trained action tokenizer for a VLA head", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_export)
    return parser


PASSTHROUGH = {"bench": cmd_bench, "bottleneck": cmd_bottleneck, "export": cmd_export}
"""Subcommands that hand every following argument to their own parser (so `--help` reaches it)."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(command=argv[0], rest=argv[1:], func=PASSTHROUGH[argv[0]], verbose=False)
    elif len(argv) >= 2 and argv[0] == "actions" and argv[1] in ("train", "eval", "sweep"):
        args = argparse.Namespace(command="actions", action=argv[1], rest=argv[2:], func=cmd_actions, verbose=False)
    else:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"vqstudy {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

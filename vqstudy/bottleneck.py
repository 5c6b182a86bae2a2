"""`vqstudy bottleneck`: where is the bottleneck, the encoder or the action codebook?

"The Compression Gap" (arXiv 2604.03191) claims the tightest information bottleneck of a visuomotor
policy governs scaling: with a continuous action head the observation encoder binds, so a better encoder
helps; with a discrete head through a fixed codebook (OAT: FSQ, 1000 codes, 8 tokens per 32-step chunk)
the codebook binds and encoder upgrades barely help; a larger codebook restores some encoder
sensitivity. This runs that experiment on demonstrations, measuring held-out action error instead of
simulator success:

    state -> frozen encoder rung (graded quality) -> policy head -> action chunk (B, H, A)

over the grid encoder rung x head (continuous; discrete per tokenizer/codebook size) x seed, and writes
a table, results.json, runs.csv, error_vs_encoder.png and README.md to `out_dir`
(see `vqstudy.bc.experiment` and `vqstudy.bc.report`).

Usage: `vqstudy bottleneck --config configs/bottleneck_default.yaml [--set key.path=value ...]`;
merge order: dataclass defaults <- YAML <- --set.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from vqstudy.bc.config import BottleneckConfig, TokenizerSpec, load_bottleneck_config
from vqstudy.bc.encoders import EncoderSpec
from vqstudy.bc.experiment import GridResult, run_grid
from vqstudy.bc.heads import HeadConfig
from vqstudy.config import parse_overrides, to_dict

__all__ = ["BottleneckConfig", "EncoderSpec", "HeadConfig", "TokenizerSpec", "load_bottleneck_config", "main",
           "run_bottleneck"]

logger = logging.getLogger(__name__)


def run_bottleneck(cfg: BottleneckConfig, command: str = "", episodes=None) -> tuple[GridResult, dict]:
    """Run the grid of `cfg` and write its results to `cfg.out_dir`; returns the grid and the written paths."""
    from vqstudy.bc.report import write_results

    result = run_grid(cfg, episodes)
    paths = write_results(cfg.out_dir, to_dict(cfg), result.rows, result.data_summary, result.seconds,
                          command or "(library call)", cfg.metric, cfg.quality)
    logger.info("bottleneck grid: %d rows in %.1f min -> %s", len(result.rows), result.seconds / 60, cfg.out_dir)
    return result, paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqstudy bottleneck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML of BottleneckConfig fields (configs/bottleneck_*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. head.steps=50 or seeds=[0]")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "vqstudy bottleneck") -> int:
    """Entry point of `vqstudy bottleneck`; returns the exit status. `prog` is how the command is recorded."""

    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_bottleneck_config(args.config, parse_overrides(args.set))
    command = f"{prog} " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    _, paths = run_bottleneck(cfg, command)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m vqstudy.bottleneck"))

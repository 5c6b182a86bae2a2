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
(see `vqstudy.policy.experiment` and `vqstudy.policy.report`).

Usage: `vqstudy bottleneck --config configs/bottleneck_default.yaml [--set key.path=value ...]` (vqstudy.cli);
merge order: dataclass defaults <- YAML <- --set.
"""

from __future__ import annotations

import logging

from vqstudy.policy.config import BottleneckConfig, TokenizerSpec, load_bottleneck_config
from vqstudy.policy.encoders import EncoderSpec
from vqstudy.policy.experiment import GridResult, run_grid
from vqstudy.policy.heads import HeadConfig
from vqstudy.config import to_dict
from vqstudy.policy.report import write_results

__all__ = ["BottleneckConfig", "EncoderSpec", "HeadConfig", "TokenizerSpec", "load_bottleneck_config", "run_bottleneck"]

logger = logging.getLogger(__name__)


def run_bottleneck(cfg: BottleneckConfig, command: str = "", episodes=None) -> tuple[GridResult, dict]:
    """Run the grid of `cfg` and write its results to `cfg.out_dir`; returns the grid and the written paths."""
    result = run_grid(cfg, episodes)
    paths = write_results(cfg.out_dir, to_dict(cfg), result.rows, result.data_summary, result.seconds,
                          command or "(library call)", cfg.metric, cfg.quality)
    logger.info("bottleneck grid: %d rows in %.1f min -> %s", len(result.rows), result.seconds / 60, cfg.out_dir)
    return result, paths

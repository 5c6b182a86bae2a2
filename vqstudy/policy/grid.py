"""The closed-loop bottleneck grid (issue 10, arXiv 2604.03191 "The Compression Gap"): encoder rung x
policy head x seed, each policy measured by task success in Meta-World, open-loop error beside it.

Per seed: the normalizer and every tokenizer are fitted once on the train chunks and shared by all
rungs. Per (seed, rung, head): the policy is trained (`vqstudy.policy.learn.train_policy`), its
encoder quality probed on held-out episodes, and it is rolled out closed loop from the held-out
initial states of `rollout` with `initial_state_seed(seed, task, i, "eval")`, the same states for every
rung and head of a seed (paired comparisons). One JSON line per policy is appended to
`<out_dir>/rows.jsonl` as soon as it is measured; a rerun with the same config skips the rows already
there (an interrupted grid resumes). `vqstudy.policy.closed_report` turns the rows into the analysis.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqstudy.config import from_dict, load_config, to_dict
from vqstudy.policy.config import TokenizerSpec
from vqstudy.policy.encoders import EncoderSpec
from vqstudy.policy.heads import HeadConfig
from vqstudy.policy.learn import PolicyDataConfig, fit_action_tokenizer, fit_normalizer, train_policy
from vqstudy.policy.model import DISCRETE, HEAD_KINDS
from vqstudy.policy.pixels import PixelFeaturizer, pixel_demo_data, policy_source
from vqstudy.sim.env import DEFAULT_MAX_STEPS
from vqstudy.sim.rollout import RolloutConfig, evaluate

logger = logging.getLogger(__name__)


@dataclass
class HeadSpec:
    """One policy head of the grid."""

    name: str = "mlp"
    """Label in tables and plots."""
    kind: str = "mlp"
    """mlp | flow | parallel | ar."""
    tokenizer: str | None = None
    """Name of the grid tokenizer the discrete heads predict (None for mlp and flow)."""
    rungs: list[str] | None = None
    """Encoder rungs this head is trained on (None: all)."""

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"HeadSpec.kind ({self.kind!r}) must be one of {list(HEAD_KINDS)}")
        if (self.kind in DISCRETE) != (self.tokenizer is not None):
            raise ValueError(f"HeadSpec {self.name!r}: kind {self.kind!r} "
                             f"{'needs a tokenizer' if self.kind in DISCRETE else 'takes no tokenizer'}")


@dataclass
class RolloutSpec:
    """Closed-loop evaluation of every policy."""

    tasks: list[str] = field(default_factory=lambda: ["mt10"])
    """Meta-World tasks (or ['mt10']); the policies are trained on these tasks' demonstrations."""
    n: int = 50
    """Rollouts per task per policy."""
    max_steps: int = DEFAULT_MAX_STEPS
    """Steps before a rollout counts as failed."""
    num_envs: int = 10
    """Simulators per task in lockstep (the policy's inference batch)."""
    execute: int | None = None
    """Steps of each chunk executed before re-planning (None: the whole chunk, open loop)."""


def default_encoders() -> list[EncoderSpec]:
    return [EncoderSpec("proj2", "random_proj", out_dim=2), EncoderSpec("proj6", "random_proj", out_dim=6),
            EncoderSpec("proj16", "random_proj", out_dim=16), EncoderSpec("state", "identity")]


def default_tokenizers() -> list[TokenizerSpec]:
    return [TokenizerSpec(f"vq{k}", "vq", codebook_size=k, num_tokens=4, steps=1500) for k in (16, 256, 1024, 4096)]


def default_heads() -> list[HeadSpec]:
    return [HeadSpec("mlp", "mlp"), HeadSpec("flow", "flow"),
            *(HeadSpec(f"parallel_vq{k}", "parallel", f"vq{k}") for k in (16, 256, 1024, 4096)),
            HeadSpec("ar_vq256", "ar", "vq256")]


@dataclass
class GridConfig:
    """The factorial grid: encoder rung x head x seed, measured in closed loop."""

    name: str = "policy_grid"
    """Run name (recorded in the results)."""
    out_dir: str = "runs/policy_grid"
    """Folder for rows.jsonl and the report (results.md, results.json, success_vs_encoder.png)."""
    data: PolicyDataConfig = field(default_factory=PolicyDataConfig)
    """Demonstrations (tasks default to rollout.tasks)."""
    encoders: list[EncoderSpec] = field(default_factory=default_encoders)
    """The encoder ladder, poorest first (the lift is measured from the first rung to the last)."""
    tokenizers: list[TokenizerSpec] = field(default_factory=default_tokenizers)
    """Action tokenizers of the discrete heads."""
    heads: list[HeadSpec] = field(default_factory=default_heads)
    """Policy heads."""
    head: HeadConfig = field(default_factory=lambda: HeadConfig(steps=1500, batch_size=256))
    """Head size and training (shared by all heads)."""
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    """Closed-loop evaluation."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds (projection, noise, tokenizer, head, held-out initial states)."""
    reference_head: str = "parallel_vq256"
    """The discrete head with a 'fixed codebook' compared against the continuous heads (claim 2)."""
    threads: int | None = 1
    """torch.set_num_threads for the run."""
    probe_ridge: float = 1e-3
    """Ridge of the encoder-quality probe."""
    save_policies: bool = False
    """Also write every trained policy to <out_dir>/policies/<seed>/<rung>/<head>."""

    def __post_init__(self) -> None:
        self.encoders = [from_dict(EncoderSpec, e, f"encoders[{i}]") if isinstance(e, dict) else e
                         for i, e in enumerate(self.encoders)]
        self.tokenizers = [from_dict(TokenizerSpec, t, f"tokenizers[{i}]") if isinstance(t, dict) else t
                           for i, t in enumerate(self.tokenizers)]
        self.heads = [from_dict(HeadSpec, h, f"heads[{i}]") if isinstance(h, dict) else h for i, h in enumerate(self.heads)]
        if isinstance(self.rollout, dict):
            self.rollout = from_dict(RolloutSpec, self.rollout, "rollout")
        if len(self.encoders) < 2:
            raise ValueError(f"GridConfig.encoders has {len(self.encoders)} rung(s); the lift needs at least 2")
        for what, names in (("encoders", [e.name for e in self.encoders]), ("tokenizers", [t.name for t in self.tokenizers]),
                            ("heads", [h.name for h in self.heads])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"GridConfig.{what} names must be unique, repeated: {dupes}")
        known = {t.name for t in self.tokenizers}
        rungs = {e.name for e in self.encoders}
        for h in self.heads:
            if h.tokenizer is not None and h.tokenizer not in known:
                raise ValueError(f"GridConfig.heads: {h.name!r} names tokenizer {h.tokenizer!r}; known: {sorted(known)}")
            if h.rungs is not None and set(h.rungs) - rungs:
                raise ValueError(f"GridConfig.heads: {h.name!r} names rungs {sorted(set(h.rungs) - rungs)}; known: {sorted(rungs)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"GridConfig.seeds ({self.seeds}) must be distinct integers >= 0")
        RolloutConfig(["reach-v3"], self.rollout.n, 0, self.rollout.max_steps, self.rollout.num_envs)  # validates

    def rollout_config(self, tasks: list[str], seed: int) -> RolloutConfig:
        return RolloutConfig(tasks, self.rollout.n, seed, self.rollout.max_steps, self.rollout.num_envs)


def load_grid_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> GridConfig:
    """Defaults <- YAML file <- `overrides` (lists such as encoders/heads are replaced whole)."""
    return load_config(GridConfig, path, overrides)


def _done(path: Path) -> set[tuple[int, str, str]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["seed"], r["encoder"], r["head"]) for r in rows}


def run_grid(cfg: GridConfig, on_row: Any = None) -> Path:
    """Run every missing (seed, rung, head) of `cfg`, appending rows to <out_dir>/rows.jsonl; returns its path."""
    from vqstudy.sim.env import resolve_tasks

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = _done(rows_path)
    tasks = resolve_tasks(",".join(cfg.rollout.tasks))  # 'mt10' and task names alike
    data_cfg = cfg.data if cfg.data.tasks is not None else PolicyDataConfig(**{**to_dict(cfg.data), "tasks": tasks})
    data = data_cfg.load()
    env_cache: dict[str, list] = {}
    specs = {t.name: t for t in cfg.tokenizers}
    pixel_rungs: dict[str, tuple] = {}  # rung name -> (featurizer, pixel DemoData, render stats)
    frames: dict = {}  # rendered demonstration frames, shared by pixel rungs with the same size and camera
    for seed in cfg.seeds:
        ends = (cfg.encoders[0], cfg.encoders[-1])  # the lift's two ends first, head by head, then the middle
        order = [(e, h) for h in cfg.heads for e in ends] + [(e, h) for e in cfg.encoders[1:-1] for h in cfg.heads]
        todo = [(e, h) for e, h in order
                if (h.rungs is None or e.name in h.rungs) and (seed, e.name, h.name) not in done]
        if not todo:
            continue
        normalizer = fit_normalizer(data.train.chunks)
        tokenizers = {}
        for name in sorted({h.tokenizer for _, h in todo if h.tokenizer is not None}):
            start = time.perf_counter()
            tokenizers[name] = (fit_action_tokenizer(specs[name], data.train.chunks, normalizer, seed),
                                time.perf_counter() - start)
        for encoder, head in todo:
            tok, tok_s = tokenizers.get(head.tokenizer, (None, 0.0))
            rung_data, featurizer, render_stats = data, None, None
            if encoder.kind == "pixels":  # frames rendered and featurized once per rung, reused by every head
                if encoder.name not in pixel_rungs:
                    cnn = PixelFeaturizer(encoder)
                    pixel_rungs[encoder.name] = (cnn, *pixel_demo_data(data, cnn, frame_cache=frames))
                featurizer, rung_data, render_stats = pixel_rungs[encoder.name]
            trained = train_policy(rung_data, encoder, head.kind, cfg.head, seed, tok, normalizer, cfg.probe_ridge)
            if cfg.save_policies:
                trained.policy.save_pretrained(out / "policies" / str(seed) / encoder.name / head.name)
            source = policy_source(trained.policy, cfg.rollout.execute, featurizer)
            result = evaluate(source, cfg.rollout_config(tasks, seed), env_cache=env_cache)
            spec = specs.get(head.tokenizer)
            row = {
                "seed": seed, "encoder": encoder.name, "rung": [e.name for e in cfg.encoders].index(encoder.name),
                "head": head.name, "head_kind": head.kind, "vocab_size": spec.vocab_size if spec else None,
                "num_tokens": spec.num_tokens if spec else None, "bits_per_chunk": spec.bits_per_chunk if spec else None,
                "tokenizer_seconds": tok_s, **trained.metrics,
                "success": result.overall.success_rate, "successes": result.overall.successes, "n": result.overall.n,
                "ci_low": result.overall.ci_low, "ci_high": result.overall.ci_high,
                "mean_length": result.overall.mean_length,
                "tasks": {t.task: [t.successes, t.n] for t in result.tasks},
                "timing": result.timing._asdict(), "source_stats": result.source_stats,
                "execute": source.horizon, "horizon": data.horizon,
                "pixel_render": render_stats,
            }
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            logger.info("seed %d %s %s: success %.3f [%.3f, %.3f], probe R2 %.3f, val mse %.4f, %.0f steps/s, sim %.0f%%",
                        seed, encoder.name, head.name, row["success"], row["ci_low"], row["ci_high"], row["probe_r2"],
                        row["val/chunk_mse"], result.timing.env_steps_per_s, 100 * result.timing.sim_fraction)
            if on_row is not None:
                on_row(row)
    for pool in env_cache.values():
        for env in pool:
            env.close()
    return rows_path

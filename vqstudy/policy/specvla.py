"""Spec-VLA in closed loop (arXiv 2507.22424): speculative decoding of action ids with relaxed acceptance,
on learned VQ codebooks whose ids carry no order unless the package orders them.

Per tokenizer (a learned VQ tokenizer and 256 uniform bins per dimension) the study trains a target
autoregressive token policy (the bottleneck study's `AutoregressiveHead` on the full state) and a
cheaper draft (narrower, one layer), both on the same demonstrations. Then, per id order (native,
seriated by `vqstudy.actions.ordering`, shuffled; bins are ordered by construction) and per tolerance r
(and the phase-adaptive rule: r in coarse phases by measured hand speed, 0 in fine ones) it measures
- acceptance: mean draft ids accepted per verification, target passes per chunk;
- decode wall time per chunk (batch 1, as a VLA decodes) and its speedup over plain greedy decoding;
- action error of the decoded chunk against the target's own greedy chunk (held-out observations);
- closed-loop success on Meta-World held-out initial states, with Wilson intervals.
r = 0 reproduces greedy decoding exactly (tested), so its closed loop is the greedy policy's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from vqstudy.actions.export import ActionTokenizer
from vqstudy.actions.ordering import codebook_order, inverse_order
from vqstudy.actions.registry import build_tokenizer
from vqstudy.config import load_config, to_dict
from vqstudy.machine import machine_line
from vqstudy.policy.config import TokenizerSpec
from vqstudy.policy.demos import DemoData, load_demos
from vqstudy.policy.encoders import EncoderSpec
from vqstudy.policy.heads import HeadConfig
from vqstudy.policy.learn import fit_action_tokenizer, fit_normalizer, train_policy
from vqstudy.policy.model import LearnedPolicy
from vqstudy.policy.speculative import greedy_decode, hand_speed, phase_tolerance, speculative_decode
from vqstudy.sim.rollout import RolloutConfig, evaluate
from vqstudy.sim.sources import SourceBatch

logger = logging.getLogger(__name__)

ORDERS = ("native", "seriated", "shuffled")
"""Id orders of a learned codebook; uniform bins are measured in their own (ordered) ids."""


@dataclass
class SpecVLAConfig:
    """The Spec-VLA study. Merge order: defaults <- YAML (--config) <- `--set` overrides."""

    name: str = "specvla"
    """Run name; outputs go to <out_dir>/."""
    out_dir: str = "runs/specvla"
    """Folder of the study's outputs (results/specvla is the committed reference)."""
    demos: str = "runs/metaworld_mt10"
    """Demonstrations written by `vqstudy data make metaworld`."""
    tasks: list[str] | None = None
    """Tasks to train and evaluate on (None: every task of the demonstrations)."""
    max_episodes: int | None = None
    """Keep only the first episodes of each task (quick runs)."""
    horizon: int = 8
    """H, steps per action chunk."""
    vq: TokenizerSpec = field(default_factory=lambda: TokenizerSpec("vq256", "vq", codebook_size=256, num_tokens=8))
    """The learned VQ tokenizer (L ids per chunk, each of K codes)."""
    bins: int = 256
    """Uniform bins per action dimension of the ordered reference tokenizer (0: leave it out)."""
    target: HeadConfig = field(default_factory=lambda: HeadConfig(hidden=256, layers=2, steps=400))
    """Target autoregressive head (the bottleneck study's default head size)."""
    draft: HeadConfig = field(default_factory=lambda: HeadConfig(hidden=128, layers=2, steps=400))
    """Draft head (cheaper than the target: see draft_kind)."""
    draft_kind: Literal["parallel", "ar"] = "parallel"
    """'parallel': a Medusa-style head predicting all L ids from the observation in one pass (one draft pass per
    round); 'ar': a smaller autoregressive head (gamma draft passes per round)."""
    gamma: int = 4
    """Draft ids proposed per verification."""
    rs: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    """Acceptance tolerances |rank(draft) - rank(target)| <= r (all measured open loop)."""
    closed_loop_rs: list[int] | None = None
    """The r values also run in closed loop (None: all of `rs`; r = 0 is the greedy policy's closed loop)."""
    adaptive_r: int = 8
    """Phase-adaptive rule: this r where the measured hand speed marks a coarse phase, 0 in fine phases."""
    speed_quantile: float = 0.5
    """Coarse phase: hand speed above this quantile of the training demonstrations' hand speeds."""
    timing_samples: int = 64
    """Held-out observations decoded one at a time (batch 1) for the wall-time measurement."""
    n: int = 20
    """Closed-loop rollouts per task per (tokenizer, order, r)."""
    max_steps: int = 300
    """Steps before an unsuccessful rollout is cut."""
    num_envs: int = 10
    """Simulators per task in lockstep."""
    seed: int = 0
    """Seeds tokenizer, heads, the shuffled order and the held-out initial states."""
    threads: int | None = 1
    """torch threads (1: these small models run fastest single-threaded on a shared CPU)."""

    def __post_init__(self) -> None:
        if self.draft_kind not in ("parallel", "ar"):
            raise ValueError(f"SpecVLAConfig.draft_kind ({self.draft_kind!r}) must be 'parallel' or 'ar'")
        if self.gamma < 1:
            raise ValueError(f"SpecVLAConfig.gamma ({self.gamma}) must be >= 1")
        if any(r < 0 for r in self.rs) or not self.rs:
            raise ValueError(f"SpecVLAConfig.rs ({self.rs}) must be non-empty and >= 0")
        if not 0 < self.speed_quantile < 1:
            raise ValueError(f"SpecVLAConfig.speed_quantile ({self.speed_quantile}) must be in (0, 1)")
        for name in ("n", "max_steps", "num_envs", "timing_samples", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"SpecVLAConfig.{name} ({getattr(self, name)}) must be >= 1")


def load_specvla_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SpecVLAConfig:
    return load_config(SpecVLAConfig, path, overrides, base=to_dict(SpecVLAConfig()))


class SpecPair:
    """A target policy (`LearnedPolicy` with an autoregressive head) and a draft policy (parallel or autoregressive
    head) over the same ids, both on the full state."""

    def __init__(self, name: str, target: LearnedPolicy, draft: LearnedPolicy) -> None:
        self.name, self.target, self.draft = name, target.eval(), draft.eval()

    @property
    def vocab_size(self) -> int:
        return self.target.head.vocab_size

    def inputs(self, obs: Tensor, tasks: list[str]) -> Tensor:
        return self.target.inputs(obs.float(), self.target.task_ids(tasks))  # (B, F + T), full-state encoder

    def decode_chunks(self, ids: Tensor) -> Tensor:
        return self.target.tokenizer.decode(ids).float()  # (B, H, A) environment units


class SpecSource:
    """`ActionSource` that decodes each chunk speculatively (or greedily when `r is None`) and records
    acceptance, target passes and decode time per chunk."""

    def __init__(self, pair: SpecPair, rank: Tensor, gamma: int, r: int | None, adaptive: tuple[float, int] | None,
                 name: str) -> None:
        self.pair, self.rank, self.gamma, self.r, self.adaptive, self.name = pair, rank, gamma, r, adaptive, name
        self.horizon = pair.target.horizon
        self.chunks = self.accepted = self.rounds = self.target_passes = 0
        self.seconds = 0.0

    def __call__(self, batch: SourceBatch) -> np.ndarray:
        obs = torch.as_tensor(np.asarray(batch.obs), dtype=torch.float32)
        start = time.perf_counter()
        with torch.inference_mode():
            x = self.pair.inputs(obs, list(batch.tasks))
            if self.r is None and self.adaptive is None:
                ids, passes = greedy_decode(self.pair.target.head, x)
                rounds, accepted = torch.full((len(x),), passes), torch.zeros(len(x))
            else:
                tol = phase_tolerance(hand_speed(obs), *self.adaptive) if self.adaptive else self.r
                spec = speculative_decode(self.pair.target.head, self.pair.draft.head, x, self.gamma, tol, self.rank,
                                          draft_cond=self.pair.draft.inputs(obs, self.pair.draft.task_ids(list(batch.tasks))))
                ids, rounds, accepted = spec.ids, spec.rounds, spec.accepted
            chunks = self.pair.decode_chunks(ids)
        self.seconds += time.perf_counter() - start
        self.chunks += len(x)
        self.rounds += int(rounds.sum())
        self.accepted += int(accepted.sum())
        return chunks.cpu().numpy().astype(np.float32)

    def stats(self) -> dict[str, float]:
        chunks = max(self.chunks, 1)
        return {"target_passes_per_chunk": self.rounds / chunks, "accepted_per_chunk": self.accepted / chunks,
                "decode_ms_per_chunk_batched": 1000 * self.seconds / chunks}


def train_pair(data: DemoData, tokenizer_kind: str, cfg: SpecVLAConfig) -> SpecPair:
    """Tokenizer (learned VQ or uniform bins) + target and draft autoregressive heads on the full state."""
    normalizer = fit_normalizer(data.train.chunks)
    if tokenizer_kind == "vq":
        tokenizer = fit_action_tokenizer(cfg.vq, data.train.chunks, normalizer, cfg.seed)
        name = cfg.vq.name
    else:
        tok = build_tokenizer("bins", {"horizon": data.horizon, "action_dim": data.train.chunks.shape[-1],
                                       "num_bins": cfg.bins})
        tokenizer, name = ActionTokenizer(tok, normalizer), f"bins{cfg.bins}"
    encoder = EncoderSpec("state", "identity")
    target = train_policy(data, encoder, "ar", cfg.target, cfg.seed, tokenizer, normalizer).policy
    draft = train_policy(data, encoder, cfg.draft_kind, cfg.draft, cfg.seed + 1, tokenizer, normalizer).policy
    return SpecPair(name, target, draft)


def order_ranks(pair: SpecPair, seed: int) -> dict[str, Tensor]:
    """rank[id] per id order: native ids, seriated (decoded-action seriation), shuffled (the control)."""
    k = pair.vocab_size
    if pair.target.tokenizer.tokenizer.kind == "bins":
        return {"bins": torch.arange(k)}
    seriated = inverse_order(codebook_order(pair.target.tokenizer.tokenizer, space="action"))
    return {"native": torch.arange(k), "seriated": seriated,
            "shuffled": torch.randperm(k, generator=torch.Generator().manual_seed(seed))}


@torch.inference_mode()
def open_loop(pair: SpecPair, rank: Tensor, obs: Tensor, tasks: list[str], gamma: int, r: int | None,
              adaptive: tuple[float, int] | None) -> dict[str, float]:
    """On held-out observations (M, 39), decoded one at a time (batch 1): acceptance, target passes, median
    decode wall time per chunk for greedy and speculative decoding, and the action error against greedy."""
    x_all = pair.inputs(obs, tasks)
    draft_all = pair.draft.inputs(obs.float(), pair.draft.task_ids(tasks))
    greedy_s, spec_s, accepted, rounds, err = [], [], [], [], []
    for i in range(len(obs)):
        x, xd = x_all[i : i + 1], draft_all[i : i + 1]
        start = time.perf_counter()
        greedy, _ = greedy_decode(pair.target.head, x)
        greedy_s.append(time.perf_counter() - start)
        tol = phase_tolerance(hand_speed(obs[i : i + 1]), *adaptive) if adaptive else r
        start = time.perf_counter()
        spec = speculative_decode(pair.target.head, pair.draft.head, x, gamma, tol, rank, draft_cond=xd)
        spec_s.append(time.perf_counter() - start)
        accepted.append(int(spec.accepted))
        rounds.append(int(spec.rounds))
        err.append(float(((pair.decode_chunks(spec.ids) - pair.decode_chunks(greedy)) ** 2).mean()))
    g, s = float(np.median(greedy_s)), float(np.median(spec_s))
    return {"accepted_per_round": float(np.sum(accepted) / np.sum(rounds)),
            "accepted_per_chunk": float(np.mean(accepted)), "target_passes_per_chunk": float(np.mean(rounds)),
            "greedy_ms": 1000 * g, "spec_ms": 1000 * s, "speedup_time": g / s,
            "speedup_passes": pair.target.head.num_tokens / float(np.mean(rounds)),
            "mse_vs_greedy": float(np.mean(err))}


def run_study(cfg: SpecVLAConfig, command: str = "") -> dict[str, Any]:
    """Train, measure open loop and closed loop, write specvla.json / specvla.md / success_vs_speedup.png."""
    start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = load_demos(cfg.demos, cfg.horizon, split_seed=cfg.seed, tasks=cfg.tasks, max_episodes=cfg.max_episodes)
    speeds = hand_speed(data.train.obs.float())
    threshold = float(torch.quantile(speeds, cfg.speed_quantile))
    m = min(cfg.timing_samples, len(data.val.obs))
    pick = torch.randperm(len(data.val.obs), generator=torch.Generator().manual_seed(cfg.seed))[:m]
    obs_t = data.val.obs[pick].float()
    tasks_t = [data.task_names[int(t)] for t in data.val.tasks[pick]]
    rollout = RolloutConfig(list(data.task_names), n=cfg.n, seed=cfg.seed, max_steps=cfg.max_steps,
                            num_envs=cfg.num_envs)
    rows: list[dict[str, Any]] = []
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kinds = ["vq"] + (["bins"] if cfg.bins else [])
    for kind in kinds:
        pair = train_pair(data, kind, cfg)
        logger.info("%s: target and draft trained (%.0fs so far)", pair.name, time.perf_counter() - start)
        greedy = evaluate(SpecSource(pair, torch.arange(pair.vocab_size), cfg.gamma, None, None, f"{pair.name}/greedy"),
                          rollout)
        base = {"tokenizer": pair.name, "K": pair.vocab_size, "L": pair.target.head.num_tokens}
        rows.append({**base, "order": "-", "r": "greedy", **_success(greedy), "speedup_time": 1.0,
                     "speedup_passes": 1.0, "mse_vs_greedy": 0.0, "accepted_per_round": math.nan})
        for order, rank in order_ranks(pair, cfg.seed).items():
            settings: list[tuple[str, int | None, tuple[float, int] | None]] = [(str(r), r, None) for r in cfg.rs]
            settings.append((f"adaptive({cfg.adaptive_r})", None, (threshold, cfg.adaptive_r)))
            for label, r, adaptive in settings:
                row = {**base, "order": order, "r": label,
                       **open_loop(pair, rank, obs_t, tasks_t, cfg.gamma, r, adaptive)}
                if r == 0:  # exact: the greedy policy's closed loop (speculative_decode at r=0 == greedy, tested)
                    row.update(_success(greedy))
                elif cfg.closed_loop_rs is not None and r is not None and r not in cfg.closed_loop_rs:
                    row.update(success=math.nan, ci_low=math.nan, ci_high=math.nan, n=0, successes=0)
                else:
                    source = SpecSource(pair, rank, cfg.gamma, r, adaptive, f"{pair.name}/{order}/r={label}")
                    result = evaluate(source, rollout)
                    row.update(_success(result), closed_loop=source.stats())
                rows.append(row)
                logger.info("%s %s r=%s: success %.3f speedup %.2fx", pair.name, order, label, row["success"],
                            row["speedup_time"])
                _write(out, cfg, rows, threshold, command, time.perf_counter() - start, partial=True)
    study = _write(out, cfg, rows, threshold, command, time.perf_counter() - start, partial=False)
    return study


def _success(result: Any) -> dict[str, Any]:
    o = result.overall
    return {"success": o.success_rate, "ci_low": o.ci_low, "ci_high": o.ci_high, "n": o.n, "successes": o.successes,
            "env_steps_per_s": result.timing.env_steps_per_s}


def _write(out: Path, cfg: SpecVLAConfig, rows: list[dict[str, Any]], threshold: float, command: str,
           seconds: float, partial: bool) -> dict[str, Any]:
    study = {"command": command, "machine": machine_line(), "wall_seconds": seconds, "partial": partial,
             "config": to_dict(cfg), "coarse_speed_threshold": threshold, "rows": rows}
    (out / "specvla.json").write_text(json.dumps(study, indent=2, default=float) + "\n")
    (out / "specvla.md").write_text(markdown(study))
    if not partial:
        plot(study, out / "success_vs_speedup.png")
    return study


def markdown(study: dict[str, Any]) -> str:
    cfg = study["config"]
    lines = [
        "# Spec-VLA in closed loop: relaxed acceptance of drafted action ids (arXiv 2507.22424)", "",
        f"Command: `{study['command']}`", "", f"Machine: {study['machine']}. Wall time {study['wall_seconds'] / 60:.1f} min"
        + (" (partial: still running)" if study["partial"] else "") + ".", "",
        f"Target: autoregressive head (hidden {cfg['target']['hidden']}, {cfg['target']['layers']} layers); draft: "
        f"{cfg['draft_kind']} head (hidden {cfg['draft']['hidden']}, {cfg['draft']['layers']} layers); gamma = "
        f"{cfg['gamma']} drafted ids per target pass. "
        f"Closed loop: {cfg['n']} held-out initial states per task, max {cfg['max_steps']} steps. Speedup = median greedy "
        f"decode time / median speculative decode time per chunk at batch 1 on {cfg['timing_samples']} held-out "
        "observations (wall time, same run); passes = L / target passes per chunk. Adaptive: r = "
        f"{cfg['adaptive_r']} where the hand speed exceeds {study['coarse_speed_threshold']:.4g} (the "
        f"{cfg['speed_quantile']:.0%} quantile of the demonstrations), else 0.", "",
        "| tokenizer | order | r | accepted / round | target passes / chunk | speedup (time) | speedup (passes) | "
        "MSE vs greedy | success | 95% interval |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in study["rows"]:
        lines.append(
            f"| {row['tokenizer']} | {row['order']} | {row['r']} | {row.get('accepted_per_round', math.nan):.2f} | "
            f"{row.get('target_passes_per_chunk', row['L']):.2f} | {row['speedup_time']:.2f}x | "
            f"{row['speedup_passes']:.2f}x | {row['mse_vs_greedy']:.2e} | {row['success']:.3f} | "
            f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] |")
    return "\n".join(lines) + "\n"


def plot(study: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in study["rows"]:
        if row["r"] != "greedy" and not str(row["r"]).startswith("adaptive"):
            curves.setdefault(f"{row['tokenizer']} / {row['order']}", []).append(row)
    for label, rows in curves.items():
        x = [r["speedup_time"] for r in rows]
        y = [r["success"] for r in rows]
        err = [[r["success"] - r["ci_low"] for r in rows], [r["ci_high"] - r["success"] for r in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        for r in rows:
            ax.annotate(f"r={r['r']}", (r["speedup_time"], r["success"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="decode speedup over greedy (wall time, batch 1)", ylabel="closed-loop success (MT10)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def newcombe_interval(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """95% interval of p1 - p2 for two independent proportions (Newcombe's hybrid score method, from the
    two Wilson intervals); conservative for rows that share initial states."""
    from vqstudy.sim.rollout import wilson_interval

    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1)
    l2, u2 = wilson_interval(s2, n2)
    d = p1 - p2
    return d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def merge_studies(studies: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-seed studies (specvla.json dicts) row by row: (tokenizer, order, r) -> successes and n summed
    over the seeds that ran it in closed loop (Wilson interval), open-loop measures averaged over seeds
    (with their min and max), and the success difference to the same tokenizer's greedy rows of the same
    seeds (Newcombe interval)."""
    from vqstudy.sim.rollout import wilson_interval

    if not studies:
        raise ValueError("merge_studies needs at least one study")
    groups: dict[tuple[str, str, str], list[tuple[int, dict[str, Any]]]] = {}
    for study in studies:
        seed = int(study["config"]["seed"])
        for row in study["rows"]:
            groups.setdefault((row["tokenizer"], row["order"], str(row["r"])), []).append((seed, row))
    seeds = sorted({int(s["config"]["seed"]) for s in studies})
    if len(seeds) != len(studies):
        raise ValueError(f"merge_studies got {len(studies)} studies but seeds {seeds}: each seed once")
    greedy = {key[0]: dict(rows) for key, rows in groups.items() if key[2] == "greedy"}
    merged = []
    for (tok, order, r), rows in groups.items():
        closed = [(s, row) for s, row in rows if row.get("n", 0)]
        out: dict[str, Any] = {"tokenizer": tok, "K": rows[0][1]["K"], "L": rows[0][1]["L"], "order": order, "r": r,
                               "seeds_open_loop": [s for s, _ in rows], "seeds_closed_loop": [s for s, _ in closed]}
        for key in ("accepted_per_round", "target_passes_per_chunk", "speedup_time", "speedup_passes", "mse_vs_greedy"):
            values = [float(row[key]) for _, row in rows if key in row and math.isfinite(float(row[key]))]
            out[key] = sum(values) / len(values) if values else math.nan
            out[f"{key}_range"] = [min(values), max(values)] if values else None
        if r == "greedy":  # plain autoregressive decoding: one target pass per id
            out.update(target_passes_per_chunk=float(out["L"]), speedup_passes=1.0)
        succ, n = sum(row["successes"] for _, row in closed), sum(row["n"] for _, row in closed)
        out.update(successes=succ, n=n, success=succ / n if n else math.nan)
        out["ci_low"], out["ci_high"] = wilson_interval(succ, n) if n else (math.nan, math.nan)
        base = [greedy.get(tok, {}).get(s) for s, _ in closed]
        if closed and r != "greedy" and all(b is not None for b in base):
            gs, gn = sum(b["successes"] for b in base), sum(b["n"] for b in base)
            out["diff_vs_greedy"] = succ / n - gs / gn
            out["diff_ci"] = list(newcombe_interval(succ, n, gs, gn))
        merged.append(out)
    return {"seeds": seeds, "rows": merged, "machine": [s["machine"] for s in studies],
            "wall_seconds": [s["wall_seconds"] for s in studies], "commands": [s["command"] for s in studies],
            "configs": [s["config"] for s in studies]}


def merged_markdown(merged: dict[str, Any]) -> str:
    def rng(row: dict[str, Any], key: str, fmt: str) -> str:
        r = row.get(f"{key}_range")
        return "" if not r or len(row["seeds_open_loop"]) < 2 else f" ({format(r[0], fmt)}-{format(r[1], fmt)})"

    lines = ["# Spec-VLA in closed loop, pooled over seeds " + ", ".join(map(str, merged["seeds"])), "",
             "Per seed: " + "; ".join(f"`{c}` ({w / 60:.1f} min)" for c, w in zip(merged["commands"],
                                                                                  merged["wall_seconds"])), "",
             "Machines: " + " | ".join(dict.fromkeys(merged["machine"])), "",
             "Open-loop columns: mean over seeds (min-max across seeds). Success: rollouts pooled over the seeds "
             "that ran the row in closed loop (Wilson 95%); difference to the same tokenizer's greedy policy on the "
             "same seeds with Newcombe's 95% interval (unpaired, so conservative).", "",
             "| tokenizer | order | r | seeds (closed loop) | accepted / round | target passes / chunk | speedup (time) "
             "| speedup (passes) | MSE vs greedy | success | 95% interval | - greedy | 95% interval |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in merged["rows"]:
        diff = row.get("diff_vs_greedy")
        lines.append(
            f"| {row['tokenizer']} | {row['order']} | {row['r']} | {','.join(map(str, row['seeds_closed_loop'])) or '-'} | "
            f"{row['accepted_per_round']:.2f}{rng(row, 'accepted_per_round', '.2f')} | "
            f"{row['target_passes_per_chunk']:.2f} | {row['speedup_time']:.2f}x{rng(row, 'speedup_time', '.2f')} | "
            f"{row['speedup_passes']:.2f}x | {row['mse_vs_greedy']:.2e} | "
            + (f"{row['success']:.3f} ({row['successes']}/{row['n']}) | [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | "
               if row["n"] else "- | - | ")
            + (f"{diff:+.3f} | [{row['diff_ci'][0]:+.3f}, {row['diff_ci'][1]:+.3f}] |" if diff is not None else "- | - |"))
    return "\n".join(lines) + "\n"


def write_merged(dirs: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge the specvla.json of `dirs` (one seed each) into <out>/specvla_merged.{json,md} and the pooled plot."""
    studies = [json.loads((Path(d) / "specvla.json").read_text()) for d in dirs]
    partial = [str(d) for d, s in zip(dirs, studies) if s.get("partial")]
    if partial:
        raise ValueError(f"studies {partial} are partial (still running or stopped); merge finished ones only")
    merged = merge_studies(studies)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "specvla_merged.json").write_text(json.dumps(merged, indent=2, default=float) + "\n")
    (out / "specvla_merged.md").write_text(merged_markdown(merged))
    plot({"rows": [r for r in merged["rows"] if r["n"]]}, out / "success_vs_speedup_merged.png")
    return merged

"""The action-tokenizer study grid (`vqstudy actions sweep`), over seeds, on one trajectory dataset.

Runs, each trained on the train split and evaluated on the validation episodes (original units):
- `vq_K<K>`: single-level action VQ-VAE, L tokens of K codes, for every K in `codebook_sizes`;
- `hvq_K<K>`: hierarchical VQ-VAE, coarse + fine tokens of K codes each (equal bits to vq_K<K> when
  coarse_tokens + fine_tokens = L);
- `baselines`: named (kind, config) pairs, e.g. OpenVLA uniform bins, FSQ, residual VQ.

For every run whose largest token group has <= `order_max_vocab` ids, the ordered-id analysis for
Spec-VLA's relaxed acceptance |draft id - verified id| <= r (arXiv 2507.22424): the Spearman
correlation between id distance and decoded-action distance of codes (`code_vectors(space="action")`),
for randomly shuffled ids (the unordered reference), native ids and seriated ids (vqstudy.actions.ordering),
and the action error (normalized units) of replacing every token by one at id distance exactly r,
r = 0..r_max.

Writes <out_dir>/: actions_study.json, actions_study.md (tables of mean ± std over seeds, the command
and the machine), rate_vs_error.png, utilization_curves.png, ordered_ids.png. Merge order: dataclass defaults <- YAML <- `--set`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vqstudy.actions.train import (
    ActionsConfig,
    fit_tokenizer,
    make_tokenizer,
    to_jsonable,
    tokenizer_config,
    val_episodes,
)
from vqstudy.actions.metrics import evaluate_episodes
from vqstudy.config import deep_merge, load_config, to_dict
from vqstudy.actions.export import TOKENIZER_KINDS, ActionTokenizer
from vqstudy.actions.ordering import code_vectors, codebook_order, neighbour_error, rank_correlation
from vqstudy.machine import machine_line

logger = logging.getLogger(__name__)

SCALARS = ("bits_nominal", "bits_effective_train", "utilization_train", "bits_effective", "utilization", "mse_mean",
           "mse_arm", "mae_mean", "mse_coarse", "mse_fine",
           "mae_coarse", "mae_fine", "gripper_acc", "drift_final", "drift_mean", "recon_mse_train", "train_seconds")
"""Per-run numbers aggregated (mean, std over seeds) in the table."""
RANK_PAIRS = 20_000
"""Code pairs sampled for each rank correlation (Spearman over 20k pairs: standard error ~0.007)."""


@dataclass
class SweepConfig:
    """The study grid. Merge order: defaults <- YAML (--config) <- `--set` overrides."""

    out_dir: str = "results/actions"
    """Where the tables and figures go."""
    base: ActionsConfig = field(default_factory=ActionsConfig)
    """Data, training and eval options shared by every run (its tokenizer fields are not used)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds; every run is repeated for each."""
    codebook_sizes: list[int] = field(default_factory=lambda: [16, 64, 256, 1024, 4096])
    """K of the single-level VQ runs."""
    vq: dict[str, Any] = field(default_factory=lambda: {"num_tokens": 4})
    """ActionVQConfig fields shared by the vq runs (quantizer.codebook_size is set to each K)."""
    hierarchical_sizes: list[int] = field(default_factory=lambda: [64, 256, 1024])
    """K of both levels of the hierarchical runs."""
    hvq: dict[str, Any] = field(default_factory=lambda: {"coarse_tokens": 2, "fine_tokens": 2})
    """HierarchicalActionVQConfig fields shared by the hvq runs (both codebook sizes set to each K)."""
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """name -> {kind: 'bins'|'fsq'|'rvq'|..., config: {fields}}."""
    order_max_vocab: int = 1024
    """Ordered-id analysis only for runs whose largest token group has at most this many ids (seriation is O(K^3))."""
    order_spaces: list[str] = field(default_factory=lambda: ["latent"])
    """Code vectors the seriation orders ('latent': what ActionTokenizer(order='seriate') uses; 'action')."""
    r_max: int = 16
    """Largest id distance r of the neighbour-acceptance error curve."""
    notes: str | None = None
    """Optional markdown file with a hand-written 'what we measured' paragraph, included in the md."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("SweepConfig.seeds ([]) must name at least one seed")
        for name in ("codebook_sizes", "hierarchical_sizes"):
            bad = [k for k in getattr(self, name) if isinstance(k, bool) or not isinstance(k, int) or k < 2]
            if bad:
                raise ValueError(f"SweepConfig.{name} ({getattr(self, name)}) must be integers >= 2, bad: {bad}")
        for space in self.order_spaces:
            if space not in ("latent", "action"):
                raise ValueError(f"SweepConfig.order_spaces ({self.order_spaces}) may only hold 'latent' and 'action'")
        if self.r_max < 0:
            raise ValueError(f"SweepConfig.r_max ({self.r_max}) must be >= 0")
        for name, spec in self.baselines.items():
            if not isinstance(spec, dict) or set(spec) - {"kind", "config"} or "kind" not in spec:
                raise ValueError(f"SweepConfig.baselines.{name} ({spec!r}) must be {{kind: ..., config: {{...}}}}")
            if name.startswith(("vq_K", "hvq_K")):
                raise ValueError(f"SweepConfig.baselines.{name}: names vq_K*/hvq_K* are reserved for the grid")
        for name, (kind, fields) in self.runs().items():
            tokenizer_config(kind, fields, self.base.data.horizon, fields.get("action_dim", 7), 0)  # validates

    def runs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Run name -> (tokenizer kind, config fields)."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for k in self.codebook_sizes:
            out[f"vq_K{k}"] = ("vq", deep_merge(self.vq, {"quantizer": {"codebook_size": k}}))
        for k in self.hierarchical_sizes:
            out[f"hvq_K{k}"] = ("hvq", deep_merge(self.hvq, {"coarse_quantizer": {"codebook_size": k},
                                                              "fine_quantizer": {"codebook_size": k}}))
        for name, spec in self.baselines.items():
            if spec["kind"] not in TOKENIZER_KINDS:
                raise ValueError(f"SweepConfig.baselines.{name}.kind ({spec['kind']!r}) must be one of {sorted(TOKENIZER_KINDS)}")
            out[name] = (spec["kind"], dict(spec.get("config") or {}))
        return out


def load_sweep_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Defaults <- YAML file <- `overrides` (nested dicts)."""
    return load_config(SweepConfig, path, overrides)


# ------------------------------------------------------------------------------------------------
# Ordered ids
# ------------------------------------------------------------------------------------------------


def compact(vectors: torch.Tensor) -> torch.Tensor:
    """(K, F) -> (K, min(K, F)) vectors with the same pairwise Euclidean distances (centred, in their own
    principal basis); makes pair distances cheap when F >> K (e.g. 256 bins x 3136 action dims)."""
    if vectors.shape[1] <= vectors.shape[0]:
        return vectors
    centred = vectors.double() - vectors.double().mean(0, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)  # (K, K), (K,)
    return (u * s).to(vectors.dtype)


@torch.no_grad()
def ordered_id_analysis(tokenizer, chunks: torch.Tensor, spaces: list[str], r_max: int, seed: int = 0) -> dict[str, Any]:
    """For the orders 'shuffled' (a random permutation within each token group: the unordered reference),
    'native' (the tokenizer's own ids) and 'seriated_<space>' for each of `spaces`: the rank correlation of
    id distance and decoded-action distance (mean over token groups) and the neighbour error for r = 0..r_max
    on normalized `chunks` (N, H, A)."""
    groups = tokenizer.token_groups()
    action_vectors = [compact(v) for v in code_vectors(tokenizer, "action")]  # per group (size, <= L_g*H*A)
    gen = torch.Generator().manual_seed(seed)
    orders = {
        "shuffled": torch.cat([torch.randperm(g.size, generator=gen) + g.start for g in groups]),
        "native": torch.arange(tokenizer.vocab_size),
    }
    for space in spaces:
        orders[f"seriated_{space}"] = codebook_order(tokenizer, space=space)
    recon = tokenizer.decode(tokenizer.encode(chunks))
    out: dict[str, Any] = {"r": list(range(r_max + 1)), "recon_mse": float(((recon - chunks) ** 2).mean())}
    for name, order in orders.items():
        rhos = [rank_correlation(order[g.start:g.start + g.size] - g.start, v, max_pairs=RANK_PAIRS) for g, v in zip(groups, action_vectors)]
        err = neighbour_error(tokenizer, chunks, range(r_max + 1), order=order, seed=seed)
        out[name] = {"rank_corr": statistics.fmean(rhos), "rank_corr_groups": rhos,
                     "mse": err.mse.tolist(), "mae": err.mae.tolist()}
    return out


# ------------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------------


def run_one(cfg: SweepConfig, name: str, kind: str, fields: dict[str, Any], seed: int, data) -> dict[str, Any]:
    """Train, evaluate and (if small enough) order one tokenizer; returns its result record."""
    train = cfg.base.train
    train = type(train)(**{**to_dict(train), "seed": seed})
    chunks = data.train.all_chunks()  # (N, H, A) normalized
    tok = make_tokenizer(kind, fields, cfg.base.data.horizon, data.train.action_dim, seed)
    fit = fit_tokenizer(tok, chunks, train)
    action_tok = ActionTokenizer(tok, data.normalizer)  # native ids: the order does not change fidelity
    ev = cfg.base.eval
    metrics = to_jsonable(evaluate_episodes(action_tok, val_episodes(data), ev.speed_quantile, ev.gripper_dim))
    grip = ev.gripper_dim % len(metrics["mse"]) if ev.gripper_dim is not None else None
    arm = [v for d, v in enumerate(metrics["mse"]) if d != grip]
    record: dict[str, Any] = {
        "run": name, "kind": kind, "seed": seed, "vocab_size": tok.vocab_size, "num_tokens": tok.num_tokens,
        "group_sizes": [g.size for g in tok.token_groups()], **metrics,
        "mse_arm": statistics.fmean(arm) if arm else math.nan,
        "recon_mse_train": fit.curve[-1].recon_mse, "utilization_train": fit.curve[-1].utilization,
        "bits_effective_train": fit.curve[-1].bits_effective, "train_seconds": fit.seconds,
        "curve": [p._asdict() for p in fit.curve],
    }
    if max(record["group_sizes"]) <= cfg.order_max_vocab:
        start = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(train.threads or threads)
        try:
            record["ordered"] = ordered_id_analysis(tok, data.val.all_chunks(), cfg.order_spaces, cfg.r_max, seed)
        finally:
            torch.set_num_threads(threads)
        record["order_seconds"] = time.perf_counter() - start
    logger.info("%s seed %d: mse %.4g, util %.3f, %.1f s", name, seed, record["mse_mean"], record["utilization"],
                fit.seconds)
    return record


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run: mean and sample std over seeds of SCALARS (and of per-dimension mse/mae)."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_run.setdefault(r["run"], []).append(r)
    out = []
    for run, rs in by_run.items():
        row: dict[str, Any] = {"run": run, "kind": rs[0]["kind"], "vocab_size": rs[0]["vocab_size"],
                               "num_tokens": rs[0]["num_tokens"], "seeds": len(rs)}
        for key in SCALARS:
            values = [float(r[key]) for r in rs if not math.isnan(float(r[key]))]
            row[key] = statistics.fmean(values) if values else math.nan
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan
        for key in ("mse", "mae"):
            row[key] = [statistics.fmean(v) for v in zip(*(r[key] for r in rs))]
        if all("ordered" in r for r in rs):
            row["ordered"] = {}
            for name in rs[0]["ordered"]:
                if name in ("r", "recon_mse"):
                    continue
                rho = [r["ordered"][name]["rank_corr"] for r in rs]
                row["ordered"][name] = {
                    "rank_corr": statistics.fmean(rho),
                    "rank_corr_std": statistics.stdev(rho) if len(rho) > 1 else 0.0,
                    "mse": [statistics.fmean(v) for v in zip(*(r["ordered"][name]["mse"] for r in rs))],
                }
            row["r"] = rs[0]["ordered"]["r"]
            row["ordered_recon_mse"] = statistics.fmean(r["ordered"]["recon_mse"] for r in rs)
        out.append(row)
    return out


def run_sweep(cfg: SweepConfig, command: str = "") -> dict[str, Any]:
    """Train/evaluate every (run, seed), write json, md and plots into cfg.out_dir; returns the study."""
    from vqstudy.actions.data.trajectories import build_trajectory_datasets

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = build_trajectory_datasets(cfg.base.data)
    records = []
    for name, (kind, fields) in cfg.runs().items():
        for seed in cfg.seeds:
            records.append(run_one(cfg, name, kind, fields, seed, data))
    study: dict[str, Any] = {
        "command": command,
        "machine": machine_line(),
        "wall_seconds": time.perf_counter() - start,
        "config": to_dict(cfg),
        "data": {"source": cfg.base.data.source, "train_chunks": len(data.train), "val_chunks": len(data.val),
                 "val_episodes": len(val_episodes(data)), "action_dim": data.train.action_dim,
                 "horizon": cfg.base.data.horizon, "split": cfg.base.data.resolved_split},
        "aggregate": aggregate(records),
        "records": records,
        "out_dir": str(out_dir),
    }
    study["table"] = table_rows(study["aggregate"])
    (out_dir / "actions_study.json").write_text(json.dumps(study, indent=1, default=float) + "\n")
    write_report(study, out_dir, cfg.notes)
    return study


def write_report(study: dict[str, Any], out_dir: str | Path, notes: str | Path | None = None,
                 report_command: str = "") -> list[Path]:
    """actions_study.md and the figures from a study dict (re-runnable from actions_study.json;
    `report_command` is recorded when the page is redrawn that way)."""
    out_dir = Path(out_dir)
    text = Path(notes).read_text() if notes else ""
    paths = plot_study(study, out_dir)
    (out_dir / "actions_study.md").write_text(study_markdown(study, text, report_command))
    return [out_dir / "actions_study.md", *paths]


def table_rows(aggregate_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Short rows for the console table."""
    return [{"run": a["run"], "K": a["vocab_size"], "L": a["num_tokens"], "bits": a["bits_nominal"],
             "eff. bits": a["bits_effective_train"], "util": a["utilization_train"], "mse": a["mse_mean"],
             "mse arm": a["mse_arm"],
             "drift": a["drift_final"]} for a in aggregate_rows]


# ------------------------------------------------------------------------------------------------
# Report: markdown and figures (from the study dict, never from live models)
# ------------------------------------------------------------------------------------------------


def _pm(row: dict[str, Any], key: str, fmt: str = ".3g") -> str:
    mean, std = row[key], row.get(f"{key}_std", math.nan)
    if isinstance(mean, float) and math.isnan(mean):
        return "n/a"
    return f"{mean:{fmt}} ± {std:{fmt}}" if std and not math.isnan(std) else f"{mean:{fmt}}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def benefit_gone_at(ordered: dict[str, Any], name: str, tolerance: float = 0.9, reference: str = "shuffled") -> int | None:
    """Smallest r >= 1 at which the neighbour error of order `name` reaches `tolerance` x that of the unordered
    `reference` (None: never up to r_max)."""
    native, seriated = ordered[reference]["mse"], ordered[name]["mse"]
    for r in range(1, len(native)):
        if seriated[r] >= tolerance * native[r]:
            return r
    return None


def findings(study: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers (what agrees or disagrees with expectations)."""
    rows = {a["run"]: a for a in study["aggregate"]}
    out = []
    vq = sorted((a for a in rows.values() if a["run"].startswith("vq_K")), key=lambda a: a["vocab_size"])
    if len(vq) >= 2:
        lo, hi = vq[0], vq[-1]
        best = min(vq, key=lambda a: a["mse_mean"])
        out.append(
            f"Single-level VQ, K {lo['vocab_size']} -> {hi['vocab_size']}: utilization (training chunks) "
            f"{lo['utilization_train']:.2f} -> {hi['utilization_train']:.2f}, effective bits "
            f"{lo['bits_effective_train']:.1f} -> {hi['bits_effective_train']:.1f} "
            f"(nominal {lo['bits_nominal']:.0f} -> {hi['bits_nominal']:.0f}); action MSE {lo['mse_mean']:.3g} -> "
            f"{hi['mse_mean']:.3g} (arm dims {lo['mse_arm']:.3g} -> {hi['mse_arm']:.3g}), lowest at "
            f"K={best['vocab_size']} ({best['mse_mean']:.3g}).")
    pairs = [(rows[f"vq_K{k}"], rows[f"hvq_K{k}"]) for k in study["config"]["hierarchical_sizes"]
             if f"vq_K{k}" in rows and f"hvq_K{k}" in rows]
    if pairs:
        parts = [f"{h['bits_nominal']:.0f} bits: hvq/vq MSE = {h['mse_mean'] / v['mse_mean']:.2f} "
                 f"(arm {h['mse_arm'] / v['mse_arm']:.2f})" for v, h in pairs]
        out.append("Hierarchical vs single-level at equal nominal bits (ratio < 1: hierarchical better): "
                   + "; ".join(parts) + ".")
    for name, row in rows.items():
        if "ordered" not in row:
            continue
        o = row["ordered"]
        for space in [k for k in o if k.startswith("seriated_")]:
            gone = benefit_gone_at(o, space)
            ratio = [o[space]["mse"][r] / o["shuffled"]["mse"][r] if o["shuffled"]["mse"][r] > 0 else math.nan
                     for r in (1, len(o["shuffled"]["mse"]) - 1)]
            out.append(
                f"{name} ({space.replace('seriated_', '')} seriation): rank corr {o['shuffled']['rank_corr']:.2f} "
                f"shuffled / {o['native']['rank_corr']:.2f} native / {o[space]['rank_corr']:.2f} seriated; neighbour "
                f"MSE seriated/shuffled {ratio[0]:.2f}x at r=1, {ratio[1]:.2f}x at r={len(o['shuffled']['mse']) - 1}; "
                + (f"the benefit (< 0.9x shuffled) is gone from r={gone}." if gone else
                   "still < 0.9x shuffled at every r measured."))
    return out


def study_markdown(study: dict[str, Any], notes: str = "", report_command: str = "") -> str:
    """The results page: command, machine, wall time, tables of mean ± std over seeds, findings."""
    agg = study["aggregate"]
    cfg, data = study["config"], study["data"]
    seeds = cfg["seeds"]
    lines = [
        "# Action-chunk tokenizers: codebook size, hierarchy, baselines, ordered ids",
        "",
        f"Command: `{study['command']}`",
        "",
        *([f"Page and figures redrawn from `actions_study.json` with: `{report_command}`", ""] if report_command else []),
        f"Machine: {study['machine']}",
        "",
        f"Wall time: {study['wall_seconds']:.0f} s ({study['wall_seconds'] / 60:.1f} min) for {len(agg)} runs x "
        f"{len(seeds)} seeds ({seeds}), training + evaluation + ordered-id analysis.",
        "",
        f"Data: {data['source']} ({data['split']} split), H={data['horizon']} x A={data['action_dim']} chunks, "
        f"{data['train_chunks']} training chunks (stride {cfg['base']['data']['stride']}), "
        f"{data['val_episodes']} validation episodes, cut into consecutive non-overlapping chunks for the "
        f"fidelity metrics ({data['val_chunks']} stride-{cfg['base']['data']['stride']} chunks for the ordered-id "
        "analysis). "
        f"Training: {cfg['base']['train']['steps']} Adam steps, batch {cfg['base']['train']['batch_size']}, "
        f"lr {cfg['base']['train']['lr']}.",
        "",
        "Errors are on the validation episodes in original action units (OSC_POSE deltas, controller-scaled), "
        "after the tokenizer's own normalizer (q01/q99 clipping included). Drift: ||cumsum(decoded) - "
        "cumsum(true)|| of the position deltas over an episode. Coarse/fine: steps above/below the episode's "
        "median end-effector speed. MSE/MAE: mean over all dims (a gripper sign flip costs 4/A per step, so "
        "the gripper dominates them); MSE arm: mean over the other (continuous) dims. "
        "Effective bits: sum over token groups of L_g x log2(perplexity of id "
        "usage); utilization: share of the K ids used at least once. Both are given on all training chunks "
        "(train) and on the validation chunks (val); the val numbers are capped by the few validation "
        "tokens (chunks x L), e.g. utilization <= that count / K. Values: mean ± sample std over seeds.",
        "",
    ]
    if notes:
        lines += ["## What we measured", "", notes.strip(), ""]
    lines += ["## Findings (computed from the numbers below)", ""] + [f"- {s}" for s in findings(study)] + [""]
    lines += ["## Fidelity and rate", ""]
    header = ["run", "K", "L", "bits (nominal)", "bits eff. (train)", "util. (train)", "bits eff. (val)",
              "util. (val)", "MSE", "MSE arm", "MAE", "MSE coarse", "MSE fine", "gripper acc", "drift final", "drift mean", "train s"]
    body = [[a["run"], str(a["vocab_size"]), str(a["num_tokens"]), f"{a['bits_nominal']:.1f}",
             _pm(a, "bits_effective_train", ".1f"), _pm(a, "utilization_train", ".3f"),
             _pm(a, "bits_effective", ".1f"), _pm(a, "utilization", ".3f"), _pm(a, "mse_mean"), _pm(a, "mse_arm"),
             _pm(a, "mae_mean"),
             _pm(a, "mse_coarse"), _pm(a, "mse_fine"), _pm(a, "gripper_acc", ".3f"), _pm(a, "drift_final"),
             _pm(a, "drift_mean"), f"{a['train_seconds']:.0f}"] for a in agg]
    lines += _md_table(header, body) + [""]
    lines += ["## Per-dimension MSE (original units, mean over seeds)", ""]
    dims = len(agg[0]["mse"]) if agg else 0
    names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"] if dims == 7 else [f"a{i}" for i in range(dims)]
    lines += _md_table(["run"] + names, [[a["run"]] + [f"{v:.3g}" for v in a["mse"]] for a in agg]) + [""]
    ordered = [a for a in agg if "ordered" in a]
    if ordered:
        lines += ["## Ordered ids (Spec-VLA relaxed acceptance |draft - verified| <= r)", "",
                  "Rank corr: Spearman correlation over code pairs of |id_i - id_j| and the distance between the "
                  "chunks the two codes decode to (per token group, averaged). Neighbour MSE: every token replaced "
                  "by the id at distance exactly r, MSE of the decoded chunk against the decode of the true ids "
                  "(normalized units, validation chunks; compare with the tokenizer's own recon MSE). 'shuffled' = a "
                  "random permutation of the ids (the unordered reference); 'native' = the tokenizer's own ids; "
                  "'ser. latent'/'ser. action' = ids renumbered along a short path through the codes' latent "
                  "vectors / decoded-action effects (vqstudy.actions.ordering; ActionTokenizer(order='seriate') uses latent). "
                  "'Benefit gone at r': first r where the seriated error reaches 0.9x the shuffled one. Uniform "
                  "bins are the ordered-by-construction reference.", ""]
        rs = [r for r in (1, 4, 16) if r <= cfg["r_max"]]
        spaces = [k for k in ordered[0]["ordered"] if k.startswith("seriated_")]
        names = ["shuffled", "native"] + spaces
        short = " / ".join(n.replace("seriated_", "ser. ") for n in names)
        header = ["run", "ids", "recon MSE (norm.)", f"rank corr {short}"] + [f"MSE r={r}: {short}" for r in rs]
        header += [f"benefit gone at r ({s.replace('seriated_', '')})" for s in spaces]
        body = []
        for a in ordered:
            o = a["ordered"]
            row = [a["run"], str(a["vocab_size"]), f"{a['ordered_recon_mse']:.3g}",
                   " / ".join(f"{o[n]['rank_corr']:.2f}" for n in names)]
            row += [" / ".join(f"{o[n]['mse'][r]:.3g}" for n in names) for r in rs]
            row += [str(benefit_gone_at(o, s) or f">{cfg['r_max']}") for s in spaces]
            body.append(row)
        lines += _md_table(header, body) + [""]
    lines += ["Figures: `rate_vs_error.png` (bits per chunk vs action MSE), `utilization_curves.png` (utilization "
              "and effective bits over training steps, mean over seeds), `ordered_ids.png` (neighbour error vs r, "
              "rank correlations). All numbers: `actions_study.json`.", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_study(study: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """rate_vs_error.png, utilization_curves.png, ordered_ids.png from a study dict."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    agg = study["aggregate"]
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key in zip(axes, ("bits_nominal", "bits_effective_train")):
        for family, marker in (("vq_K", "o-"), ("hvq_K", "s-")):
            rows = sorted((a for a in agg if a["run"].startswith(family)), key=lambda a: a[key])
            if rows:
                ax.errorbar([a[key] for a in rows], [a["mse_arm"] for a in rows],
                            yerr=[a["mse_arm_std"] for a in rows], fmt=marker, capsize=3,
                            label="single-level VQ (L=4)" if family == "vq_K" else "hierarchical VQ (2+2)")
                for a in rows:
                    ax.annotate(f"K={a['vocab_size'] // (2 if family == 'hvq_K' else 1)}", (a[key], a["mse_arm"]),
                                fontsize=7, xytext=(3, 3), textcoords="offset points")
        for a in agg:
            if not a["run"].startswith(("vq_K", "hvq_K")):
                ax.errorbar([a[key]], [a["mse_arm"]], yerr=[a["mse_arm_std"]], fmt="D", capsize=3, label=a["run"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("nominal bits per chunk (L x log2 K)" if key == "bits_nominal" else
                      "effective bits per chunk (perplexity on the training chunks)")
        ax.set_ylabel("validation MSE, 6 arm dims (original units)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Rate vs action error (mean ± std over seeds)")
    fig.tight_layout()
    paths.append(out_dir / "rate_vs_error.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, a in enumerate(agg):
        recs = [r for r in study["records"] if r["run"] == a["run"]]
        if len(recs[0]["curve"]) < 2:
            continue
        steps = [p["step"] for p in recs[0]["curve"]]
        style = "-" if a["run"].startswith("vq_K") else "--" if a["run"].startswith("hvq_K") else ":"
        for ax, key in zip(axes, ("utilization", "bits_effective")):
            values = [statistics.fmean(r["curve"][j][key] for r in recs) for j in range(len(steps))]
            ax.plot(steps, values, style, color=plt.cm.tab20(i % 20), label=a["run"])
    axes[0].set_ylabel("utilization (share of ids used by the training chunks)")
    axes[1].set_ylabel("effective bits per chunk")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Codebook use over training (mean over seeds)")
    fig.tight_layout()
    paths.append(out_dir / "utilization_curves.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    ordered = [a for a in agg if "ordered" in a]
    if ordered:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
        spaces = [k for k in ordered[0]["ordered"] if k.startswith("seriated_")]
        for i, a in enumerate(ordered):
            color = plt.cm.tab20(i % 20)
            r = a["r"][1:]
            axes[0].plot(r, a["ordered"]["shuffled"]["mse"][1:], "--", color=color, alpha=0.7)
            axes[0].plot(r, a["ordered"][spaces[0]]["mse"][1:], "-", color=color, label=a["run"])
        axes[0].set_yscale("log")
        axes[0].set_xlabel("id distance r of the accepted neighbour")
        axes[0].set_ylabel("action MSE vs true-id decode (normalized units)")
        axes[0].set_title(f"solid: {spaces[0].replace('_', ' ')} ids, dashed: shuffled ids")
        axes[0].legend(fontsize=7, ncol=2)
        axes[0].grid(alpha=0.3, which="both")
        names = ["shuffled", "native"] + spaces
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            axes[1].bar([i + j * width for i in range(len(ordered))], [a["ordered"][name]["rank_corr"] for a in ordered],
                        width, yerr=[a["ordered"][name]["rank_corr_std"] for a in ordered], label=name, capsize=2)
        axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(ordered))], [a["run"] for a in ordered],
                           rotation=45, ha="right", fontsize=7)
        axes[1].set_ylabel("Spearman(|id_i - id_j|, ||decode_i - decode_j||)")
        axes[1].legend(fontsize=7)
        axes[1].grid(alpha=0.3, axis="y")
        fig.tight_layout()
        paths.append(out_dir / "ordered_ids.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths

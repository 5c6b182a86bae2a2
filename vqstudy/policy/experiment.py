"""The factorial grid: encoder rung x policy head x seed, evaluated on held-out samples in original units.

Per seed: every tokenizer is trained once on the train-split chunks, exported with
`ActionTokenizer.save_pretrained`, reloaded with `from_pretrained`, and reused by every encoder rung;
its reconstruction floor (decode(encode(true chunk)) vs the true chunk) is measured on both splits.
Per (seed, rung): the encoder is built and frozen, its linear-probe quality measured, then the
continuous head and one discrete head per tokenizer are trained on its features and evaluated.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from vqstudy.actions.export import ActionTokenizer
from vqstudy.actions.metrics import ActionFidelity, speed_phases
from vqstudy.actions.train import fit_tokenizer
from vqstudy.policy.config import BottleneckConfig, TokenizerSpec
from vqstudy.policy.data import BCData, build_bc_data, flatten_chunks
from vqstudy.policy.encoders import build_encoder, linear_probe, policy_inputs
from vqstudy.policy.heads import ContinuousHead, DiscreteHead, train_head
from vqstudy.actions.data.episode import Episode

logger = logging.getLogger(__name__)


def action_errors(pred: Tensor, true: Tensor, episodes: Tensor, gripper_dim: int | None) -> dict[str, float]:
    """Errors of predicted chunks (N, H, A) against true ones, original units.

    `mse_arm`/`mae_arm`: mean over the non-gripper dims; `mse_coarse`/`mse_fine` (and mae): the same on the
    fast / slow steps of each episode (`vqstudy.actions.metrics.speed_phases`, per episode piece of
    `episodes` (N,)); `mse_all`: mean over all dims; `mse_dims`: per dim; `gripper_error`: 1 - sign accuracy.
    """
    a = true.shape[-1]
    arm = [d for d in range(a) if gripper_dim is None or d != gripper_dim % a]
    full = ActionFidelity(a, gripper_dim=gripper_dim)
    arm_metric = ActionFidelity(len(arm), gripper_dim=None)
    for e in episodes.unique():
        m = episodes == e
        coarse = speed_phases(true[m])  # (n_e, H)
        full.update(pred[m], true[m], coarse)
        arm_metric.update(pred[m][..., arm], true[m][..., arm], coarse)
    f, g = full.compute(), arm_metric.compute()
    out = {k: float(g[k]) for k in ("mse_coarse", "mse_fine", "mae_coarse", "mae_fine")}
    out.update(mse_arm=float(g["mse_mean"]), mae_arm=float(g["mae_mean"]), mse_all=float(f["mse_mean"]),
               mse_dims=[float(v) for v in f["mse"]])
    out["gripper_error"] = 1.0 - float(f["gripper_acc"]) if gripper_dim is not None else float("nan")
    return out


class FittedTokenizer(NamedTuple):
    spec: TokenizerSpec
    tokenizer: Any
    """The reloaded `vqstudy.actions.export.ActionTokenizer` (original units in and out)."""
    train_ids: Tensor
    """(N_train, L) ids of the true train chunks (the discrete heads' targets)."""
    val_ids: Tensor
    """(N_val, L) ids of the true held-out chunks."""
    floor: dict[str, dict[str, float]]
    """{'train': errors, 'val': errors} of decode(encode(true chunk))."""
    seconds: float


def fit_tokenizer_for(spec: TokenizerSpec, data: BCData, seed: int, directory: Path,
                      gripper_dim: int | None) -> FittedTokenizer:
    """Train `spec` on the train chunks, export it to `directory`, reload it, and measure its floor."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    tok = spec.build(data.horizon, data.action_dim, seed)
    fit_tokenizer(tok, data.train.chunks, steps=spec.steps, lr=spec.lr, batch_size=spec.batch_size, seed=seed)
    ActionTokenizer(tok, data.normalizer).save_pretrained(directory)
    loaded = ActionTokenizer.from_pretrained(directory)  # ids == native codes (offset 0, no order)
    ids, floor = {}, {}
    for split_name, split in (("train", data.train), ("val", data.val)):
        ids[split_name] = loaded.encode(split.actions)  # (N, L)
        floor[split_name] = action_errors(loaded.decode(ids[split_name]), split.actions, split.episodes, gripper_dim)
    seconds = time.perf_counter() - start
    logger.info("tokenizer %s seed %d: K=%d L=%d, floor val mse_arm %.5f (%.1fs)", spec.name, seed,
                spec.vocab_size, spec.num_tokens, floor["val"]["mse_arm"], seconds)
    return FittedTokenizer(spec, loaded, ids["train"], ids["val"], floor, seconds)


def _prefixed(prefix: str, errors: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in errors.items()}


def run_rung(cfg: BottleneckConfig, data: BCData, rung: int, seed: int, tokenizers: Sequence[FittedTokenizer],
             gripper_dim: int | None) -> list[dict[str, Any]]:
    """Build and probe encoder rung `rung`, then train and evaluate every head on it; one row per head."""
    spec = cfg.encoders[rung]
    tr, va = data.train, data.val
    encoder = build_encoder(spec, tr.states, flatten_chunks(tr.chunks), seed=seed)
    eval_gen = torch.Generator().manual_seed(10_000 + seed)  # one fixed noise draw for evaluation
    x_train = policy_inputs(encoder, tr.states, tr.tasks, data.num_tasks, eval_gen)  # (N, F + tasks)
    x_val = policy_inputs(encoder, va.states, va.tasks, data.num_tasks, eval_gen)
    probe = linear_probe(x_train, flatten_chunks(tr.chunks), x_val, flatten_chunks(va.chunks), cfg.probe_ridge)
    train_gen = torch.Generator().manual_seed(20_000 + seed)

    def inputs(idx: Tensor) -> Tensor:
        return policy_inputs(encoder, tr.states[idx], tr.tasks[idx], data.num_tasks, train_gen)

    base = {"seed": seed, "encoder": spec.name, "rung": rung, "feature_dim": encoder.out_dim,
            "probe_r2_train": probe.r2_train, "probe_r2_val": probe.r2_val, "probe_mse_val": probe.mse_val}
    rows = []
    unnorm = data.normalizer.unnormalize
    if cfg.continuous:
        start = time.perf_counter()
        torch.manual_seed(seed)
        head = ContinuousHead(x_train.shape[1], data.horizon, data.action_dim, cfg.head)
        train_head(head, inputs, tr.chunks, cfg.head, seed)
        row = base | {"head": "continuous", "head_kind": "continuous", "vocab_size": None, "num_tokens": None,
                      "bits_per_chunk": None}
        for name, x, split in (("train", x_train, tr), ("val", x_val, va)):
            row |= _prefixed(name, action_errors(unnorm(head.predict(x)), split.actions, split.episodes, gripper_dim))
        rows.append(row | {"seconds": time.perf_counter() - start})
    for fit in tokenizers:
        start = time.perf_counter()
        torch.manual_seed(seed)
        groups = [(g.positions.start, g.positions.stop, g.start, g.size)
                  for g in fit.tokenizer.tokenizer.token_groups()]
        head = DiscreteHead(x_train.shape[1], fit.tokenizer.num_tokens, fit.tokenizer.vocab_size, cfg.head, groups)
        train_head(head, inputs, fit.train_ids, cfg.head, seed)
        row = base | {"head": fit.spec.name, "head_kind": fit.spec.kind, "vocab_size": fit.spec.vocab_size,
                      "num_tokens": fit.spec.num_tokens, "bits_per_chunk": fit.spec.bits_per_chunk}
        for name, x, split, true_ids in (("train", x_train, tr, fit.train_ids), ("val", x_val, va, fit.val_ids)):
            ids = head.predict(x)  # (N, L)
            row |= _prefixed(name, action_errors(fit.tokenizer.decode(ids), split.actions, split.episodes, gripper_dim))
            row[f"{name}/token_acc"] = float((ids == true_ids).float().mean())
            row |= _prefixed(f"floor_{name}", fit.floor[name])
        rows.append(row | {"seconds": time.perf_counter() - start})
    logger.info("seed %d rung %s: probe R2 val %.3f; %s", seed, spec.name, probe.r2_val,
                ", ".join(f"{r['head']} {r['val/' + cfg.metric]:.5f}" for r in rows))
    return rows


class GridResult(NamedTuple):
    rows: list[dict[str, Any]]
    """One row per (seed, rung, head)."""
    data_summary: dict[str, Any]
    """Sample counts, state width, tasks, split."""
    seconds: float
    """Wall time of the whole grid."""


def run_grid(cfg: BottleneckConfig, episodes: Sequence[Episode] | None = None) -> GridResult:
    """Run every (seed, rung, head) of `cfg`; `episodes` replaces loading `cfg.data` (tests, notebooks)."""
    start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    data = build_bc_data(cfg.data, cfg.state_keys, cfg.drop_sim_time, episodes, cfg.segment_steps)
    grippers = np.flatnonzero(data.normalizer.gripper_mask).tolist()
    gripper_dim = grippers[0] if grippers else None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vqstudy-bottleneck-") as tmp:
        root = Path(cfg.out_dir) / "tokenizers" if cfg.keep_tokenizers else Path(tmp)
        for seed in cfg.seeds:
            fitted = [fit_tokenizer_for(spec, data, seed, root / f"{spec.name}_seed{seed}", gripper_dim)
                      for spec in cfg.tokenizers]
            for rung in range(len(cfg.encoders)):
                rows += run_rung(cfg, data, rung, seed, fitted, gripper_dim)
    summary = {
        "train_samples": len(data.train.states), "val_samples": len(data.val.states), "state_dim": data.state_dim,
        "tasks": data.task_names, "split": data.split, "horizon": data.horizon, "action_dim": data.action_dim,
        "gripper_dim": gripper_dim, "val_fraction": cfg.data.val_fraction,
    }
    return GridResult(rows, summary, time.perf_counter() - start)

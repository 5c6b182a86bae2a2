"""Behaviour cloning on the Meta-World demonstrations: `vqstudy policy train` and the library behind it.

Every policy is trained the same way: the observation encoder rung is fixed (random projections and
the identity have nothing to learn; noise is drawn afresh at every step), the head is trained with
AdamW (cosine schedule) on the train episodes, and the open-loop error is measured on the held-out
episodes. Continuous heads regress (or flow-match) chunks normalized by a `QuantileNormalizer` fitted
on the train actions; discrete heads classify the ids of an `ActionTokenizer` trained on the same train
chunks (`fit_action_tokenizer`).

Config merge order: dataclass defaults <- YAML (--config) <- `--set a.b=value`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.actions.export import ActionTokenizer
from vqstudy.actions.train import fit_tokenizer
from vqstudy.config import load_config, to_dict
from vqstudy.policy.config import TokenizerSpec
from vqstudy.policy.demos import HAND_POS, OBJECT_POS, DemoData, load_demos
from vqstudy.policy.encoders import EncoderSpec, linear_probe, pretrain_encoder
from vqstudy.policy.heads import HeadConfig, train_head
from vqstudy.policy.model import DISCRETE, HEAD_KINDS, LearnedPolicy

logger = logging.getLogger(__name__)


@dataclass
class PolicyDataConfig:
    """Which demonstrations, chunked how, split how."""

    root: str = "runs/metaworld_mt10"
    """Dataset written by `vqstudy data make metaworld` (LeRobot v3.0)."""
    horizon: int = 8
    """H, steps per predicted chunk."""
    val_fraction: float = 0.2
    """Share of each task's episodes held out (whole episodes, i.e. unseen initial states)."""
    split_seed: int = 0
    """Seed of the episode split (fixed across policy seeds)."""
    tasks: list[str] | None = None
    """Keep only these tasks (None: every task of the dataset)."""
    max_episodes: int | None = None
    """Keep only the first episodes of each task (quick runs)."""

    def __post_init__(self) -> None:
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"PolicyDataConfig.horizon ({self.horizon!r}) must be an integer >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"PolicyDataConfig.val_fraction ({self.val_fraction}) must be in (0, 1)")

    def load(self) -> DemoData:
        return load_demos(self.root, self.horizon, self.val_fraction, self.split_seed, self.tasks, self.max_episodes)


def default_tokenizer() -> TokenizerSpec:
    return TokenizerSpec("vq256", "vq", codebook_size=256, num_tokens=4, steps=1500)


@dataclass
class PolicyTrainConfig:
    """One policy: encoder rung, head, (tokenizer), seed."""

    name: str = "policy"
    """Run name: the policy is written to <out_dir>/<name>."""
    out_dir: str = "runs/policy"
    """Parent folder of the run folder."""
    data: PolicyDataConfig = field(default_factory=PolicyDataConfig)
    """Demonstrations."""
    encoder: EncoderSpec = field(default_factory=lambda: EncoderSpec("state", "identity"))
    """Observation encoder rung (vqstudy.policy.encoders)."""
    head_kind: str = "mlp"
    """mlp (regression) | flow (flow matching) | parallel (all ids at once) | ar (ids one by one)."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """Head size and training."""
    tokenizer: TokenizerSpec = field(default_factory=default_tokenizer)
    """Action tokenizer of the discrete heads (trained on the same train chunks)."""
    seed: int = 0
    """Seed of the encoder's projection/noise, the tokenizer and the head."""
    threads: int | None = 1
    """torch.set_num_threads (None: torch's default); these models are tiny."""
    probe_ridge: float = 1e-3
    """Ridge of the linear probe that measures encoder quality."""

    def __post_init__(self) -> None:
        if self.head_kind not in HEAD_KINDS:
            raise ValueError(f"PolicyTrainConfig.head_kind ({self.head_kind!r}) must be one of {list(HEAD_KINDS)}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"PolicyTrainConfig.threads ({self.threads!r}) must be a positive integer or null")


def load_policy_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PolicyTrainConfig:
    """Defaults <- YAML file <- `overrides`."""
    return load_config(PolicyTrainConfig, path, overrides, base=to_dict(PolicyTrainConfig()))


def fit_normalizer(chunks: Tensor) -> QuantileNormalizer:
    """Quantile normalizer of the train actions (N, H, A); no dimension is treated as a binary gripper
    (the Meta-World experts command graded grip efforts)."""
    return QuantileNormalizer().fit(chunks.reshape(-1, chunks.shape[-1]), gripper_dims=[])  # (N*H, A)


def fit_action_tokenizer(spec: TokenizerSpec, chunks: Tensor, normalizer: QuantileNormalizer,
                         seed: int = 0) -> ActionTokenizer:
    """Train tokenizer `spec` on the normalized train chunks (N, H, A); wrap it with `normalizer`."""
    torch.manual_seed(seed)
    tok = spec.build(chunks.shape[1], chunks.shape[2], seed)
    fit = fit_tokenizer(tok, normalizer.normalize(chunks), steps=spec.steps, lr=spec.lr,
                        batch_size=spec.batch_size, seed=seed)
    logger.info("tokenizer %s: K=%d L=%d, %.1fs", spec.name, spec.vocab_size, spec.num_tokens, fit.seconds)
    return ActionTokenizer(tok, normalizer)


def chunk_mse(pred: Tensor, true: Tensor) -> float:
    """Mean squared error of chunks (N, H, A) in environment units."""
    return float(((pred.float() - true.float()) ** 2).mean())


def encoder_quality(policy: LearnedPolicy, data: DemoData, ridge: float = 1e-3) -> dict[str, float]:
    """Held-out R^2 of ridge probes from the encoder's features (task one-hot not included) to the hand
    position obs[0:3] and the first object's position obs[4:7]; `probe_r2` is their mean."""
    gen = torch.Generator().manual_seed(40_000 + policy.seed)
    f_train, f_val = policy.features(data.train.obs, gen), policy.features(data.val.obs, gen)  # (N, F)
    out = {}
    for name, cols in (("hand", HAND_POS), ("object", OBJECT_POS)):
        probe = linear_probe(f_train, data.train.probe_states[:, cols], f_val, data.val.probe_states[:, cols], ridge)
        out[f"probe_r2_{name}"] = probe.r2_val
        out[f"probe_r2_{name}_train"] = probe.r2_train
    out["probe_r2"] = (out["probe_r2_hand"] + out["probe_r2_object"]) / 2
    return out


class TrainedPolicy(NamedTuple):
    policy: LearnedPolicy
    metrics: dict[str, Any]
    """Encoder quality, open-loop held-out errors, training seconds and final loss."""


def train_policy(data: DemoData, encoder: EncoderSpec, head_kind: str, head_cfg: HeadConfig, seed: int = 0,
                 tokenizer: ActionTokenizer | None = None, normalizer: QuantileNormalizer | None = None,
                 probe_ridge: float = 1e-3) -> TrainedPolicy:
    """Fit one policy on `data.train` and measure it open loop on `data.val`. Discrete heads need
    `tokenizer` (see `fit_action_tokenizer`); `normalizer` defaults to the tokenizer's or a fresh fit."""
    start = time.perf_counter()
    train, val = data.train, data.val
    normalizer = normalizer or (tokenizer.normalizer if tokenizer is not None else None) or fit_normalizer(train.chunks)
    state = train.obs.double()
    std = state.std(0)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    torch.manual_seed(seed)
    policy = LearnedPolicy(encoder, head_kind, head_cfg, data.task_names, data.horizon, train.chunks.shape[-1],
                           state.mean(0).float(), std.float(), normalizer, tokenizer if head_kind in DISCRETE else None,
                           seed)
    if encoder.kind == "mlp":  # the one learned rung: pretrained on the train chunks, then frozen
        pretrain_encoder(policy.encoder, policy.standardize(train.obs),
                         normalizer.normalize(train.chunks).flatten(1), seed=seed)  # (N, H*A) targets
    quality = encoder_quality(policy, data, probe_ridge)
    if head_kind in DISCRETE:
        targets = tokenizer.encode(train.chunks)  # (N, L)
    else:
        targets = normalizer.normalize(train.chunks)  # (N, H, A)
    gen = torch.Generator().manual_seed(20_000 + seed)
    fixed = policy.inputs(train.obs, train.tasks) if encoder.noise_std == 0 else None  # (N, F + T)

    def inputs(idx: Tensor) -> Tensor:
        return fixed[idx] if fixed is not None else policy.inputs(train.obs[idx], train.tasks[idx], gen)

    losses = train_head(policy.head, inputs, targets, head_cfg, seed)
    policy.eval()
    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    x_val = policy.inputs(val.obs, val.tasks, eval_gen)
    metrics: dict[str, Any] = {**quality, "train_seconds": time.perf_counter() - start, "final_loss": losses[-1],
                               "val/chunk_mse": chunk_mse(policy.predict(x_val), val.chunks)}
    if head_kind in DISCRETE:
        true_ids = tokenizer.encode(val.chunks)
        metrics["val/token_acc"] = float((policy.head.predict(x_val) == true_ids).float().mean())
        metrics["val/tokenizer_floor_mse"] = chunk_mse(tokenizer.decode(true_ids), val.chunks)
    logger.info("%s seed %d: probe R2 %.3f, val chunk mse %.4f (%.1fs)", policy.name, seed, quality["probe_r2"],
                metrics["val/chunk_mse"], metrics["train_seconds"])
    return TrainedPolicy(policy, metrics)


def run_train(cfg: PolicyTrainConfig, data: DemoData | None = None) -> tuple[TrainedPolicy, Path]:
    """`vqstudy policy train`: load the data, fit (tokenizer and) policy, save it to <out_dir>/<name>."""
    import json

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    data = data or cfg.data.load()
    normalizer = fit_normalizer(data.train.chunks)
    tokenizer = None
    if cfg.head_kind in DISCRETE:
        tokenizer = fit_action_tokenizer(cfg.tokenizer, data.train.chunks, normalizer, cfg.seed)
    trained = train_policy(data, cfg.encoder, cfg.head_kind, cfg.head, cfg.seed, tokenizer, normalizer, cfg.probe_ridge)
    out = trained.policy.save_pretrained(Path(cfg.out_dir) / cfg.name)
    (out / "train_metrics.json").write_text(json.dumps({"config": to_dict(cfg), "metrics": trained.metrics},
                                                       indent=2) + "\n")
    return trained, out

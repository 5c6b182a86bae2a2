"""Typed configuration of the bottleneck study (`vqstudy bottleneck`).

Merge order: dataclass defaults <- YAML (--config) <- `--set a.b=value` (values parsed as YAML), nested
dicts merged key by key, lists replaced whole (`--set seeds=[0]`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from vqstudy.policy.encoders import EncoderSpec
from vqstudy.policy.heads import HeadConfig
from vqstudy.actions.defaults import CODEBOOK_SIZE, HIDDEN, LATENT_DIM
from vqstudy.actions.registry import build_tokenizer
from vqstudy.actions.tokenizers import ChunkTokenizer
from vqstudy.quantize import QuantizerConfig
from vqstudy.config import from_dict, load_config, to_dict
from vqstudy.actions.data.trajectories import TrajectoryDataConfig

TOKENIZER_KINDS = ("fsq", "vq")
QUALITY_KEYS = ("probe_r2_val", "probe_r2_train", "rung")
METRIC_KEYS = ("mse_arm", "mae_arm", "mse_coarse", "mse_fine", "mae_coarse", "mae_fine", "mse_all", "gripper_error")


@dataclass
class TokenizerSpec:
    """An action tokenizer trained on the train-split chunks, exported (save_pretrained) and reloaded."""

    name: str = "fsq1000"
    """Label in tables and plots (also the head's name)."""
    kind: Literal["fsq", "vq"] = "fsq"
    """'fsq' (OAT-like finite scalar quantization, vqstudy.actions.baselines) or 'vq' (ActionVQVAE)."""
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    """FSQ levels, K = prod(levels): [8,5,5,5] 1000, [8,8,6,5] 1920, [7,5,5,5,5] 4375 (OAT's sizes)."""
    codebook_size: int = CODEBOOK_SIZE
    """K of the 'vq' tokenizer."""
    num_tokens: int = 8
    """L, tokens per chunk (OAT: 8 per 32-step chunk)."""
    latent_dim: int = LATENT_DIM
    """Width of each latent token."""
    hidden: int = HIDDEN
    """Hidden width of the tokenizer's encoder and decoder."""
    steps: int = 800
    """Adam steps of tokenizer training."""
    batch_size: int = 256
    """Chunks per tokenizer training step."""
    lr: float = 1e-3
    """Tokenizer learning rate."""

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"TokenizerSpec.kind ({self.kind!r}) must be one of {list(TOKENIZER_KINDS)}")
        for name in ("num_tokens", "latent_dim", "hidden", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenizerSpec.{name} ({value!r}) must be a positive integer")
        self.levels = list(self.levels)
        if self.kind == "fsq" and (not self.levels or any(not isinstance(v, int) or v < 2 for v in self.levels)):
            raise ValueError(f"TokenizerSpec.levels ({self.levels}) must be a non-empty list of integers >= 2")
        if self.kind == "vq" and (not isinstance(self.codebook_size, int) or self.codebook_size < 2):
            raise ValueError(f"TokenizerSpec.codebook_size ({self.codebook_size!r}) must be an integer >= 2")
        if not self.lr > 0:
            raise ValueError(f"TokenizerSpec.lr ({self.lr}) must be > 0")
        if not self.name or self.name == "continuous":
            raise ValueError(f"TokenizerSpec.name ({self.name!r}) must be non-empty and not 'continuous'")

    @property
    def vocab_size(self) -> int:
        """K."""
        return math.prod(self.levels) if self.kind == "fsq" else self.codebook_size

    @property
    def bits_per_chunk(self) -> float:
        """Nominal L x log2 K."""
        return self.num_tokens * math.log2(self.vocab_size)

    def build(self, horizon: int, action_dim: int, seed: int) -> ChunkTokenizer:
        """The untrained `ChunkTokenizer` this spec describes (through the one registry); `seed` seeds the
        quantizer's own random choices, so seeds vary everything they claim to."""
        fields: dict[str, Any] = {"horizon": horizon, "action_dim": action_dim, "num_tokens": self.num_tokens,
                                  "latent_dim": self.latent_dim, "hidden": self.hidden}
        if self.kind == "fsq":
            fields["levels"] = tuple(self.levels)
        else:
            fields["quantizer"] = QuantizerConfig(codebook_size=self.codebook_size, seed=seed)
        return build_tokenizer(self.kind, fields)


def default_encoders() -> list[EncoderSpec]:
    return [
        EncoderSpec("task_only", "task_only"),
        EncoderSpec("random_proj4", "random_proj", out_dim=4),
        EncoderSpec("mlp_noisy", "mlp", out_dim=32, noise_std=1.0),
        EncoderSpec("mlp_narrow2", "mlp", out_dim=2),
        EncoderSpec("mlp32", "mlp", out_dim=32),
        EncoderSpec("state", "identity"),
    ]


def default_tokenizers() -> list[TokenizerSpec]:
    return [
        TokenizerSpec("vq16", "vq", codebook_size=16),
        TokenizerSpec("vq256", "vq", codebook_size=256),
        TokenizerSpec("fsq1000", "fsq", levels=[8, 5, 5, 5]),
        TokenizerSpec("fsq1920", "fsq", levels=[8, 8, 6, 5]),
    ]


@dataclass
class BottleneckConfig:
    """The factorial grid: encoder rung x head (continuous, discrete per tokenizer) x seed."""

    name: str = "bottleneck"
    """Run name (recorded in the results)."""
    out_dir: str = "results/bottleneck"
    """Folder for table.md, results.json, runs.csv, error_vs_encoder.png, README.md."""
    data: TrajectoryDataConfig = field(default_factory=lambda: TrajectoryDataConfig(horizon=32))
    """Demonstrations, chunk horizon H (OAT: 32), split (robosuite: time_block)."""
    segment_steps: int = 300
    """>0: hold out the last val_fraction of every ~segment_steps-step segment of each demo (interleaved
    time blocks, held-out states near training ones); 0: the data split as is (robosuite time_block: the
    last val_fraction of each demo, i.e. an unseen final phase of the task)."""
    state_keys: list[str] | None = None
    """Observation keys concatenated into the state; None: 'states' if present, else every low-dim key."""
    drop_sim_time: bool = True
    """Drop column 0 (the sim clock) of the MuJoCo 'states' vector."""
    encoders: list[EncoderSpec] = field(default_factory=default_encoders)
    """The encoder ladder (rungs)."""
    tokenizers: list[TokenizerSpec] = field(default_factory=default_tokenizers)
    """One discrete head per tokenizer."""
    continuous: bool = True
    """Also train the continuous regression head."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """Head size and training (shared by all heads)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds (encoder init/projection/noise, tokenizer, head); the data split does not depend on them."""
    probe_ridge: float = 1e-3
    """Ridge of the linear probe that measures encoder quality (relative to the mean feature variance)."""
    quality: Literal["probe_r2_val", "probe_r2_train", "rung"] = "probe_r2_train"
    """x axis: R^2 of the linear probe from [features, task] to the next chunk, on the train samples it was
    fitted on (default: held-out R^2 goes negative when held-out states lie off the training ones) or held
    out, or the rung index."""
    metric: str = "mse_arm"
    """y axis, a held-out error in original units: one of METRIC_KEYS (arm = the non-gripper dims)."""
    keep_tokenizers: bool = False
    """Keep the exported tokenizers in <out_dir>/tokenizers (else a temporary folder)."""
    threads: int | None = 1
    """torch.set_num_threads for the run (None: torch's default). 1 by default: these models are tiny and
    on a shared 2-core machine two threads ran ~10x slower than one."""

    def __post_init__(self) -> None:
        self.encoders = [from_dict(EncoderSpec, e, f"encoders[{i}]") if isinstance(e, dict) else e
                         for i, e in enumerate(self.encoders)]
        self.tokenizers = [from_dict(TokenizerSpec, t, f"tokenizers[{i}]") if isinstance(t, dict) else t
                           for i, t in enumerate(self.tokenizers)]
        if not self.encoders:
            raise ValueError("BottleneckConfig.encoders ([]) must name at least one rung")
        for what, names in (("encoders", [e.name for e in self.encoders]),
                            ("tokenizers", [t.name for t in self.tokenizers])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"BottleneckConfig.{what} names must be unique, repeated: {dupes}")
        if not self.continuous and not self.tokenizers:
            raise ValueError("BottleneckConfig: no heads (continuous is false and tokenizers is empty)")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds) \
                or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"BottleneckConfig.seeds ({self.seeds}) must be a non-empty list of distinct integers")
        if self.quality not in QUALITY_KEYS:
            raise ValueError(f"BottleneckConfig.quality ({self.quality!r}) must be one of {list(QUALITY_KEYS)}")
        if self.metric not in METRIC_KEYS:
            raise ValueError(f"BottleneckConfig.metric ({self.metric!r}) must be one of {list(METRIC_KEYS)}")
        if not self.probe_ridge >= 0:
            raise ValueError(f"BottleneckConfig.probe_ridge ({self.probe_ridge}) must be >= 0")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"BottleneckConfig.threads ({self.threads!r}) must be a positive integer or null")
        if isinstance(self.segment_steps, bool) or not isinstance(self.segment_steps, int) or self.segment_steps < 0:
            raise ValueError(f"BottleneckConfig.segment_steps ({self.segment_steps!r}) must be an integer >= 0")
        if self.segment_steps and self.data.resolved_split != "time_block":
            raise ValueError(f"BottleneckConfig.segment_steps ({self.segment_steps}) needs data.split 'time_block' "
                             f"(or 'auto' with robosuite), got {self.data.resolved_split!r}")
        if self.data.horizon < 2:
            raise ValueError(f"BottleneckConfig.data.horizon ({self.data.horizon}) must be >= 2")


def load_bottleneck_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> BottleneckConfig:
    """Defaults <- YAML file <- `overrides` (nested dicts, e.g. {'head': {'steps': 10}})."""
    return load_config(BottleneckConfig, path, overrides, base=to_dict(BottleneckConfig()))
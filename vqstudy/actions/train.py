"""Training, evaluation and re-export of action-chunk tokenizers on trajectory data (the library behind
`vqstudy actions train|eval` and `vqstudy export`, see vqstudy.cli).

Config merge order: dataclass defaults <- YAML (--config) <- `--set a.b=value` (vqstudy.config).

`train` writes `<out_dir>/<name>/`: `tokenizer/` (ActionTokenizer.save_pretrained: tokenizer weights,
normalizer fitted on the train split, id order and LM id mapping), `utilization.csv` (the
utilization curve over all training chunks every `train.log_every` steps) and `config.json`.
`eval` writes `<out_dir>/<name>/eval.json` (fidelity on the validation split, original units).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

import torch
from torch import Tensor

from vqstudy.actions.metrics import chunk_bits, evaluate_episodes
from vqstudy.config import from_dict, load_config, to_dict
from vqstudy.actions.data.trajectories import TrajectoryData, TrajectoryDataConfig, build_trajectory_datasets
from vqstudy.actions.defaults import ACTION_DIM
from vqstudy.actions.export import ActionTokenizer
from vqstudy.actions.fast import FastTokenizer
from vqstudy.actions.ordering import DEFAULT_ORDER, ORDER_CHOICES
from vqstudy.actions.registry import TOKENIZER_KINDS, build_tokenizer
from vqstudy.actions.tokenizers import ChunkTokenizer

logger = logging.getLogger(__name__)

QUANTIZER_FIELDS = ("quantizer", "coarse_quantizer", "fine_quantizer")
"""Config fields of tokenizers whose QuantizerConfig gets `train.seed` as its seed."""


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


@dataclass
class ActionTrainConfig:
    """Optimizer and logging of one tokenizer training run (plain Adam loop, CPU friendly)."""

    steps: int = 1000
    """Adam steps (tokenizers without parameters, uniform bins, skip training)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Chunks per step (sampled with replacement from the training chunks)."""
    seed: int = 0
    """Seeds the weights, the batch order and the quantizer's own random choices (overrides quantizer.seed)."""
    log_every: int = 50
    """Measure utilization/perplexity/recon over all training chunks every this many steps (0: only start and end)."""
    threads: int | None = 1
    """torch CPU threads while training (1 is fastest for these small MLPs on a shared CPU); None: torch's default."""

    def __post_init__(self) -> None:
        for name, low in (("steps", 0), ("batch_size", 1), ("log_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ActionTrainConfig.{name} ({value!r}) must be an integer >= {low}")
        if not self.lr > 0:
            raise ValueError(f"ActionTrainConfig.lr ({self.lr}) must be > 0")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"ActionTrainConfig.threads ({self.threads!r}) must be a positive integer or null")


@dataclass
class ExportOptions:
    """How ids of the saved ActionTokenizer map into a language model's vocabulary."""

    id_mode: Literal["offset", "last_n"] = "offset"
    """'offset': id = token_offset + code; 'last_n': OpenVLA's last ids of the vocabulary (arXiv 2406.09246)."""
    token_offset: int = 0
    """First LM id of the action tokens in 'offset' mode."""
    lm_vocab_size: int | None = None
    """Size of the LM vocabulary (required for 'last_n'; checked to hold every action id)."""
    order: Literal["seriate_action", "seriate", "none"] = DEFAULT_ORDER
    """Renumber codes so neighbouring ids decode to neighbouring actions (vqstudy.actions.ordering): 'seriate_action'
    seriates each code's effect on the decoded chunk (orders better in results/actions), 'seriate' the latent
    code vectors; 'none' keeps native ids."""

    def __post_init__(self) -> None:
        if self.id_mode not in ("offset", "last_n"):
            raise ValueError(f"ExportOptions.id_mode ({self.id_mode!r}) must be 'offset' or 'last_n'")
        if self.order not in ORDER_CHOICES:
            raise ValueError(f"ExportOptions.order ({self.order!r}) must be one of {list(ORDER_CHOICES)}")
        if self.id_mode == "last_n" and self.lm_vocab_size is None:
            raise ValueError("ExportOptions.lm_vocab_size (None) must be set with id_mode 'last_n'")
        if isinstance(self.token_offset, bool) or not isinstance(self.token_offset, int) or self.token_offset < 0:
            raise ValueError(f"ExportOptions.token_offset ({self.token_offset!r}) must be an integer >= 0")


@dataclass
class ActionEvalConfig:
    """Fidelity evaluation on the validation episodes (vqstudy.actions.metrics)."""

    speed_quantile: float = 0.5
    """A step is in the coarse phase when its end-effector speed is above this per-episode quantile."""
    gripper_dim: int | None = -1
    """Action dim of the gripper for sign accuracy (None: no gripper)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.speed_quantile < 1.0:
            raise ValueError(f"ActionEvalConfig.speed_quantile ({self.speed_quantile}) must be in (0, 1)")


@dataclass
class ActionsConfig:
    """One action-tokenizer run. Merge order: defaults <- YAML (--config) <- `--set` overrides."""

    name: str = "actions_vq"
    """Run name: outputs go to <out_dir>/<name>/."""
    out_dir: str = "runs/actions"
    """Parent folder of the run folder (saved tokenizer, utilization.csv, eval.json)."""
    data: TrajectoryDataConfig = field(default_factory=TrajectoryDataConfig)
    """Trajectories (robosuite demos by default); data.horizon is the chunk length H of the tokenizer."""
    tokenizer: str = "vq"
    """Tokenizer kind: 'vq', 'hvq', 'bins', 'fsq' or 'rvq' (vqstudy.actions.export.TOKENIZER_KINDS)."""
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the kind's config dataclass; horizon and action_dim are filled in from the data."""
    train: ActionTrainConfig = field(default_factory=ActionTrainConfig)
    """Optimizer, steps, seed, curve logging."""
    export: ExportOptions = field(default_factory=ExportOptions)
    """LM id mapping and id order of the saved tokenizer."""
    eval: ActionEvalConfig = field(default_factory=ActionEvalConfig)
    """Validation fidelity options."""

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"ActionsConfig.tokenizer ({self.tokenizer!r}) must be one of {sorted(TOKENIZER_KINDS)}")
        if not isinstance(self.tokenizer_config, dict):
            raise ValueError(f"ActionsConfig.tokenizer_config must be a mapping, got {type(self.tokenizer_config).__name__}")
        horizon = self.tokenizer_config.get("horizon", self.data.horizon)
        if horizon != self.data.horizon:
            raise ValueError(f"ActionsConfig.tokenizer_config.horizon ({horizon}) must equal data.horizon "
                             f"({self.data.horizon}); set data.horizon only")
        tokenizer_config(self.tokenizer, self.tokenizer_config, self.data.horizon,
                         self.tokenizer_config.get("action_dim", ACTION_DIM), self.train.seed)  # validates the fields

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def load_actions_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ActionsConfig:
    """Defaults <- YAML file <- `overrides` (nested dicts, e.g. {'train': {'steps': 10}})."""
    return load_config(ActionsConfig, path, overrides)


def tokenizer_config(kind: str, fields: dict[str, Any], horizon: int, action_dim: int, seed: int) -> Any:
    """The typed config of tokenizer `kind` from `fields`, with horizon/action_dim from the data and the
    quantizer seeds set to `seed`."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind ({kind!r}) must be one of {sorted(TOKENIZER_KINDS)}")
    cls = TOKENIZER_KINDS[kind].config_class
    given = fields.get("action_dim", action_dim)
    if given != action_dim:
        raise ValueError(f"tokenizer_config.action_dim ({given}) does not match the data's action_dim ({action_dim})")
    config = from_dict(cls, {**fields, "horizon": horizon, "action_dim": action_dim}, where=f"tokenizer_config ({kind})")
    for name in QUANTIZER_FIELDS:
        if hasattr(config, name):
            setattr(config, name, replace(getattr(config, name), seed=seed))
    return config


def make_tokenizer(kind: str, fields: dict[str, Any], horizon: int, action_dim: int, seed: int) -> ChunkTokenizer:
    """A freshly initialised tokenizer (weights seeded by `seed`)."""
    torch.manual_seed(seed)
    return build_tokenizer(kind, tokenizer_config(kind, fields, horizon, action_dim, seed))


# ------------------------------------------------------------------------------------------------
# Training with a utilization curve
# ------------------------------------------------------------------------------------------------


class CurvePoint(NamedTuple):
    """Codebook use measured on all training chunks at one step."""

    step: int
    loss: float
    """Training loss of the last batch (NaN at step 0)."""
    recon_mse: float
    """MSE of encode -> decode over all training chunks (normalized units)."""
    utilization: float
    """Share of the vocabulary used by the training chunks."""
    perplexity: float
    """exp(entropy) of id usage over all positions."""
    bits_effective: float
    """Bits per chunk from the per-group perplexities (vqstudy.actions.metrics.chunk_bits)."""


class FitResult(NamedTuple):
    losses: list[float]
    curve: list[CurvePoint]
    seconds: float
    """Wall time of the training loop (curve measurements included)."""


@torch.no_grad()
def measure_usage(tokenizer: ChunkTokenizer, chunks: Tensor, step: int, loss: float = math.nan) -> CurvePoint:
    """Utilization, perplexity, effective bits and recon MSE of `tokenizer` over `chunks` (N, H, A)."""
    ids = tokenizer.encode(chunks)  # (N, L)
    mse = float(((tokenizer.decode(ids) - chunks) ** 2).mean())
    bits = chunk_bits(ids, tokenizer.token_groups(), tokenizer.vocab_size)
    return CurvePoint(step, loss, mse, bits.utilization, bits.perplexity, bits.effective)


def fit_tokenizer(tokenizer: ChunkTokenizer, chunks: Tensor, train: ActionTrainConfig | None = None,
                  **fields: Any) -> FitResult:
    """The one tokenizer training loop: Adam on normalized chunks (N, H, A) for `train.steps` steps, measuring
    usage over all chunks at the start, every `log_every` steps and at the end. Leaves eval mode.
    `train` or its fields as keywords (`fit_tokenizer(tok, x, steps=100, lr=3e-3)`). Tokenizers without
    parameters (uniform bins) are only measured."""
    if train is None:
        train = ActionTrainConfig(**fields)
    elif fields:
        raise TypeError(f"pass either an ActionTrainConfig or its fields, not both (got {sorted(fields)})")
    tokenizer.check_chunks(chunks)
    if isinstance(tokenizer, FastTokenizer):  # FAST's BPE vocabulary is fitted on the data, not by gradient
        tokenizer.fit(chunks)
    threads = torch.get_num_threads()
    if train.threads is not None:
        torch.set_num_threads(train.threads)
    start = time.perf_counter()
    try:
        curve = [measure_usage(tokenizer, chunks, 0)]
        params = [p for p in tokenizer.parameters() if p.requires_grad]
        losses: list[float] = []
        if params and train.steps > 0:
            opt = torch.optim.Adam(params, lr=train.lr)
            gen = torch.Generator().manual_seed(train.seed)
            batch_size = min(train.batch_size, len(chunks))
            for step in range(1, train.steps + 1):
                tokenizer.train()
                out = tokenizer(chunks[torch.randint(len(chunks), (batch_size,), generator=gen)])
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                losses.append(out.loss.item())
                if step == train.steps or (train.log_every and step % train.log_every == 0):
                    curve.append(measure_usage(tokenizer, chunks, step, losses[-1]))
                    logger.debug("step %d %s", step, curve[-1])
    finally:
        tokenizer.eval()
        torch.set_num_threads(threads)
    return FitResult(losses, curve, time.perf_counter() - start)


def write_curve(path: Path, curve: Sequence[CurvePoint]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CurvePoint._fields)
        writer.writerows(curve)
    return path


# ------------------------------------------------------------------------------------------------
# train / eval / export
# ------------------------------------------------------------------------------------------------


def make_action_tokenizer(tokenizer: ChunkTokenizer, data: TrajectoryData, export: ExportOptions) -> ActionTokenizer:
    """The exportable tokenizer: trained `tokenizer` + the train-split normalizer + id mapping and order."""
    return ActionTokenizer(tokenizer, data.normalizer, id_mode=export.id_mode, token_offset=export.token_offset,
                           lm_vocab_size=export.lm_vocab_size, order=None if export.order == "none" else export.order)


def val_episodes(data: TrajectoryData) -> list[Tensor]:
    """Validation episodes (T, A) in original units, those at least one chunk long."""
    return [torch.as_tensor(e.actions, dtype=torch.float32) for e in data.val.episodes if len(e) >= data.val.horizon]


class TrainRun(NamedTuple):
    action_tokenizer: ActionTokenizer
    fit: FitResult
    data: TrajectoryData
    run_dir: Path


def train_run(cfg: ActionsConfig, data: TrajectoryData | None = None) -> TrainRun:
    """Train `cfg`'s tokenizer on the train split, save it with its normalizer and the curve."""
    data = data if data is not None else build_trajectory_datasets(cfg.data)
    chunks = data.train.all_chunks()  # (N, H, A) normalized
    tok = make_tokenizer(cfg.tokenizer, cfg.tokenizer_config, cfg.data.horizon, data.train.action_dim, cfg.train.seed)
    fit = fit_tokenizer(tok, chunks, cfg.train)
    action_tok = make_action_tokenizer(tok, data, cfg.export)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    action_tok.save_pretrained(run_dir / "tokenizer")
    write_curve(run_dir / "utilization.csv", fit.curve)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    logger.info("trained %s (%d chunks, %d steps) in %.1f s -> %s", cfg.tokenizer, len(chunks), cfg.train.steps,
                fit.seconds, run_dir)
    return TrainRun(action_tok, fit, data, run_dir)


def to_jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Tensors -> floats / lists of floats."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor):
            value = value.tolist() if value.ndim else float(value)
        out[key] = value
    return out


def eval_run(cfg: ActionsConfig, checkpoint: str | Path | None = None, data: TrajectoryData | None = None) -> dict[str, Any]:
    """Load a saved tokenizer (default `<run_dir>/tokenizer`) and measure fidelity on the val split."""
    path = Path(checkpoint) if checkpoint is not None else cfg.run_dir / "tokenizer"
    action_tok = ActionTokenizer.from_pretrained(path)
    if action_tok.horizon != cfg.data.horizon:
        raise ValueError(f"checkpoint {path} has horizon {action_tok.horizon}, config data.horizon is {cfg.data.horizon}")
    data = data if data is not None else build_trajectory_datasets(cfg.data)
    episodes = val_episodes(data)
    if not episodes:
        raise ValueError(f"no validation episode has >= {cfg.data.horizon} steps (data.val_fraction {cfg.data.val_fraction})")
    metrics = to_jsonable(evaluate_episodes(action_tok, episodes, cfg.eval.speed_quantile, cfg.eval.gripper_dim))
    metrics.update(checkpoint=str(path), kind=action_tok.tokenizer.kind, vocab_size=action_tok.vocab_size,
                   num_tokens=action_tok.num_tokens, val_episodes=len(episodes),
                   val_steps=sum(len(e) // action_tok.horizon * action_tok.horizon for e in episodes))
    return metrics


def reexport(checkpoint: str | Path, out: str | Path, id_mode: str, token_offset: int = 0,
             lm_vocab_size: int | None = None, order: str = "keep") -> ActionTokenizer:
    """Load a saved ActionTokenizer and save it again with another LM id mapping and id order
    ('keep' the saved one, 'seriate_action' or 'seriate' anew, or 'none')."""
    if order not in ("keep", *ORDER_CHOICES):
        raise ValueError(f"order ({order!r}) must be one of {['keep', *ORDER_CHOICES]}")
    src = ActionTokenizer.from_pretrained(checkpoint)
    new_order = {"keep": src.order, "seriate_action": "seriate_action", "seriate": "seriate", "none": None}[order]
    tok = ActionTokenizer(src.tokenizer, src.normalizer, id_mode=id_mode, token_offset=token_offset,
                          lm_vocab_size=lm_vocab_size, order=new_order)
    tok.save_pretrained(out)
    return tok

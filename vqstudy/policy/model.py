"""A learned Meta-World policy: (39-D observation, task) -> action chunk (B, H, 4), and its files.

    obs (B, 39) -> standardize (train mean/std) -> frozen encoder rung (B, F) -> [features, task one-hot]
        -> head: mlp | flow -> normalized chunk -> QuantileNormalizer.unnormalize -> (B, H, 4)
                 parallel | ar -> ids (B, L) -> ActionTokenizer.decode -> (B, H, 4)

`save_pretrained(dir)` writes `policy_config.json` (every choice needed to rebuild it, the sha256 of the
weights), `model.safetensors` (encoder, head, standardization, normalizer) and, for discrete heads,
`tokenizer/` (an `ActionTokenizer` directory); `from_pretrained` reloads it exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqstudy.actions.data.normalize import QuantileNormalizer
from vqstudy.actions.export import ActionTokenizer
from vqstudy.files import save_weights_and_manifest, sha256_file
from vqstudy.policy.encoders import EncoderSpec, StateEncoder
from vqstudy.policy.heads import AutoregressiveHead, ContinuousHead, DiscreteHead, FlowHead, HeadConfig

logger = logging.getLogger(__name__)

HeadKind = Literal["mlp", "flow", "parallel", "ar"]
HEAD_KINDS = ("mlp", "flow", "parallel", "ar")
DISCRETE = ("parallel", "ar")
FORMAT_NAME = "vqstudy-policy"
FORMAT_VERSION = 1
CONFIG_FILE = "policy_config.json"
WEIGHTS_FILE = "model.safetensors"


def token_groups(tokenizer: ActionTokenizer) -> list[tuple[int, int, int, int]]:
    """(first position, end position, first id, count) of each id group of `tokenizer`."""
    return [(g.positions.start, g.positions.stop, g.start, g.size) for g in tokenizer.tokenizer.token_groups()]


class LearnedPolicy(nn.Module):
    """Observation encoder + head (+ tokenizer for discrete heads); `act` maps batches of raw observations
    and task names to chunks in environment units."""

    def __init__(self, encoder_spec: EncoderSpec, head_kind: HeadKind, head_cfg: HeadConfig, task_names: Sequence[str],
                 horizon: int, action_dim: int, state_mean: Tensor, state_std: Tensor,
                 normalizer: QuantileNormalizer, tokenizer: ActionTokenizer | None = None, seed: int = 0) -> None:
        super().__init__()
        if head_kind not in HEAD_KINDS:
            raise ValueError(f"head_kind ({head_kind!r}) must be one of {list(HEAD_KINDS)}")
        if (head_kind in DISCRETE) != (tokenizer is not None):
            raise ValueError(f"head_kind {head_kind!r} {'needs' if head_kind in DISCRETE else 'takes no'} tokenizer")
        if tokenizer is not None and (tokenizer.horizon, tokenizer.action_dim) != (horizon, action_dim):
            raise ValueError(f"tokenizer chunks ({tokenizer.horizon}, {tokenizer.action_dim}) do not match the "
                             f"policy's ({horizon}, {action_dim})")
        self.encoder_spec, self.head_kind, self.head_cfg = encoder_spec, head_kind, head_cfg
        self.task_names, self.horizon, self.action_dim, self.seed = list(task_names), horizon, action_dim, seed
        self.task_index = {t: i for i, t in enumerate(self.task_names)}
        self.normalizer, self.tokenizer = normalizer, tokenizer
        self.register_buffer("state_mean", state_mean.float().clone())  # (S,)
        self.register_buffer("state_std", state_std.float().clone())  # (S,)
        self.encoder = StateEncoder(encoder_spec, len(state_mean), seed).requires_grad_(False).eval()
        in_dim = self.encoder.out_dim + len(self.task_names)
        if head_kind == "mlp":
            self.head: nn.Module = ContinuousHead(in_dim, horizon, action_dim, head_cfg)
        elif head_kind == "flow":
            self.head = FlowHead(in_dim, horizon, action_dim, head_cfg)
        elif head_kind == "parallel":
            self.head = DiscreteHead(in_dim, tokenizer.num_tokens, tokenizer.vocab_size, head_cfg, token_groups(tokenizer))
        else:
            self.head = AutoregressiveHead(in_dim, tokenizer.num_tokens, tokenizer.vocab_size, head_cfg,
                                           token_groups(tokenizer))
        self.noise = torch.Generator().manual_seed(30_000 + seed)
        """Draws the noise of noisy encoders and the flow head's starting points at inference."""

    # --- inputs --------------------------------------------------------------------------------
    def standardize(self, obs: Tensor) -> Tensor:
        """(B, S) raw observations -> (B, S) standardized with the train statistics."""
        return (obs.float() - self.state_mean) / self.state_std

    def features(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, S) raw observations -> (B, F) frozen encoder features."""
        with torch.no_grad():
            return self.encoder(self.standardize(obs), generator=generator)

    def inputs(self, obs: Tensor, tasks: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, F + T): encoder features with the task one-hot appended (the head's conditioning vector)."""
        return torch.cat([self.features(obs, generator), F.one_hot(tasks, len(self.task_names)).float()], dim=1)

    def task_ids(self, tasks: Sequence[str]) -> Tensor:
        unknown = sorted(set(tasks) - set(self.task_index))
        if unknown:
            raise ValueError(f"tasks {unknown} were not in the policy's training data ({self.task_names})")
        return torch.tensor([self.task_index[t] for t in tasks], dtype=torch.long)

    # --- outputs -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Head inputs (B, F + T) -> chunks (B, H, A) in environment units."""
        if self.head_kind in DISCRETE:
            return self.tokenizer.decode(self.head.predict(x)).float()
        chunk = self.head.predict(x, self.noise) if self.head_kind == "flow" else self.head.predict(x)
        return self.normalizer.unnormalize(chunk).float()

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, tasks: Sequence[str]) -> np.ndarray:
        """(B, 39) observations and B task names -> (B, H, 4) float32 chunks."""
        x = self.inputs(torch.as_tensor(np.asarray(obs), dtype=torch.float32), self.task_ids(tasks), self.noise)
        return self.predict(x).cpu().numpy().astype(np.float32)

    @property
    def name(self) -> str:
        head = self.head_kind if self.tokenizer is None else f"{self.head_kind}_K{self.tokenizer.vocab_size}"
        return f"{self.encoder_spec.name}+{head}"

    # --- files ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the policy (and its tokenizer) to `directory`; returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()
                   if not k.startswith("tokenizer.")}
        tensors.update({f"normalizer.{k}": v.contiguous().clone() for k, v in self.normalizer.state_dict().items()})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out / "tokenizer")
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "head_kind": self.head_kind,
                "encoder": asdict(self.encoder_spec), "head": asdict(self.head_cfg), "tasks": self.task_names,
                "horizon": self.horizon, "action_dim": self.action_dim, "seed": self.seed,
                "state_dim": int(self.state_mean.numel())}
        save_weights_and_manifest(out, tensors, meta, WEIGHTS_FILE, CONFIG_FILE)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LearnedPolicy:
        """Load what `save_pretrained` wrote (refuses other formats and modified weights)."""
        from safetensors.torch import load_file

        src = Path(directory)
        path = src / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not a directory written by `vqstudy policy train`?)")
        meta: dict[str, Any] = json.loads(path.read_text())
        if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format {meta.get('format')!r} v{meta.get('format_version')!r}, expected "
                             f"{FORMAT_NAME!r} v{FORMAT_VERSION}")
        digest = sha256_file(src / WEIGHTS_FILE)
        if digest != meta["weights_sha256"]:
            raise ValueError(f"{src / WEIGHTS_FILE}: sha256 {digest} does not match {path}; the file was modified")
        tensors = load_file(str(src / WEIGHTS_FILE))
        normalizer = QuantileNormalizer.from_state_dict(
            {k[len("normalizer."):]: v for k, v in tensors.items() if k.startswith("normalizer.")})
        tokenizer = ActionTokenizer.from_pretrained(src / "tokenizer") if meta["head_kind"] in DISCRETE else None
        policy = cls(EncoderSpec(**meta["encoder"]), meta["head_kind"], HeadConfig(**meta["head"]), meta["tasks"],
                     meta["horizon"], meta["action_dim"], tensors["state_mean"], tensors["state_std"], normalizer,
                     tokenizer, meta["seed"])
        state = {k: v for k, v in tensors.items() if not k.startswith("normalizer.")}
        policy.load_state_dict(state, strict=False)
        missing = sorted(set(k for k in policy.state_dict() if not k.startswith("tokenizer.")) - set(state))
        if missing:
            raise ValueError(f"{src / WEIGHTS_FILE}: missing tensors {missing}")
        return policy.eval()

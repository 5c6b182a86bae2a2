"""Observation encoders of graded quality: a controlled knob on how much of the state reaches the policy.

Every rung maps the standardized state (B, S) to features (B, F) and is frozen before any policy head
is trained on it, so all heads of one rung see exactly the same information. What each kind keeps:

- `task_only`: nothing (F = 0); the policy sees only the task one-hot (appended to every rung).
- `identity`: the whole state (F = S), the top of the ladder.
- `random_proj`: a frozen Gaussian projection to `out_dim` dims, x @ W / sqrt(S): a random rank-`out_dim`
  linear view, not chosen for the task.
- `mlp`: an MLP S -> hidden -> hidden -> `out_dim`, pretrained on the train split to predict the action
  chunk through a linear readout (a task-aligned encoder, like a pretrained vision backbone), then
  frozen. At most `out_dim` dims of information get through; small `out_dim` = the narrow rung.
- `pixels`: rendered camera frames through a frozen CNN (`backbone`: the ImageNet AlexNet trunk of the
  LPIPS assets, or the same network randomly initialized), see `vqstudy.policy.pixels`. The features
  are computed outside the policy (they need the simulator), so inside it this rung is the identity
  over the feature vector; the raw state is kept only for the quality probes.
- `noise_std` > 0 on any kind adds N(0, noise_std^2) to the standardized state before encoding, in
  training and evaluation alike (a noisy sensor: at most 0.5 log2(1 + var/noise_std^2) bits per
  unit-variance column survive).

`linear_probe` gives the measured quality: ridge regression from [features, task one-hot] to the
flattened normalized next chunk, fitted on train, R^2 on train and on held-out samples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

EncoderKind = Literal["task_only", "identity", "random_proj", "mlp", "pixels"]
ENCODER_KINDS = ("task_only", "identity", "random_proj", "mlp", "pixels")
PIXEL_BACKBONES = ("alexnet", "random_cnn")


@dataclass
class EncoderSpec:
    """One rung of the encoder ladder."""

    name: str = "mlp"
    """Label in tables and plots."""
    kind: EncoderKind = "mlp"
    """task_only | identity | random_proj | mlp (see the module docstring for what each keeps)."""
    out_dim: int = 32
    """Feature width of random_proj and mlp (ignored by task_only and identity)."""
    noise_std: float = 0.0
    """Std of Gaussian noise added to the standardized state before encoding (train and eval)."""
    hidden: int = 128
    """Hidden width of the mlp encoder."""
    pretrain_steps: int = 300
    """Adam steps of the mlp encoder's action-chunk pretraining (linear readout), before it is frozen."""
    pretrain_lr: float = 2e-3
    """Learning rate of that pretraining."""
    backbone: Literal["alexnet", "random_cnn"] = "alexnet"
    """pixels: frozen CNN, the ImageNet AlexNet trunk (LPIPS assets) or the same net randomly initialized."""
    image_size: int = 96
    """pixels: rendered frame size (square, pixels)."""
    camera: str = "corner2"
    """pixels: Meta-World model camera to render from."""
    feature_grid: int = 2
    """pixels: the conv5 map is average-pooled to feature_grid x feature_grid cells (256 x cells features)."""

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"EncoderSpec.kind ({self.kind!r}) must be one of {list(ENCODER_KINDS)}")
        for name in ("out_dim", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EncoderSpec.{name} ({value!r}) must be a positive integer")
        if isinstance(self.pretrain_steps, bool) or not isinstance(self.pretrain_steps, int) or self.pretrain_steps < 0:
            raise ValueError(f"EncoderSpec.pretrain_steps ({self.pretrain_steps!r}) must be an integer >= 0")
        if not (isinstance(self.noise_std, (int, float)) and math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"EncoderSpec.noise_std ({self.noise_std!r}) must be a finite number >= 0")
        if not self.pretrain_lr > 0:
            raise ValueError(f"EncoderSpec.pretrain_lr ({self.pretrain_lr}) must be > 0")
        if not self.name:
            raise ValueError("EncoderSpec.name must be a non-empty string")
        if self.backbone not in PIXEL_BACKBONES:
            raise ValueError(f"EncoderSpec.backbone ({self.backbone!r}) must be one of {list(PIXEL_BACKBONES)}")
        for name, low in (("image_size", 32), ("feature_grid", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"EncoderSpec.{name} ({value!r}) must be an integer >= {low}")


class StateEncoder(nn.Module):
    """(B, S) standardized state -> (B, F) features; frozen after `build_encoder`/`pretrain_encoder`."""

    def __init__(self, spec: EncoderSpec, state_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.spec, self.state_dim = spec, state_dim
        gen = torch.Generator().manual_seed(seed)
        self.net: nn.Module | None = None
        if spec.kind == "random_proj":
            self.register_buffer("proj", torch.randn(state_dim, spec.out_dim, generator=gen) / math.sqrt(state_dim))
        elif spec.kind == "mlp":
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self.net = nn.Sequential(
                    nn.Linear(state_dim, spec.hidden), nn.GELU(),
                    nn.Linear(spec.hidden, spec.hidden), nn.GELU(),
                    nn.Linear(spec.hidden, spec.out_dim),
                )

    @property
    def out_dim(self) -> int:
        """F, feature width."""
        return {"task_only": 0, "identity": self.state_dim, "pixels": self.state_dim}.get(self.spec.kind,
                                                                                         self.spec.out_dim)

    def forward(self, states: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if states.ndim != 2 or states.shape[1] != self.state_dim:
            raise ValueError(f"states must have shape (B, {self.state_dim}), got {tuple(states.shape)}")
        if self.spec.noise_std > 0:
            states = states + self.spec.noise_std * torch.randn(states.shape, generator=generator)
        kind = self.spec.kind
        if kind == "task_only":
            return states.new_zeros(states.shape[0], 0)
        if kind in ("identity", "pixels"):  # pixels: `states` are already the frozen CNN's features
            return states
        if kind == "random_proj":
            return states @ self.proj  # (B, S) @ (S, F)
        return self.net(states)


def pretrain_encoder(encoder: StateEncoder, states: Tensor, targets: Tensor, batch_size: int = 256,
                     seed: int = 0) -> list[float]:
    """Fit an `mlp` encoder + a linear readout to `targets` (N, D) by MSE, then freeze it; returns losses.

    Other kinds have nothing to learn and are only frozen.
    """
    losses: list[float] = []
    if encoder.net is not None and encoder.spec.pretrain_steps > 0:
        spec = encoder.spec
        gen = torch.Generator().manual_seed(seed)
        readout = nn.Linear(spec.out_dim, targets.shape[1])
        opt = torch.optim.Adam([*encoder.parameters(), *readout.parameters()], lr=spec.pretrain_lr)
        for _ in range(spec.pretrain_steps):
            idx = torch.randint(len(states), (min(batch_size, len(states)),), generator=gen)
            loss = F.mse_loss(readout(encoder(states[idx], generator=gen)), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    encoder.requires_grad_(False)
    encoder.eval()
    return losses


def build_encoder(spec: EncoderSpec, states: Tensor, targets: Tensor, seed: int = 0) -> StateEncoder:
    """A frozen encoder of rung `spec` for states (N, S), pretrained on (states, targets (N, D)) if learned."""
    encoder = StateEncoder(spec, states.shape[1], seed)
    losses = pretrain_encoder(encoder, states, targets, seed=seed)
    if losses:
        logger.debug("encoder %s pretrain loss %.4f -> %.4f", spec.name, losses[0], losses[-1])
    return encoder


def policy_inputs(encoder: StateEncoder, states: Tensor, tasks: Tensor, num_tasks: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """(B, F + num_tasks): frozen features of `states` (B, S) with the task one-hot appended."""
    with torch.no_grad():
        feats = encoder(states, generator=generator)  # (B, F)
    return torch.cat([feats, F.one_hot(tasks, num_tasks).float()], dim=1)


class ProbeResult(NamedTuple):
    r2_train: float
    """R^2 of the ridge probe on the samples it was fitted on."""
    r2_val: float
    """R^2 on held-out samples (1 - SSE / total variance around the held-out mean)."""
    mse_val: float
    """Held-out MSE per target value."""


def r2_score(pred: Tensor, target: Tensor) -> float:
    """1 - sum((target - pred)^2) / sum((target - mean(target))^2), pooled over all columns of (N, D)."""
    sse = ((target - pred) ** 2).sum()
    sst = ((target - target.mean(0, keepdim=True)) ** 2).sum().clamp_min(1e-12)
    return float(1 - sse / sst)


def linear_probe(x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, ridge: float = 1e-3) -> ProbeResult:
    """Ridge regression (with bias) from features (N, F) to targets (N, D); `ridge` is relative to the
    mean feature variance so it does not depend on the features' scale."""
    if ridge < 0:
        raise ValueError(f"ridge ({ridge}) must be >= 0")
    if x_train.ndim != 2 or x_train.shape[1] < 1 or x_val.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"probe features must be (N, F) with F >= 1 and the same F on both sides, "
                         f"got {tuple(x_train.shape)} and {tuple(x_val.shape)}")
    mu = x_train.mean(0, keepdim=True)
    xt, xv = (x_train - mu).double(), (x_val - mu).double()  # (N, F)
    ym = y_train.mean(0, keepdim=True).double()  # (1, D)
    gram = xt.T @ xt  # (F, F)
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    reg = ridge * gram.diagonal().mean().clamp_min(1e-12) + 1e-9
    w = torch.linalg.solve(gram + reg * eye, xt.T @ (y_train.double() - ym))  # (F, D)
    pred_t, pred_v = xt @ w + ym, xv @ w + ym
    return ProbeResult(
        r2_score(pred_t, y_train.double()),
        r2_score(pred_v, y_val.double()),
        float(((pred_v - y_val.double()) ** 2).mean()),
    )

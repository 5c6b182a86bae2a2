"""Downstream fidelity of action tokenizers, in original action units.

- per-dimension MSE / MAE, gripper sign accuracy (`ActionFidelity`, a torchmetrics Metric);
- end-effector position drift: integrate the position deltas (dims 0:3) of decoded and true actions over
  an episode's consecutive chunks and measure ||cumsum(decoded) - cumsum(true)|| per step (final, mean),
  in action units (robosuite/LIBERO OSC_POSE deltas are scaled controller commands, not metres);
- the errors split into coarse and fine phases by end-effector speed, after SpecPrune-VLA
  (arXiv 2509.05614): a step is *coarse* (fast, transit motion) when its true translational speed
  ||a[0:3]|| is above the per-episode `quantile` (default: median) of that speed, else *fine*
  (slow, contact-rich manipulation). Ties at the threshold count as fine;
- bits per chunk: nominal (L x log2 K) and effective (L x log2 perplexity of code usage), utilization.

`evaluate_episodes` runs all of these for an `ActionTokenizer` over whole episodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import Tensor
from torchmetrics import Metric

from vqstudy.quantize import usage_of

POSITION_DIMS = slice(0, 3)


def _flatten_steps(x: Tensor) -> Tensor:
    """(N, H, A) consecutive chunks or (T, A) steps -> (T, A)."""
    if x.ndim == 3:
        return rearrange(x, "n h a -> (n h) a")
    if x.ndim != 2:
        raise ValueError(f"actions must be (T, A) or (N, H, A) consecutive chunks, got shape {tuple(x.shape)}")
    return x


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")


# ------------------------------------------------------------------------------------------------
# Phases and drift
# ------------------------------------------------------------------------------------------------


def speed_phases(true_actions: Tensor, quantile: float = 0.5, position_dims: slice = POSITION_DIMS) -> Tensor:
    """(T, A) or (N, H, A) true actions of ONE episode -> bool mask (same leading shape), True = coarse.

    Coarse where the translational speed ||a[position_dims]|| exceeds the episode's `quantile` of it.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile ({quantile}) must be in (0, 1)")
    speed = true_actions[..., position_dims].float().norm(dim=-1)  # (T,) or (N, H)
    threshold = torch.quantile(speed.reshape(-1), quantile)
    return speed > threshold


class Drift(NamedTuple):
    final: Tensor
    """() position error after the last step."""
    mean: Tensor
    """() position error averaged over the steps."""
    per_step: Tensor
    """(T,) ||cumsum(pred pos) - cumsum(true pos)|| after each step."""


def position_drift(pred: Tensor, target: Tensor, position_dims: slice = POSITION_DIMS) -> Drift:
    """End-effector drift of ONE episode: (T, A) steps or (N, H, A) consecutive chunks, original units.

    Integrates the position deltas of decoded and true actions and measures the distance between the two
    positions after each step (a constant per-step offset c gives drift t * ||c||).
    """
    _check_pair(pred, target)
    p, t = _flatten_steps(pred).double(), _flatten_steps(target).double()
    gap = torch.cumsum(p[:, position_dims] - t[:, position_dims], dim=0).norm(dim=-1)  # (T,)
    return Drift(gap[-1].float(), gap.mean().float(), gap.float())


# ------------------------------------------------------------------------------------------------
# Accumulating fidelity metric
# ------------------------------------------------------------------------------------------------


class ActionFidelity(Metric):
    """Per-dimension MSE/MAE (overall, coarse phase, fine phase) and gripper sign accuracy.

    update(pred, target, coarse=None): actions (..., A) in original units; `coarse` is a bool mask over
    the leading shape (from `speed_phases`, per episode). Without it, the update call is treated as one
    episode and its phases are computed here. compute() -> dict of tensors (see `compute`).
    """

    full_state_update = False

    def __init__(self, action_dim: int, gripper_dim: int | None = -1, speed_quantile: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if action_dim < 1:
            raise ValueError(f"action_dim ({action_dim}) must be >= 1")
        if gripper_dim is not None and not -action_dim <= gripper_dim < action_dim:
            raise ValueError(f"gripper_dim ({gripper_dim}) must be in [-{action_dim}, {action_dim}) or None")
        self.action_dim, self.gripper_dim, self.speed_quantile = action_dim, gripper_dim, speed_quantile
        for phase in ("all", "coarse", "fine"):
            self.add_state(f"sq_{phase}", torch.zeros(action_dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"abs_{phase}", torch.zeros(action_dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"n_{phase}", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("grip_correct", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, coarse: Tensor | None = None) -> None:
        _check_pair(pred, target)
        if pred.shape[-1] != self.action_dim:
            raise ValueError(f"actions last dim ({pred.shape[-1]}) must equal action_dim ({self.action_dim})")
        if coarse is None:
            coarse = speed_phases(target, self.speed_quantile)
        if coarse.shape != pred.shape[:-1]:
            raise ValueError(f"coarse mask {tuple(coarse.shape)} must match the actions' leading shape {tuple(pred.shape[:-1])}")
        p = pred.reshape(-1, self.action_dim).double()
        t = target.reshape(-1, self.action_dim).double()
        c = coarse.reshape(-1).to(p.device)
        err = p - t  # (T, A)
        for phase, mask in (("all", torch.ones_like(c)), ("coarse", c), ("fine", ~c)):
            e = err[mask]
            getattr(self, f"sq_{phase}").add_((e**2).sum(0))
            getattr(self, f"abs_{phase}").add_(e.abs().sum(0))
            getattr(self, f"n_{phase}").add_(e.shape[0])
        if self.gripper_dim is not None:
            g = self.gripper_dim
            self.grip_correct.add_(((p[:, g] > 0) == (t[:, g] > 0)).sum())

    def compute(self) -> dict[str, Tensor]:
        """mse, mae (A,) and their means; mse_coarse/mse_fine/mae_coarse/mae_fine (scalars, mean over dims);
        coarse_fraction; gripper_acc (NaN without a gripper dim). Phases with no steps give NaN."""
        out: dict[str, Tensor] = {}
        for phase in ("all", "coarse", "fine"):
            n = getattr(self, f"n_{phase}")
            mse = getattr(self, f"sq_{phase}") / n
            mae = getattr(self, f"abs_{phase}") / n
            if phase == "all":
                out.update(mse=mse.float(), mae=mae.float(), mse_mean=mse.mean().float(), mae_mean=mae.mean().float())
            else:
                out[f"mse_{phase}"], out[f"mae_{phase}"] = mse.mean().float(), mae.mean().float()
        out["coarse_fraction"] = (self.n_coarse / self.n_all).float()
        nan = torch.tensor(float("nan"))
        out["gripper_acc"] = (self.grip_correct / self.n_all).float() if self.gripper_dim is not None else nan
        return out


# ------------------------------------------------------------------------------------------------
# Bits
# ------------------------------------------------------------------------------------------------


class BitsReport(NamedTuple):
    nominal: float
    """Bits per chunk if every id were equally likely: sum over positions of log2(ids available)."""
    effective: float
    """Bits per chunk carried by the observed code usage: sum over groups of L_g x log2 perplexity_g."""
    utilization: float
    """Share of the vocabulary used at least once."""
    perplexity: float
    """exp(entropy) of the usage of all ids together."""


def chunk_bits(ids: Tensor, groups: Sequence[Any], vocab_size: int) -> BitsReport:
    """Bits per chunk of ids (N, L) whose positions fall in `groups` (`TokenGroup`s, ids local or global)."""
    nominal = effective = 0.0
    for g in groups:
        part = ids[:, g.positions] - g.start  # (N, L_g) local ids in [0, size)
        length = g.positions.stop - g.positions.start
        ppl = usage_of(part, g.size).perplexity
        nominal += length * math.log2(g.size)
        effective += length * math.log2(max(float(ppl), 1.0))
    usage = usage_of(ids, vocab_size)
    ppl, util = usage.perplexity, usage.utilization
    return BitsReport(nominal, effective, float(util), float(ppl))


# ------------------------------------------------------------------------------------------------
# Whole-episode evaluation
# ------------------------------------------------------------------------------------------------


def chunk_episode(actions: Tensor, horizon: int) -> Tensor:
    """(T, A) episode -> (T // H, H, A) consecutive non-overlapping chunks (the tail < H steps is dropped)."""
    n = actions.shape[0] // horizon
    if n == 0:
        raise ValueError(f"episode has {actions.shape[0]} steps, fewer than horizon ({horizon})")
    return rearrange(actions[: n * horizon], "(n h) a -> n h a", h=horizon)


@torch.no_grad()
def evaluate_episodes(
    action_tokenizer: Any,
    episodes: Sequence[Tensor],
    speed_quantile: float = 0.5,
    gripper_dim: int | None = -1,
) -> dict[str, Any]:
    """Encode/decode every episode (T, A) in original units through an `ActionTokenizer` and report fidelity.

    Returns a flat dict: `mse` (A,), `mae` (A,), `mse_mean`, `mae_mean`, `mse_coarse`, `mse_fine`,
    `mae_coarse`, `mae_fine`, `coarse_fraction`, `gripper_acc`, `drift_final`, `drift_mean` (means over
    episodes), `bits_nominal`, `bits_effective`, `utilization`, `perplexity`.
    """
    tok = action_tokenizer
    metric = ActionFidelity(tok.action_dim, gripper_dim=gripper_dim, speed_quantile=speed_quantile)
    finals, means, codes = [], [], []
    for ep in episodes:
        ep = torch.as_tensor(ep, dtype=torch.float32)
        true = chunk_episode(ep, tok.horizon)  # (N, H, A)
        ids = tok.encode(true)
        pred = tok.decode(ids)
        metric.update(pred, true, speed_phases(true, speed_quantile))
        drift = position_drift(pred, true)
        finals.append(drift.final)
        means.append(drift.mean)
        codes.append(tok.codes_from_ids(ids))
    if not codes:
        raise ValueError("episodes is empty")
    out: dict[str, Any] = metric.compute()
    out["drift_final"] = torch.stack(finals).mean()
    out["drift_mean"] = torch.stack(means).mean()
    bits = chunk_bits(torch.cat(codes), tok.tokenizer.token_groups(), tok.vocab_size)
    out.update(bits_nominal=bits.nominal, bits_effective=bits.effective, utilization=bits.utilization,
               perplexity=bits.perplexity)
    return out

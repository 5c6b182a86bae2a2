"""Per-dimension quantile normalization of actions to [-1, 1], gripper kept binary.

As in OpenVLA (arXiv 2406.09246, "BOUNDS_Q99"): each continuous dimension is clipped to its
[q01, q99] range over the training actions and mapped linearly onto [-1, 1]; the gripper dimensions
are not rescaled but binarized by sign (> 0 -> +1 close, <= 0 -> -1 open). A dimension with
q01 == q99 maps to 0 and back to that constant, without dividing by zero.
"""

from __future__ import annotations

from collections.abc import Sequence
import logging
import warnings
from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

logger = logging.getLogger(__name__)

STATE_KEYS = ("q_low", "q_high", "gripper_mask", "quantiles")


def binary_dims(actions: np.ndarray) -> list[int]:
    """Dimensions of `actions` (N, A) whose values are all -1 or +1 (gripper open/close commands, which the
    normalizer keeps by sign without loss; a gripper effort in [-1, 1] stays a continuous dimension)."""
    return [d for d in range(actions.shape[1]) if np.isin(np.unique(actions[:, d]), (-1.0, 1.0)).all()]


def gripper_layout(actions: np.ndarray, gripper_dims: Sequence[int] | None) -> list[int]:
    """The gripper dimensions of training actions (N, A): `gripper_dims` checked against the data, or inferred.

    Inferred (None): every binary dimension, so a two-arm 14-D file gets both grippers (6 and 13). Declared:
    each must lie in [0, A) (ValueError naming it); a declared dimension that is not binary, or a binary one
    that is not declared (it would be rescaled like a continuous joint), gets a warning naming the dimensions."""
    dim = actions.shape[1]
    binary = binary_dims(actions)
    if gripper_dims is None:
        if binary:
            logger.info("gripper dims inferred from the data (binary dimensions): %s", binary)
        return binary
    dims = [int(d) for d in gripper_dims]
    bad = [d for d in dims if not 0 <= d < dim]
    if bad:
        raise ValueError(f"gripper_dims ({dims}) has {bad} out of range for action_dim {dim}; expected dims in [0, {dim})")
    not_binary = [d for d in dims if d not in binary]
    undeclared = [d for d in binary if d not in dims]
    if not_binary:
        warnings.warn(f"gripper_dims {not_binary} take values other than -1/+1 in the data (action_dim {dim}); "
                      "they are still mapped to -1/+1 by sign", stacklevel=3)
    if undeclared:
        warnings.warn(f"action dims {undeclared} take only the values -1/+1 (a gripper, e.g. of a second arm?) but are not "
                      f"in gripper_dims {dims}; they are rescaled like continuous joints", stacklevel=3)
    return dims


class QuantileNormalizer:
    """Maps actions `(..., A)` to [-1, 1] per dimension by training quantiles; gripper dims to {-1, +1}."""

    def __init__(self, quantiles: tuple[float, float] = (0.01, 0.99)) -> None:
        low, high = quantiles
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"quantiles ({quantiles}) must satisfy 0 <= low < high <= 1")
        self.quantiles = (float(low), float(high))
        self.q_low: np.ndarray | None = None  # (A,) float32
        self.q_high: np.ndarray | None = None  # (A,) float32
        self.gripper_mask: np.ndarray | None = None  # (A,) bool

    @property
    def fitted(self) -> bool:
        return self.q_low is not None

    @property
    def action_dim(self) -> int:
        self._check_fitted()
        return int(self.q_low.shape[0])

    def fit(self, actions: np.ndarray | torch.Tensor, gripper_dims: Sequence[int] | None = None) -> QuantileNormalizer:
        """Set the per-dimension quantiles from training actions `(N, A)`; return self.

        `gripper_dims`: the binary gripper dimensions (kept as -1/+1); None infers them from the data
        (`gripper_layout`), which also warns, naming the dimensions, when declared ones do not fit the data."""
        x = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"actions must be (N, A) with N >= 1, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"actions contain {int((~np.isfinite(x)).sum())} non-finite values")
        dim = x.shape[1]
        mask = np.zeros(dim, dtype=bool)
        mask[gripper_layout(x, gripper_dims)] = True
        q = np.quantile(x.astype(np.float64), self.quantiles, axis=0)  # (2, A)
        self.q_low, self.q_high = q[0].astype(np.float32), q[1].astype(np.float32)
        self.gripper_mask = mask
        return self

    def normalize(self, actions: ArrayT) -> ArrayT:
        """Actions `(..., A)` -> `(..., A)` in [-1, 1] (gripper dims in {-1, +1}); same type and device."""
        return self._apply(actions, inverse=False)

    def unnormalize(self, actions: ArrayT) -> ArrayT:
        """Inverse of `normalize` on [-1, 1] (inputs are clipped to it first); same type and device."""
        return self._apply(actions, inverse=True)

    def _apply(self, actions: ArrayT, inverse: bool) -> ArrayT:
        self._check_fitted()
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions last dim ({actions.shape[-1]}) must equal action_dim ({self.action_dim})")
        center = (self.q_low.astype(np.float64) + self.q_high.astype(np.float64)) / 2  # (A,)
        half = (self.q_high.astype(np.float64) - self.q_low.astype(np.float64)) / 2  # (A,)
        safe_half = np.where(half > 0, half, 1.0)  # zero-range dims: x - center == 0 after clipping
        if isinstance(actions, torch.Tensor):
            x = actions if actions.is_floating_point() else actions.float()
            lo, hi, c, h, sh = (torch.as_tensor(v, device=x.device, dtype=x.dtype)
                                for v in (self.q_low, self.q_high, center, half, safe_half))
            mask = torch.as_tensor(self.gripper_mask, device=x.device)
            where, clip = torch.where, torch.clamp
            positive = (x > 0).to(x.dtype)
        else:
            x = np.asarray(actions)
            x = x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
            lo, hi, c, h, sh = (v.astype(x.dtype) for v in (self.q_low, self.q_high, center, half, safe_half))
            mask = self.gripper_mask
            where, clip = np.where, np.clip
            positive = (x > 0).astype(x.dtype)
        if inverse:
            y = clip(clip(x, -1, 1) * h + c, lo, hi)
        else:
            y = clip((clip(x, lo, hi) - c) / sh, -1, 1)
        grip = positive * 2 - 1  # gripper dims: sign in {-1, +1}, 0 counts as open
        return where(mask, grip, y)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("QuantileNormalizer is not fitted: call fit(actions) or from_state_dict(...)")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Statistics as tensors (`q_low`, `q_high` float32 (A,), `gripper_mask` bool (A,), `quantiles` (2,))."""
        self._check_fitted()
        return {
            "q_low": torch.from_numpy(self.q_low.copy()),
            "q_high": torch.from_numpy(self.q_high.copy()),
            "gripper_mask": torch.from_numpy(self.gripper_mask.copy()),
            "quantiles": torch.tensor(self.quantiles, dtype=torch.float64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> QuantileNormalizer:
        """Rebuild a fitted normalizer from `state_dict()` output (e.g. loaded from safetensors)."""
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"normalizer state is missing keys {missing}; expected {list(STATE_KEYS)}")
        q_low = state["q_low"].detach().cpu().numpy().astype(np.float32)
        q_high = state["q_high"].detach().cpu().numpy().astype(np.float32)
        mask = state["gripper_mask"].detach().cpu().numpy().astype(bool)
        if not q_low.ndim == 1 or q_low.shape != q_high.shape or q_low.shape != mask.shape:
            raise ValueError(
                f"normalizer state shapes differ: q_low {q_low.shape}, q_high {q_high.shape}, "
                f"gripper_mask {mask.shape}; expected all (A,)"
            )
        low, high = (float(v) for v in state["quantiles"].tolist())
        norm = cls((low, high))
        norm.q_low, norm.q_high, norm.gripper_mask = q_low, q_high, mask
        return norm

    def __repr__(self) -> str:
        if not self.fitted:
            return f"QuantileNormalizer(quantiles={self.quantiles}, unfitted)"
        grippers = np.flatnonzero(self.gripper_mask).tolist()
        return f"QuantileNormalizer(quantiles={self.quantiles}, action_dim={self.action_dim}, gripper_dims={grippers})"

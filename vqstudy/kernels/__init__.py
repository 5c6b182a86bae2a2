"""Nearest-code search: `nearest_code(x, codebook)` with a torch reference, a fused C++ CPU kernel, a blocked
pure-torch path and a fused Triton kernel.

Backends:
- "torch":   full (N, K) distance matrix + argmin; the reference and test oracle.
- "compiled": fused C++ kernel for the CPU, compiled on first use and cached (vqstudy.kernels.compiled); fp32.
- "blocked": rows in blocks with a bounded scratch buffer (vqstudy.kernels.blocked); any device. The fallback
             for CPU search when no C++ compiler is present.
- "triton":  fused kernel, running min/argmin over codebook tiles (vqstudy.kernels.triton_kernel);
             CUDA, or CPU under TRITON_INTERPRET=1.
- "auto":    triton for CUDA inputs when triton imports; compiled for CPU inputs of at most 32-bit floats when
             the kernel builds; otherwise blocked when N*K is large, torch when small. The environment variable
             VQSTUDY_NEAREST_BACKEND replaces "auto" (an explicit backend argument wins over it).
All backends return the squared distance ||x - c||^2 of the code they chose, computed from the difference,
and the same ids: ties go to the lowest code index.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

from vqstudy.kernels.blocked import BlockedPlan, blocked_plan, nearest_code_blocked
from vqstudy.kernels.compiled import (compiled_available, ema_step_compiled, nearest_code_compiled,
                                      usage_stats_compiled)
from vqstudy.kernels.reference import exact_sqdist, nearest_code_torch
from vqstudy.kernels.triton_kernel import interpreter_enabled, nearest_code_triton, triton_available

BACKENDS = ("auto", "torch", "compiled", "blocked", "triton")
"""Accepted values of `backend` (and of VQSTUDY_NEAREST_BACKEND)."""
ENV_VAR = "VQSTUDY_NEAREST_BACKEND"
SMALL_PROBLEM = 1 << 18
"""auto picks "torch" when N * K is at most this (the full matrix is at most 1 MiB of fp32)."""


class NearestCode(NamedTuple):
    """Result of `nearest_code`; unpacks as `indices, sqdist = nearest_code(x, codebook)`."""

    indices: torch.Tensor
    """(N,) int64 index of the nearest code."""
    sqdist: torch.Tensor
    """(N,) float32 squared euclidean distance to that code (>= 0)."""


def available_backends() -> list[str]:
    """Backends that can run in this process ("compiled" needs a C++ compiler, "triton" needs triton plus CUDA
    or TRITON_INTERPRET=1)."""
    names = ["torch", "blocked"]
    if compiled_available():
        names.append("compiled")
    if triton_available() and (torch.cuda.is_available() or interpreter_enabled()):
        names.append("triton")
    return names


def _check_backend(name: Any, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    return name


def _validate(x: Any, codebook: Any) -> None:
    for name, t, shape in (("x", x, "(N, D)"), ("codebook", codebook, "(K, D)")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"nearest_code: {name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"nearest_code: {name} must be 2-D {shape}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"nearest_code: {name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"nearest_code: x and codebook must have the same D; got x {tuple(x.shape)}, codebook {tuple(codebook.shape)}"
        )
    if x.device != codebook.device:
        raise ValueError(f"nearest_code: x and codebook must be on the same device; got {x.device} and {codebook.device}")
    if codebook.shape[0] == 0:
        raise ValueError("nearest_code: codebook must have at least one code (K >= 1), got K = 0")
    if x.shape[1] == 0:
        raise ValueError("nearest_code: D must be >= 1, got shapes with D = 0")


def resolve_backend(backend: str, x: torch.Tensor, codebook: torch.Tensor) -> str:
    """The concrete backend ("torch", "blocked" or "triton") that `nearest_code` would run."""
    _check_backend(backend, "nearest_code backend")
    if backend == "auto":
        backend = _check_backend(os.environ.get(ENV_VAR, "auto") or "auto", f"environment variable {ENV_VAR}")
    if backend != "auto":
        return backend
    if x.device.type == "cuda" and triton_available():
        return "triton"
    if x.device.type == "cpu" and x.dtype != torch.float64 and codebook.dtype != torch.float64 and compiled_available():
        return "compiled"
    return "torch" if x.shape[0] * codebook.shape[0] <= SMALL_PROBLEM else "blocked"


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, backend: str = "auto", *, allow_tf32: bool = False
) -> NearestCode:
    """Nearest code (squared euclidean) for each row of x (N, D) in codebook (K, D).

    Returns NearestCode(indices (N,) int64, sqdist (N,) float32). Not differentiable (a search). Ties go to
    the lowest code index. float16/bfloat16 inputs are accepted and computed in float32 (the ids are those of
    the float32 search on the upcast values); float64 inputs stay float64 on the torch/blocked backends (auto
    picks one of those for them). `allow_tf32` lets the Triton kernel use TF32 dot products; other backends
    ignore it.
    """
    _validate(x, codebook)
    name = resolve_backend(backend, x, codebook)
    with torch.no_grad():
        dtype = torch.promote_types(torch.promote_types(x.dtype, codebook.dtype), torch.float32)
        x, codebook = x.detach().to(dtype), codebook.detach().to(dtype)
        if x.shape[0] == 0:
            empty = torch.empty(0, dtype=torch.long, device=x.device)
            return NearestCode(empty, torch.empty(0, dtype=torch.float32, device=x.device))
        if name == "torch":
            indices, sqdist = nearest_code_torch(x, codebook)
        elif name == "compiled":
            indices, sqdist = nearest_code_compiled(x, codebook)
        elif name == "blocked":
            indices, sqdist = nearest_code_blocked(x, codebook)
        else:
            indices, sqdist = nearest_code_triton(x, codebook, allow_tf32=allow_tf32)
    return NearestCode(indices, sqdist)


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "BlockedPlan",
    "NearestCode",
    "available_backends",
    "blocked_plan",
    "compiled_available",
    "ema_step_compiled",
    "exact_sqdist",
    "nearest_code",
    "resolve_backend",
    "usage_stats_compiled",
]

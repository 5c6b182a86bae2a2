"""Typed configuration for the shared quantizer, and the helpers every config uses.

Merge order, everywhere in vqstudy: dataclass defaults <- YAML file <- command-line overrides.
Each field's docstring (the string literal under it) is its ``--help`` text.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from pathlib import Path
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

UpdateRule = Literal["ema", "grad"]
QuantizerBackend = Literal["vqstudy", "vqp"]
SearchBackend = Literal["auto", "torch", "blocked", "triton"]


def _check_literal(obj: Any, name: str) -> None:
    """Raise ValueError if field `name` of dataclass `obj` is not one of its Literal choices."""
    hint = get_type_hints(type(obj))[name]
    if get_origin(hint) is Literal and getattr(obj, name) not in get_args(hint):
        raise ValueError(
            f"{type(obj).__name__}.{name} ({getattr(obj, name)!r}) must be one of {list(get_args(hint))}"
        )


@dataclass
class QuantizerConfig:
    """Everything that defines a `vqstudy.Quantizer`. Defaults are the settings the study recommends."""

    dim: int = 64
    """Width of the vectors fed to the quantizer (the last dimension of x)."""
    codebook_size: int = 512
    """Number of codes K."""
    codebook_dim: int | None = None
    """Width of the lookup space; < dim projects in and out (factorized codes, ViT-VQGAN, arXiv 2110.04627)."""
    cosine: bool = False
    """l2-normalize vectors and codes before the lookup (cosine similarity lookup, arXiv 2110.04627)."""
    update: UpdateRule = "ema"
    """How the codebook learns: 'ema' (exponential moving averages, arXiv 1711.00937 app. A) or 'grad'."""
    decay: float = 0.99
    """EMA decay of code usage counts and code sums."""
    eps: float = 1e-5
    """Laplace smoothing of the EMA usage counts."""
    commitment_weight: float = 0.25
    """Weight beta of the commitment loss ||z - sg(q)||^2."""
    codebook_weight: float = 1.0
    """Weight of the codebook loss ||sg(z) - q||^2 (used only with update='grad')."""
    kmeans_init: bool = True
    """Initialise the codebook by k-means++ seeding + Lloyd iterations on collected encoder outputs."""
    kmeans_samples: int | None = None
    """Vectors to collect over the first training steps before k-means (None: 16 x codebook_size)."""
    kmeans_iters: int = 10
    """Lloyd iterations after k-means++ seeding."""
    kmeans_max_steps: int = 50
    """Run k-means with what was collected after this many steps even if kmeans_samples is not reached."""
    dead_code_reset: bool = True
    """Every reset_every steps, re-seed codes whose usage share fell below dead_code_threshold / codebook_size."""
    dead_code_threshold: float = 0.03
    """A code is dead when its usage share over the last reset_every steps < threshold x (1 / codebook_size); independent of batch size."""
    reset_every: int = 20
    """Check for dead codes every this many training steps."""
    reservoir_size: int | None = None
    """Recent encoder outputs kept (per process) to re-seed dead codes from (None: 8 x codebook_size)."""
    backend: QuantizerBackend = "vqstudy"
    """'vqstudy' (this module) or 'vqp' (vector-quantize-pytorch's VectorQuantize behind the same interface)."""
    search_backend: SearchBackend = "auto"
    """Nearest-code search backend (see vqstudy.kernels.nearest_code); env VQSTUDY_NEAREST_BACKEND overrides auto."""
    seed: int = 0
    """Seed of the quantizer's own random choices (k-means++ seeding, reset sampling); shared by all ranks."""

    def __post_init__(self) -> None:
        for name in ("dim", "codebook_size", "kmeans_iters", "kmeans_max_steps", "reset_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QuantizerConfig.{name} ({value!r}) must be a positive integer")
        if self.codebook_size < 2:
            raise ValueError(f"QuantizerConfig.codebook_size ({self.codebook_size}) must be >= 2")
        if self.codebook_dim is not None and not 1 <= self.codebook_dim <= self.dim:
            raise ValueError(f"QuantizerConfig.codebook_dim ({self.codebook_dim}) must be in [1, dim ({self.dim})]")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"QuantizerConfig.decay ({self.decay}) must be in (0, 1)")
        if not self.eps > 0:
            raise ValueError(f"QuantizerConfig.eps ({self.eps}) must be > 0")
        if not 0.0 <= self.dead_code_threshold < 1.0:
            raise ValueError(f"QuantizerConfig.dead_code_threshold ({self.dead_code_threshold}) must be in [0, 1)")
        if self.commitment_weight < 0 or self.codebook_weight < 0:
            raise ValueError(
                f"QuantizerConfig weights must be >= 0, got commitment_weight={self.commitment_weight}, "
                f"codebook_weight={self.codebook_weight}"
            )
        for name in ("kmeans_samples", "reservoir_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"QuantizerConfig.{name} ({value!r}) must be a positive integer or None")
        for name in ("update", "backend", "search_backend"):
            _check_literal(self, name)

    @property
    def lookup_dim(self) -> int:
        """Width of the codebook vectors."""
        return self.codebook_dim if self.codebook_dim is not None else self.dim

    @property
    def bits(self) -> float:
        """Nominal bits per code: log2(codebook_size)."""
        return math.log2(self.codebook_size)

    def with_dim(self, dim: int) -> "QuantizerConfig":
        """A copy with `dim` replaced (models fill in their latent width)."""
        return replace(self, dim=dim)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (used as --help text)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass `cls` from a (YAML) dict, recursing into nested dataclass fields.

    Unknown keys raise ValueError naming the key, its place, and the allowed keys.
    """
    data = dict(data or {})
    where = where or cls.__name__
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        nested = _dataclass_in(hint)
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `extra`, recursing into nested dicts (the YAML <- command-line merge)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """['train.max_steps=10', 'name=x'] -> {'train': {'max_steps': 10}, 'name': 'x'}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key.path=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _yaml_value(raw)
    return out


def _yaml_value(raw: str) -> Any:
    """A YAML scalar/list/dict; also '1e-3', which YAML 1.1 reads as a string, as a float."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def read_yaml(path: str | Path | None, what: str) -> dict[str, Any]:
    """The mapping in a YAML file ({} for None); ValueError naming the file if it holds something else."""
    if path is None:
        return {}
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of {what} fields, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> Any:
    """Dataclass `cls` from defaults <- `base` <- YAML file <- `overrides` (nested dicts)."""
    data = deep_merge(read_yaml(path, cls.__name__), overrides or {})
    if base is not None:
        data = deep_merge(base, data)
    return from_dict(cls, data, where=str(path) if path else cls.__name__)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type inside a hint like `X`, `X | None` or `Optional[X]`."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (nested dataclasses too), for JSON/YAML."""
    return dataclasses.asdict(obj)

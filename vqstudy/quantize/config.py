"""`QuantizerConfig`: everything that defines a `vqstudy.Quantizer`, with its validation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Literal

from vqstudy.config import check_literal

DEAD_CODE_THRESHOLD = 0.03
"""Default dead-code threshold: a code is dead when its usage share is below this x (1 / K)."""

UpdateRule = Literal["ema", "grad"]
QuantizerBackend = Literal["vqstudy", "vqp"]
SearchBackend = Literal["auto", "torch", "blocked", "triton"]


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
    dead_code_threshold: float = DEAD_CODE_THRESHOLD
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
    rotation_trick: bool = False
    """Pass gradients through the quantizer by the rotation + rescale that maps z to q instead of the identity (arXiv 2410.06424)."""
    simvq: bool = False
    """SimVQ: a frozen random codebook C reparameterized by one learned linear map W, codes = C W, trained by gradient (arXiv 2411.02038)."""

    affine: bool = False
    """Affine reparameterization (vqtorch, arXiv 2305.08842): codes = (C - mean(C)) / std(C) x std(z) + mean(z) per
    dim, z's statistics tracked as running averages, so the whole codebook follows the encoder's outputs; update='grad'."""
    affine_momentum: float = 0.1
    """Weight of each training batch in the running mean/variance of z used by `affine`."""
    sync_nu: float = 0.0
    """Synchronized update (arXiv 2305.08842): the codes also receive sync_nu x the task-loss gradient of their
    quantized outputs (the value is unchanged); 0 turns it off; update='grad'."""

    dim_from_owner: ClassVar[bool] = False
    """True for configs whose `dim` a model fills in later (see `LevelQuantizerConfig`)."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        names = ("dim", "codebook_size", "kmeans_iters", "kmeans_max_steps", "reset_every")
        for name in names:
            value = getattr(self, name)
            if name == "dim" and value is None and self.dim_from_owner:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{owner}.{name} ({value!r}) must be a positive integer")
        if self.codebook_size < 2:
            raise ValueError(f"{owner}.codebook_size ({self.codebook_size}) must be >= 2")
        if self.codebook_dim is not None:
            if isinstance(self.codebook_dim, bool) or not isinstance(self.codebook_dim, int) or self.codebook_dim < 1:
                raise ValueError(f"{owner}.codebook_dim ({self.codebook_dim!r}) must be a positive integer or None")
            if self.dim is not None and self.codebook_dim > self.dim:
                raise ValueError(f"{owner}.codebook_dim ({self.codebook_dim}) must be in [1, dim ({self.dim})]")
        if self.simvq and (self.update != "grad" or self.kmeans_init or self.dead_code_reset):
            raise ValueError(
                f"{owner}.simvq ({self.simvq}) learns the codebook only through its linear map, by gradient: it needs "
                f"update='grad' (got {self.update!r}), kmeans_init=False (got {self.kmeans_init}) and "
                f"dead_code_reset=False (got {self.dead_code_reset}); the random codebook is never re-seeded"
            )
        if (self.simvq or self.rotation_trick or self.affine or self.sync_nu) and self.backend != "vqstudy":
            raise ValueError(f"{owner}: simvq/rotation_trick/affine/sync_nu need backend='vqstudy', not {self.backend!r}")
        if (self.affine or self.sync_nu) and self.update != "grad":
            raise ValueError(f"{owner}: affine ({self.affine}) and sync_nu ({self.sync_nu}) shape a codebook learned by "
                             f"gradient: they need update='grad', got {self.update!r}")
        if not (isinstance(self.sync_nu, (int, float)) and 0 <= self.sync_nu <= 10):
            raise ValueError(f"{owner}.sync_nu ({self.sync_nu!r}) must be a number in [0, 10]")
        if not 0.0 < self.affine_momentum <= 1.0:
            raise ValueError(f"{owner}.affine_momentum ({self.affine_momentum}) must be in (0, 1]")
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
            check_literal(self, name)

    @property
    def lookup_dim(self) -> int:
        """Width of the codebook vectors."""
        return self.codebook_dim if self.codebook_dim is not None else self.dim

    def with_dim(self, dim: int) -> "QuantizerConfig":
        """A `QuantizerConfig` (never a subclass) with `dim` replaced (models fill in their latent width)."""
        if type(self) is QuantizerConfig:
            return replace(self, dim=dim)
        return QuantizerConfig(**{**asdict(self), "dim": dim})


@dataclass
class LevelQuantizerConfig(QuantizerConfig):
    """A `QuantizerConfig` inside a model config: `dim` may stay None until the model fills in its latent width.

    Model configs type their quantizer fields with this class, so that YAML/--set can give
    `codebook_dim` wider than the default dim before the model's latent width is known; the
    `codebook_dim <= dim` check then runs when the model calls `with_dim`.
    """

    dim: int | None = None  # type: ignore[assignment]
    """Width of the vectors fed to the quantizer; None: filled in by the model from its latent width."""

    dim_from_owner: ClassVar[bool] = True

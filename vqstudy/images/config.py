"""Typed configs of the image VQ-VAEs: single-level `VQVAEConfig` and two-level `HierarchicalVQVAEConfig`.

Each model config holds one `QuantizerConfig` per level; its `dim` is always replaced by that
level's latent width, so YAML files set only the codebook options. Merge order as everywhere in
vqstudy: dataclass defaults <- YAML <- command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple, get_args

from vqstudy.quantize import QuantizerConfig
from vqstudy.quantize.config import LevelQuantizerConfig

OutputActivation = Literal["sigmoid", "identity"]


class LevelSpec(NamedTuple):
    """One quantized level of an image model, as capacity accounting sees it."""

    downsample: int
    """Total downsampling factor from the image to this level's code grid."""
    quantizer: QuantizerConfig
    """The level's quantizer config (dim already filled in)."""


def check_power_of_two(owner: str, name: str, value: object, minimum: int = 1) -> int:
    """Raise ValueError unless `value` is an integer power of two >= `minimum`; return log2(value)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value & (value - 1):
        raise ValueError(f"{owner}.{name} ({value!r}) must be a power of two >= {minimum}")
    return value.bit_length() - 1


def _check_positive(owner: str, obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}.{name} ({value!r}) must be a positive integer")


def _fill_dim(owner: str, name: str, quantizer: QuantizerConfig | dict, dim: int) -> QuantizerConfig:
    """`quantizer` with `dim` set to the level's latent width (accepts a plain dict from YAML/JSON)."""
    try:
        if isinstance(quantizer, dict):
            quantizer = LevelQuantizerConfig(**quantizer)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{owner}.{name}: {err}") from err
    if not isinstance(quantizer, QuantizerConfig):
        raise ValueError(f"{owner}.{name} ({quantizer!r}) must be a QuantizerConfig or a dict of its fields")
    try:
        return quantizer.with_dim(dim)
    except ValueError as err:
        raise ValueError(f"{owner}.{name}: {err} (dim is set from the latent width {dim})") from err


@dataclass
class _ImageModelConfig:
    """Fields shared by the image models (encoder/decoder widths and output space)."""

    in_channels: int = 3
    """Image channels."""
    channels: int = 64
    """Hidden width of the convolutional encoder and decoder."""
    n_res_blocks: int = 2
    """Residual blocks after the downsampling convs in each encoder (and before upsampling in each decoder)."""
    output_activation: OutputActivation = "sigmoid"
    """'sigmoid' keeps reconstructions in (0, 1) image space; 'identity' returns raw decoder outputs."""

    def _check_common(self) -> None:
        owner = type(self).__name__
        _check_positive(owner, self, ("in_channels", "channels"))
        if isinstance(self.n_res_blocks, bool) or not isinstance(self.n_res_blocks, int) or self.n_res_blocks < 0:
            raise ValueError(f"{owner}.n_res_blocks ({self.n_res_blocks!r}) must be a non-negative integer")
        choices = list(get_args(OutputActivation))
        if self.output_activation not in choices:
            raise ValueError(f"{owner}.output_activation ({self.output_activation!r}) must be one of {choices}")


@dataclass
class VQVAEConfig(_ImageModelConfig):
    """Single-level VQ-VAE (arXiv 1711.00937): one code grid at 1/downsample of the image resolution."""

    kind: ClassVar[str] = "vqvae"

    downsample: int = 4
    """Downsampling factor f (a power of two) from the image to the code grid, via stride-2 convs."""
    latent_dim: int = 64
    """Width of the encoder output fed to the quantizer (the quantizer's dim)."""
    quantizer: LevelQuantizerConfig = field(default_factory=LevelQuantizerConfig)
    """Quantizer of the code grid; its dim is replaced by latent_dim."""

    def __post_init__(self) -> None:
        self._check_common()
        check_power_of_two("VQVAEConfig", "downsample", self.downsample)
        _check_positive("VQVAEConfig", self, ("latent_dim",))
        self.quantizer = _fill_dim("VQVAEConfig", "quantizer", self.quantizer, self.latent_dim)

    def levels(self) -> dict[str, LevelSpec]:
        """Quantized levels by name: {'code': ...}."""
        return {"code": LevelSpec(self.downsample, self.quantizer)}


@dataclass
class HierarchicalVQVAEConfig(_ImageModelConfig):
    """Two-level VQ-VAE-2 (arXiv 1906.00446): bottom grid at 1/bottom_downsample, top a further 1/top_downsample."""

    kind: ClassVar[str] = "hierarchical"

    bottom_downsample: int = 4
    """Downsampling factor (a power of two) from the image to the bottom code grid."""
    top_downsample: int = 2
    """Further downsampling factor (a power of two >= 2) from the bottom features to the top code grid."""
    bottom_latent_dim: int = 64
    """Width of the bottom codes (the bottom quantizer's dim)."""
    top_latent_dim: int = 64
    """Width of the top codes (the top quantizer's dim)."""
    top: LevelQuantizerConfig = field(default_factory=LevelQuantizerConfig)
    """Quantizer of the top grid; its dim is replaced by top_latent_dim."""
    bottom: LevelQuantizerConfig = field(default_factory=LevelQuantizerConfig)
    """Quantizer of the bottom grid; its dim is replaced by bottom_latent_dim."""

    def __post_init__(self) -> None:
        owner = "HierarchicalVQVAEConfig"
        self._check_common()
        check_power_of_two(owner, "bottom_downsample", self.bottom_downsample)
        check_power_of_two(owner, "top_downsample", self.top_downsample, minimum=2)
        _check_positive(owner, self, ("bottom_latent_dim", "top_latent_dim"))
        self.top = _fill_dim(owner, "top", self.top, self.top_latent_dim)
        self.bottom = _fill_dim(owner, "bottom", self.bottom, self.bottom_latent_dim)

    def levels(self) -> dict[str, LevelSpec]:
        """Quantized levels by name, coarse to fine: {'top': ..., 'bottom': ...}."""
        return {
            "top": LevelSpec(self.bottom_downsample * self.top_downsample, self.top),
            "bottom": LevelSpec(self.bottom_downsample, self.bottom),
        }


ImageModelConfig = VQVAEConfig | HierarchicalVQVAEConfig
MODEL_CONFIGS: dict[str, type] = {"vqvae": VQVAEConfig, "hierarchical": HierarchicalVQVAEConfig}
"""Model configs by `kind`, for the CLI and for from_dict."""

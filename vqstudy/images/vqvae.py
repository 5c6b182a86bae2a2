"""Single-level image VQ-VAE (arXiv 1711.00937) on the shared `Quantizer`; `VQVAEOutput`, shared by both models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from vqstudy.images.blocks import Decoder, Encoder, check_images, output_activation, to_channels_first, to_channels_last
from vqstudy.images.config import VQVAEConfig
from vqstudy.quantize import QuantizeOutput, Quantizer


class VQVAEOutput(NamedTuple):
    """What an image VQ-VAE forward returns."""

    recon: Tensor
    """(B, C, H, W) reconstruction, in (0, 1) with output_activation='sigmoid'."""
    quant_loss: Tensor
    """Scalar: sum of the levels' quantizer losses (commitment, + codebook loss in 'grad' mode)."""
    levels: dict[str, QuantizeOutput]
    """Per level name: quantized (B, h, w, D), indices (B, h, w), loss, stats."""

    @property
    def indices(self) -> dict[str, Tensor]:
        """Code indices per level name, each (B, h, w) int64."""
        return {name: out.indices for name, out in self.levels.items()}

    def metrics(self, prefix: str) -> dict[str, Tensor]:
        """Flat 0-d tensors keyed '{prefix}/quant_loss' and '{prefix}/{level}/{stat}' (e.g. 'val/top/utilization')."""
        flat = {f"{prefix}/quant_loss": self.quant_loss.detach()}
        for name, out in self.levels.items():
            for stat, value in out.stats._asdict().items():
                flat[f"{prefix}/{name}/{stat}"] = torch.as_tensor(value).detach()
        return flat


class VQVAE(nn.Module):
    """Encoder (/downsample) -> Quantizer -> decoder (x downsample); one code grid named 'code'.

    Images (B, C, H, W) with H, W divisible by `config.downsample`; codes (B, H/f, W/f).
    """

    level_names: tuple[str, ...] = ("code",)

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c.in_channels, c.channels, c.latent_dim, c.downsample, c.n_res_blocks)
        self.quantizers = nn.ModuleDict({"code": Quantizer(c.quantizer)})
        self.decoder = Decoder(c.latent_dim, c.channels, c.in_channels, c.downsample, c.n_res_blocks)

    def _quantize(self, images: Tensor) -> QuantizeOutput:
        check_images(images, self.config.in_channels, self.config.downsample, type(self).__name__)
        z = self.encoder(images)  # (B, D, h, w)
        return self.quantizers["code"](to_channels_last(z))

    def _decode(self, quantized: Tensor) -> Tensor:
        """(B, h, w, D) quantized codes -> (B, C, H, W) images."""
        return output_activation(self.decoder(to_channels_first(quantized)), self.config.output_activation)

    def forward(self, images: Tensor) -> VQVAEOutput:
        """Reconstruct (B, C, H, W) images; add `quant_loss` to the reconstruction loss."""
        out = self._quantize(images)
        return VQVAEOutput(recon=self._decode(out.quantized), quant_loss=out.loss, levels={"code": out})

    @torch.no_grad()
    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """Code indices {'code': (B, H/f, W/f)}. Call in eval mode: in train mode the quantizer updates its codebook."""
        return {"code": self._quantize(images).indices}

    def decode_quantized(self, levels: Mapping[str, Tensor]) -> Tensor:
        """{'code': (B, h, w, D) quantized vectors} -> (B, C, h*f, w*f) images."""
        return self._decode(levels["code"])

    def decode_indices(self, indices: Mapping[str, Tensor] | Tensor) -> Tensor:
        """{'code': (B, h, w)} (or the bare tensor) -> (B, C, h*f, w*f) images."""
        codes = indices if isinstance(indices, Tensor) else indices["code"]
        return self._decode(self.quantizers["code"].decode_indices(codes))

"""Two-level VQ-VAE-2 (arXiv 1906.00446) on the shared `Quantizer`.

Layout (f_b = bottom_downsample, f_t = top_downsample):
    h_b = enc_b(x)                                  (B, C, H/f_b, W/f_b)
    q_t = Q_top(conv1x1(enc_t(h_b)))                (B, D_t, H/(f_b f_t), W/(f_b f_t))
    q_b = Q_bottom(conv1x1([dec_t(q_t), h_b]))      (B, D_b, H/f_b, W/f_b)
    x^  = dec([up(q_t), q_b])                       (B, C, H, W)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from vqstudy.images.blocks import (
    Decoder,
    Encoder,
    check_images,
    output_activation,
    to_channels_first,
    to_channels_last,
    upsampler,
)
from vqstudy.images.config import HierarchicalVQVAEConfig
from vqstudy.images.vqvae import VQVAEOutput
from vqstudy.quantize import QuantizeOutput, Quantizer


class HierarchicalVQVAE(nn.Module):
    """VQ-VAE-2 with levels 'top' (coarse, conditions the bottom) and 'bottom' (fine); both feed the decoder."""

    level_names: tuple[str, ...] = ("top", "bottom")

    def __init__(self, config: HierarchicalVQVAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.bottom_encoder = Encoder(c.in_channels, c.channels, None, c.bottom_downsample, c.n_res_blocks)
        self.top_encoder = Encoder(c.channels, c.channels, c.top_latent_dim, c.top_downsample, c.n_res_blocks)
        self.top_decoder = Decoder(c.top_latent_dim, c.channels, c.bottom_latent_dim, c.top_downsample, c.n_res_blocks)
        self.bottom_proj = nn.Conv2d(c.channels + c.bottom_latent_dim, c.bottom_latent_dim, kernel_size=1)
        self.quantizers = nn.ModuleDict({"top": Quantizer(c.top), "bottom": Quantizer(c.bottom)})
        self.top_upsample = upsampler(c.top_latent_dim, c.top_downsample)
        self.decoder = Decoder(
            c.top_latent_dim + c.bottom_latent_dim, c.channels, c.in_channels, c.bottom_downsample, c.n_res_blocks
        )

    @property
    def downsample(self) -> int:
        """Total downsampling factor from the image to the top grid."""
        return self.config.bottom_downsample * self.config.top_downsample

    def _quantize(self, images: Tensor) -> tuple[QuantizeOutput, QuantizeOutput]:
        check_images(images, self.config.in_channels, self.downsample, type(self).__name__)
        h_b = self.bottom_encoder(images)  # (B, C, hb, wb)
        top = self.quantizers["top"](to_channels_last(self.top_encoder(h_b)))  # quantized (B, ht, wt, Dt)
        cond = self.top_decoder(to_channels_first(top.quantized))  # (B, Db, hb, wb)
        z_b = self.bottom_proj(torch.cat([cond, h_b], dim=1))  # (B, Db, hb, wb)
        bottom = self.quantizers["bottom"](to_channels_last(z_b))  # quantized (B, hb, wb, Db)
        return top, bottom

    def _decode(self, top: Tensor, bottom: Tensor) -> Tensor:
        """Quantized top (B, ht, wt, Dt) and bottom (B, hb, wb, Db) -> (B, C, H, W) images."""
        up = self.top_upsample(to_channels_first(top))  # (B, Dt, hb, wb)
        x = self.decoder(torch.cat([up, to_channels_first(bottom)], dim=1))  # (B, C, H, W)
        return output_activation(x, self.config.output_activation)

    def forward(self, images: Tensor) -> VQVAEOutput:
        """Reconstruct (B, C, H, W) images; add `quant_loss` (top + bottom) to the reconstruction loss."""
        top, bottom = self._quantize(images)
        return VQVAEOutput(
            recon=self._decode(top.quantized, bottom.quantized),
            quant_loss=top.loss + bottom.loss,
            levels={"top": top, "bottom": bottom},
        )

    @torch.no_grad()
    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """{'top': (B, H/(f_b f_t), W/(f_b f_t)), 'bottom': (B, H/f_b, W/f_b)}. Call in eval mode."""
        top, bottom = self._quantize(images)
        return {"top": top.indices, "bottom": bottom.indices}

    def decode_quantized(self, levels: Mapping[str, Tensor]) -> Tensor:
        """{'top': (B, ht, wt, Dt), 'bottom': (B, hb, wb, Db) quantized vectors} -> (B, C, H, W) images."""
        return self._decode(levels["top"], levels["bottom"])

    def decode_indices(self, indices: Mapping[str, Tensor]) -> Tensor:
        """{'top': (B, ht, wt), 'bottom': (B, hb, wb)} -> (B, C, H, W) images."""
        missing = [name for name in self.level_names if name not in indices]
        if missing:
            raise ValueError(f"decode_indices: indices lack level(s) {missing}; expected {list(self.level_names)}")
        top = self.quantizers["top"].decode_indices(indices["top"])  # (B, ht, wt, Dt)
        bottom = self.quantizers["bottom"].decode_indices(indices["bottom"])  # (B, hb, wb, Db)
        return self._decode(top, bottom)

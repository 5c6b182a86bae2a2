"""Convolutional building blocks of the image VQ-VAEs (arXiv 1711.00937, 1906.00446).

All blocks are channels-first: (B, C, H, W). Quantizers work channels-last, (..., D); the two
helpers at the bottom move code grids between the two layouts.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vqstudy.images.config import check_power_of_two


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def residual_stack(channels: int, n_blocks: int) -> nn.Sequential:
    """`n_blocks` residual blocks followed by a ReLU."""
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(n_blocks)), nn.ReLU())


class Encoder(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H/f, W/f): log2(f) stride-2 4x4 convs, a 3x3 conv, residual blocks.

    With `out_channels=None` the features are returned at width `channels` (no 1x1 projection).
    """

    def __init__(
        self, in_channels: int, channels: int, out_channels: int | None, downsample: int, n_res_blocks: int
    ) -> None:
        super().__init__()
        n_down = check_power_of_two("Encoder", "downsample", downsample)
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(n_down):
            layers += [nn.Conv2d(width, channels, kernel_size=4, stride=2, padding=1), nn.ReLU()]
            width = channels
        layers += [nn.Conv2d(width, channels, kernel_size=3, padding=1), residual_stack(channels, n_res_blocks)]
        if out_channels is not None:
            layers.append(nn.Conv2d(channels, out_channels, kernel_size=1))
        self.net = nn.Sequential(*layers)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, C_in, h, w) -> (B, C_out, h*f, w*f): a 3x3 conv, residual blocks, log2(f) stride-2 4x4 transposed convs."""

    def __init__(self, in_channels: int, channels: int, out_channels: int, upsample: int, n_res_blocks: int) -> None:
        super().__init__()
        n_up = check_power_of_two("Decoder", "upsample", upsample)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
            residual_stack(channels, n_res_blocks),
        ]
        for i in range(n_up):
            last = i == n_up - 1
            layers.append(nn.ConvTranspose2d(channels, out_channels if last else channels, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
        if n_up == 0:
            layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def upsampler(channels: int, factor: int) -> nn.Sequential:
    """(B, C, h, w) -> (B, C, h*factor, w*factor) by stride-2 4x4 transposed convs (ReLU between)."""
    n_up = check_power_of_two("upsampler", "factor", factor)
    layers: list[nn.Module] = []
    for i in range(n_up):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


def output_activation(x: Tensor, activation: str) -> Tensor:
    """Map decoder outputs to image space: 'sigmoid' -> (0, 1), 'identity' -> unchanged."""
    return torch.sigmoid(x) if activation == "sigmoid" else x


def check_images(images: Tensor, in_channels: int, factor: int, owner: str) -> None:
    """Raise ValueError unless `images` is (B, in_channels, H, W) with H and W divisible by `factor`."""
    if images.ndim != 4 or images.shape[1] != in_channels:
        raise ValueError(f"{owner}: images {tuple(images.shape)} must be (B, {in_channels}, H, W)")
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"{owner}: image size {height}x{width} must be divisible by the total downsampling factor {factor}"
        )


def to_channels_last(z: Tensor) -> Tensor:
    """Code grid (B, D, h, w) -> (B, h, w, D), the layout quantizers take."""
    return rearrange(z, "b d h w -> b h w d")


def to_channels_first(z: Tensor) -> Tensor:
    """Quantized grid (B, h, w, D) -> (B, D, h, w), the layout convs take."""
    return rearrange(z, "b h w d -> b d h w")

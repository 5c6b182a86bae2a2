"""Image reconstruction metrics: MSE, PSNR, SSIM, LPIPS and rFID over an evaluation set.

All metrics accumulate over batches of ``(recon, target)`` images in [0, 1] of shape (B, C, H, W)
with C = 1 or 3 (grayscale is repeated to RGB for LPIPS and rFID). PSNR is computed from the MSE
over all pixels seen (torchmetrics' default), not averaged per image. LPIPS is the AlexNet v0.1
variant and rFID uses the InceptionV3 pool3 features, both from the offline weights of
``vqstudy.assets``. rFID compares the reconstructions with their targets; it is only reported when
at least ``rfid_min_images`` images were seen (fewer give a meaningless covariance), else NaN.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.image.fid import FrechetInceptionDistance

from vqstudy.assets import load_fid_inception, load_lpips

logger = logging.getLogger(__name__)

__all__ = ["ReconstructionMetrics"]

LPIPS_MIN_SIZE = 31
"""Smallest height/width the AlexNet trunk of LPIPS accepts (its two 3x3/2 max-pools need it)."""


class ReconstructionMetrics:
    """Accumulates ``mse``, ``psnr``, ``ssim``, ``lpips`` and ``rfid`` over (recon, target) batches.

    Deliberately not an ``nn.Module``: kept as an attribute of a LightningModule it stays out of
    checkpoints (the LPIPS and Inception weights are ~100 MB); call ``.to(device)`` yourself.

    Args:
        lpips: compute LPIPS (AlexNet); when False ``compute()`` reports NaN for it.
        rfid: compute rFID; when False ``compute()`` reports NaN for it.
        rfid_min_images: rFID is NaN (with a logged reason) below this many evaluated images.
        cache_dir: cache of the offline weights (default ``$VQSTUDY_CACHE`` or ``~/.cache/vqstudy``).
        lpips_model: use this LPIPS-like module, ``f(x, y) -> (B, 1, 1, 1)`` on [-1, 1] inputs,
            instead of loading the offline weights.
        fid_feature: use this feature extractor for rFID (see ``FrechetInceptionDistance(feature=)``;
            it gets float images in [0, 1]) instead of the offline InceptionV3.
    """

    KEYS = ("mse", "psnr", "ssim", "lpips", "rfid")

    def __init__(
        self,
        lpips: bool = True,
        rfid: bool = True,
        rfid_min_images: int = 50,
        cache_dir: str | os.PathLike[str] | None = None,
        lpips_model: torch.nn.Module | None = None,
        fid_feature: torch.nn.Module | None = None,
    ) -> None:
        if rfid_min_images < 2:
            raise ValueError(f"rfid_min_images ({rfid_min_images}) must be >= 2")
        self.rfid_min_images = rfid_min_images
        self.mse = MeanSquaredError()
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.lpips_model: torch.nn.Module | None = None
        self.lpips_mean: MeanMetric | None = None
        if lpips:
            self.lpips_model = lpips_model if lpips_model is not None else load_lpips("alex", cache_dir)
            self.lpips_model.eval()
            self.lpips_mean = MeanMetric()
        self.fid: FrechetInceptionDistance | None = None
        if rfid:
            feature = fid_feature if fid_feature is not None else load_fid_inception(cache_dir)
            self.fid = FrechetInceptionDistance(feature=feature.eval(), reset_real_features=True)
        self.num_images = 0

    def to(self, device: torch.device | str) -> ReconstructionMetrics:
        """Move every metric and model to ``device``; returns self."""
        for m in (self.mse, self.psnr, self.ssim, self.lpips_model, self.lpips_mean, self.fid):
            if m is not None:
                m.to(device)
        return self

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        for m in (self.mse, self.psnr, self.ssim, self.lpips_mean, self.fid):
            if m is not None:
                m.reset()
        self.num_images = 0

    @torch.no_grad()
    def update(self, recon: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``recon`` and ``target`` (B, C, H, W), float in [0, 1], C in {1, 3}."""
        _check_images("recon", recon, target.shape)
        _check_images("target", target, recon.shape)
        recon, target = recon.float().contiguous(), target.float().contiguous()
        self.mse.update(recon, target)
        self.psnr.update(recon, target)
        self.ssim.update(recon, target)
        rgb_recon = recon.expand(-1, 3, -1, -1)  # (B, 3, H, W), a view for C == 1
        rgb_target = target.expand(-1, 3, -1, -1)
        if self.lpips_model is not None and self.lpips_mean is not None:
            if min(recon.shape[-2:]) < LPIPS_MIN_SIZE:
                raise ValueError(
                    f"LPIPS needs images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}, got "
                    f"{tuple(recon.shape[-2:])}; pass lpips=False for smaller images"
                )
            dist = self.lpips_model(rgb_recon * 2 - 1, rgb_target * 2 - 1)  # (B, 1, 1, 1)
            self.lpips_mean.update(dist.flatten())
        if self.fid is not None:
            self.fid.update(rgb_target, real=True)
            self.fid.update(rgb_recon, real=False)
        self.num_images += recon.shape[0]

    def compute(self) -> dict[str, float]:
        """Metrics over everything seen since the last reset: keys ``KEYS``; NaN where not computed."""
        if self.num_images == 0:
            raise RuntimeError("ReconstructionMetrics.compute() called before any update()")
        out = {
            "mse": float(self.mse.compute()),
            "psnr": float(self.psnr.compute()),
            "ssim": float(self.ssim.compute()),
            "lpips": math.nan,
            "rfid": math.nan,
        }
        if self.lpips_mean is not None:
            out["lpips"] = float(self.lpips_mean.compute())
        if self.fid is None:
            logger.debug("rfid disabled; reporting NaN")
        elif self.num_images < self.rfid_min_images:
            logger.warning(
                "rfid not computed: %d eval images < rfid_min_images (%d); reporting NaN",
                self.num_images,
                self.rfid_min_images,
            )
        else:
            out["rfid"] = float(self.fid.compute())
        return out


def _check_images(name: str, x: torch.Tensor, other_shape: torch.Size) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (B, C, H, W) with C in (1, 3), got shape {tuple(x.shape)}")
    if x.shape != other_shape:
        raise ValueError(f"recon and target shapes differ: {tuple(x.shape)} vs {tuple(other_shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (clamp reconstructions first), got [{lo:.4g}, {hi:.4g}]")

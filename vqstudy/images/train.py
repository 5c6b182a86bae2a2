"""Lightning training of the image VQ-VAEs: module, callbacks, and one `fit_model` entry point.

Metric keys: `train/recon_loss`, `train/quant_loss`, `train/<level>/utilization` (the utilization
curves: usage over a window of `curve_every` steps), `val/psnr`, `val/<level>/perplexity`, ...
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from vqstudy.quantize.usage import CodebookUsage

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How a model is trained (shared by both models of a pair)."""

    max_steps: int = 600
    """Optimizer steps."""
    lr: float = 2e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    seed: int = 0
    """Seed of model init and data order (pl.seed_everything)."""
    curve_every: int = 25
    """Steps per window of the codebook utilization curves."""
    val_every: int = 200
    """Validate every this many steps (and at the end)."""
    checkpoint_every: int = 200
    """Save last.ckpt every this many steps."""
    lpips: bool = True
    """Compute LPIPS (AlexNet, offline weights from `vqstudy assets fetch`) at validation."""
    rfid: bool = True
    """Compute rFID (offline InceptionV3) at validation when there are enough eval images."""
    rfid_min_images: int = 50
    """rFID is reported as NaN below this many eval images."""
    accelerator: str = "auto"
    """Lightning accelerator ('cpu', 'gpu', 'auto')."""
    devices: int | str = 1
    """Lightning devices (more than one -> DDP)."""
    precision: str = "32-true"
    """Lightning precision."""
    deterministic: bool = True
    """torch deterministic algorithms (needed for exact resume)."""
    progress_bar: bool = True
    """Show the rich progress bar."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the `tensorboard` package)."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "curve_every", "val_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} ({value!r}) must be a positive integer")
        if self.rfid_min_images < 2:
            raise ValueError(f"TrainConfig.rfid_min_images ({self.rfid_min_images}) must be >= 2 (FID needs two samples)")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr ({self.lr}) must be > 0")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; the last good checkpoint is kept."""


def model_levels(model: nn.Module) -> dict[str, int]:
    """Level name -> codebook size for an image model (VQVAE or HierarchicalVQVAE)."""
    return {name: spec.quantizer.codebook_size for name, spec in model.config.levels().items()}


def level_usage_metrics(model: nn.Module) -> nn.ModuleDict:
    """One `CodebookUsage` per level, with that level's quantizer `dead_code_threshold`."""
    return nn.ModuleDict({
        name: CodebookUsage(spec.quantizer.codebook_size, dead_threshold=spec.quantizer.dead_code_threshold)
        for name, spec in model.config.levels().items()
    })


class VQLitModule(pl.LightningModule):
    """Trains one image VQ-VAE: MSE reconstruction + quantizer loss; logs codebook and image metrics."""

    def __init__(self, model: nn.Module, train_cfg: TrainConfig, recon_metrics: Any | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = train_cfg
        self.levels = model_levels(model)
        self.train_usage = level_usage_metrics(model)
        self.val_usage = level_usage_metrics(model)
        self.recon_metrics = recon_metrics  # ReconstructionMetrics (not a Module: stays out of checkpoints)
        self.last_val: dict[str, float] = {}

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch  # (B, 3, H, W) in [0, 1]
        out = self.model(images)
        recon_loss = F.mse_loss(out.recon, images)
        loss = recon_loss + out.quant_loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step} "
                f"(recon {recon_loss.item()}, quant {out.quant_loss.item()}); "
                "stopping; the last good checkpoint is kept"
            )
        bs = images.shape[0]
        self.log("train/loss", loss, batch_size=bs)
        self.log("train/recon_loss", recon_loss, batch_size=bs, prog_bar=True)
        self.log("train/quant_loss", out.quant_loss, batch_size=bs)
        self.log("train/psnr", -10 * torch.log10(recon_loss.detach().clamp_min(1e-10)), batch_size=bs)
        for name, level in out.levels.items():
            self.train_usage[name].update(level.indices)
            self.log(f"train/{name}/batch_perplexity", level.stats.perplexity, batch_size=bs)
            self.log(f"train/{name}/resets", level.stats.resets.float(), batch_size=bs, reduce_fx="sum")
        if (self.global_step + 1) % self.cfg.curve_every == 0:
            self._log_usage_window()
        return loss

    def _log_usage_window(self) -> None:
        """One point of the utilization curves: usage over the last `curve_every` steps, then reset."""
        curve = {}
        for name in self.levels:
            stats = self.train_usage[name].compute()  # synced over ranks by torchmetrics
            for key in ("utilization", "perplexity", "effective_bits", "dead_fraction"):
                curve[f"train/{name}/{key}"] = float(stats[key])
            self.train_usage[name].reset()
        for logger in self.loggers:  # written once, at this step only (loggers are rank-zero only)
            logger.log_metrics(curve, step=self.global_step)

    def on_validation_epoch_start(self) -> None:
        if self.recon_metrics is not None:
            self.recon_metrics.to(self.device).reset()
        for metric in self.val_usage.values():
            metric.reset()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        out = self.model(images)
        self.log("val/recon_loss", F.mse_loss(out.recon, images), batch_size=images.shape[0], sync_dist=True)
        for name, level in out.levels.items():
            self.val_usage[name].update(level.indices)
        if self.recon_metrics is not None:
            self.recon_metrics.update(out.recon.clamp(0, 1), images)

    def on_validation_epoch_end(self) -> None:
        values: dict[str, float] = {}
        for name in self.levels:
            stats = self.val_usage[name].compute()
            for key in ("utilization", "perplexity", "effective_bits", "dead_fraction"):
                values[f"val/{name}/{key}"] = float(stats[key])
        if self.recon_metrics is not None and self.recon_metrics.num_images:
            values.update({f"val/{k}": v for k, v in self.recon_metrics.compute().items()})
        finite = {k: v for k, v in values.items() if not math.isnan(v)}
        self.log_dict(finite, sync_dist=True)  # torchmetrics already synced the states: every rank holds these values
        self.last_val = values

    def usage_histograms(self) -> dict[str, list[float]]:
        """Level -> usage counts of the last validation pass."""
        return {name: self.val_usage[name].counts.tolist() for name in self.levels}


class Throughput(pl.Callback):
    """Training images per second, measured over training batches only (validation excluded)."""

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.images = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup_steps:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.images += images.shape[0]
            self.seconds += time.perf_counter() - self._t0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else math.nan


def step_description(epoch: int, step: int, max_steps: int) -> str:
    """Progress-bar text of a step-bounded run, set at each epoch start: 'Epoch 7 (step 1200 of 2000)', never 'Epoch 7/-2'."""
    return f"Epoch {epoch} (step {step} of {max_steps})"


def step_progress_bar() -> pl.Callback:
    """A rich progress bar whose description counts steps (runs here are bounded by max_steps, not epochs)."""
    from pytorch_lightning.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            trainer = self.trainer
            return step_description(current_epoch, trainer.global_step, trainer.max_steps)

    return StepProgressBar()


@dataclass
class FitResult:
    """What `fit_model` returns."""

    module: VQLitModule
    val: dict[str, float]
    images_per_second: float
    log_dir: Path
    seconds: float


def fit_model(
    model: nn.Module,
    datamodule: pl.LightningDataModule,
    train_cfg: TrainConfig,
    out_dir: Path,
    name: str,
    recon_metrics: Any | None = None,
    resume_from: str | Path | None = None,
    ckpt_dir: str | Path | None = None,
) -> FitResult:
    """Train `model` with Lightning; logs CSV to out_dir/name, checkpoints to ckpt_dir (default out_dir/name/checkpoints)."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    pl.seed_everything(train_cfg.seed, workers=True, verbose=False)
    module = VQLitModule(model, train_cfg, recon_metrics)
    logger = CSVLogger(save_dir=str(out_dir), name=name, version="")
    loggers: list[Any] = [logger]
    if train_cfg.tensorboard:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out_dir), name=name, version="tb"))
    ckpt = ModelCheckpoint(
        dirpath=str(ckpt_dir or Path(out_dir) / name / "checkpoints"),
        every_n_train_steps=train_cfg.checkpoint_every,
        save_last=True,
        save_top_k=0,
    )
    throughput = Throughput()
    callbacks: list[pl.Callback] = [ckpt, throughput]
    if train_cfg.progress_bar:
        callbacks.append(step_progress_bar())
    trainer = pl.Trainer(
        max_steps=train_cfg.max_steps,
        max_epochs=-1,
        accelerator=train_cfg.accelerator,
        devices=train_cfg.devices,
        precision=train_cfg.precision,
        deterministic=train_cfg.deterministic,
        logger=loggers,
        callbacks=callbacks,
        val_check_interval=train_cfg.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=train_cfg.progress_bar,
        enable_model_summary=False,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    if trainer.global_step % train_cfg.val_every:  # make sure the final weights are validated
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return FitResult(module, dict(module.last_val), throughput.images_per_second, Path(logger.log_dir),
                     time.perf_counter() - t0)

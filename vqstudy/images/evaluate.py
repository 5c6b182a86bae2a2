"""Evaluation of a trained image VQ-VAE on any image source: per-image PSNR/SSIM/LPIPS, code usage, level contributions.

Used after training by `vqstudy pair` and on its own by `vqstudy eval`; both write the same files
(per_image.csv per model, the `val/...` metric keys in metrics.json). Saving and loading trained
weights (safetensors + the model config as JSON, never a pickle) lives here too.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from vqstudy.config import from_dict, to_dict
from vqstudy.images.config import MODEL_CONFIGS
from vqstudy.images.models import build_model
from vqstudy.quantize.usage import CodebookUsage

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model.json"
PER_IMAGE = "per_image.csv"


# ------------------------------------------------------------------------------------------------ save / load
def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Write `model`'s weights (safetensors) and its config (JSON with its `kind`) into `folder`; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    meta = {"kind": model.config.kind, "config": to_dict(model.config)}
    (folder / MODEL_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_model(folder: str | Path) -> nn.Module:
    """The model saved by `save_model` in `folder`, in eval mode (exact weights, strict key match)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (WEIGHTS, MODEL_CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; expected a model folder written by `vqstudy pair` (save_model)")
    meta = json.loads((folder / MODEL_CONFIG).read_text())
    if meta.get("kind") not in MODEL_CONFIGS:
        raise ValueError(f"{folder / MODEL_CONFIG}: kind ({meta.get('kind')!r}) must be one of {sorted(MODEL_CONFIGS)}")
    model = build_model(from_dict(MODEL_CONFIGS[meta["kind"]], meta["config"], where=str(folder / MODEL_CONFIG)))
    model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ per image
def psnr_per_image(recon: Tensor, target: Tensor) -> Tensor:
    """(B,) PSNR in dB of images in [0, 1] (B, C, H, W), from each image's own MSE."""
    mse = (recon.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim_per_image(recon: Tensor, target: Tensor) -> Tensor:
    """(B,) SSIM (11x11 Gaussian window, torchmetrics) of images in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(recon.float(), target.float(), data_range=1.0, reduction="none")


class Evaluation(NamedTuple):
    """What `evaluate` returns."""

    rows: list[dict[str, Any]]
    """One row per image: image (index in the loader's order), source (photo name or ''), mse, psnr, ssim, lpips (NaN without LPIPS)."""
    metrics: dict[str, float]
    """'val/psnr' (from the pooled MSE), 'val/psnr_mean_per_image', 'val/ssim', 'val/lpips', 'val/<level>/utilization', ..."""
    level_drop: dict[str, float]
    """Level -> PSNR drop (dB, pooled) when that level's codes are all replaced by their mean code vector ({} for one level)."""
    histograms: dict[str, list[float]]
    """Level -> (K,) code usage counts over the evaluated images."""


def image_sources(dataset: Any) -> list[str] | None:
    """The source photo of each item of a validation dataset (tiles of the embedded photos), else None."""
    tiles = getattr(dataset, "tiles", None)
    if tiles is not None:
        return [str(t[0]) for t in tiles]
    return None


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Tensor], lpips_model: nn.Module | None = None,
             max_images: int | None = None, sources: list[str] | None = None) -> Evaluation:
    """Evaluate `model` (eval mode, no codebook updates) on image batches (B, 3, H, W) in [0, 1].

    `sources`: the photo each image comes from (in loader order), written to the per-image rows.
    """
    model.eval()
    device = next(model.parameters()).device
    levels = {name: spec.quantizer.codebook_size for name, spec in model.config.levels().items()}
    usage = {name: CodebookUsage(k, dead_threshold=model.config.levels()[name].quantizer.dead_code_threshold)
             for name, k in levels.items()}
    rows: list[dict[str, Any]] = []
    quantized: dict[str, list[Tensor]] = {name: [] for name in levels}
    images_seen: list[Tensor] = []
    sq_err = 0.0
    pixels = 0
    for batch in batches:
        images = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
        if max_images is not None:
            images = images[: max_images - len(rows)]
        if images.shape[0] == 0:
            break
        out = model(images)
        recon = out.recon.clamp(0, 1)
        psnr, ssim = psnr_per_image(recon, images), ssim_per_image(recon, images)
        mse = (recon - images).pow(2).flatten(1).mean(1)
        lp = lpips_model(recon * 2 - 1, images * 2 - 1).flatten() if lpips_model is not None else None
        for i in range(images.shape[0]):
            source = sources[len(rows)] if sources is not None and len(rows) < len(sources) else ""
            rows.append({"image": len(rows), "source": source, "mse": float(mse[i]), "psnr": float(psnr[i]), "ssim": float(ssim[i]),
                         "lpips": float(lp[i]) if lp is not None else math.nan})
        sq_err += float((recon - images).pow(2).sum())
        pixels += images.numel()
        for name, level in out.levels.items():
            usage[name].update(level.indices)
            quantized[name].append(level.quantized)
        images_seen.append(images)
        if max_images is not None and len(rows) >= max_images:
            break
    if not rows:
        raise ValueError("evaluate: the image source yielded no images")
    metrics: dict[str, float] = {
        "val/mse": sq_err / pixels,
        "val/psnr": -10 * math.log10(max(sq_err / pixels, 1e-10)),
        "val/psnr_mean_per_image": sum(r["psnr"] for r in rows) / len(rows),
        "val/ssim": sum(r["ssim"] for r in rows) / len(rows),
        "val/lpips": sum(r["lpips"] for r in rows) / len(rows),
        "val/num_images": float(len(rows)),
    }
    histograms = {}
    for name, metric in usage.items():
        for key, value in metric.compute().items():
            if key != "histogram":
                metrics[f"val/{name}/{key}"] = float(value)
        histograms[name] = metric.counts.tolist()
    level_drop = _level_drop(model, images_seen, quantized, metrics["val/psnr"]) if len(levels) > 1 else {}
    for name, drop in level_drop.items():
        metrics[f"val/{name}/psnr_drop_if_mean"] = drop
    return Evaluation(rows, metrics, level_drop, histograms)


def _level_drop(model: nn.Module, images: list[Tensor], quantized: dict[str, list[Tensor]], psnr: float) -> dict[str, float]:
    """PSNR drop when one level's quantized vectors are all replaced by their mean over the evaluated images."""
    means = {name: torch.cat([q.reshape(-1, q.shape[-1]) for q in qs]).mean(0) for name, qs in quantized.items()}  # (D,)
    drops = {}
    for ablated in quantized:
        sq_err, pixels = 0.0, 0
        for i, target in enumerate(images):
            levels = {name: (means[name].expand_as(qs[i]) if name == ablated else qs[i]) for name, qs in quantized.items()}
            recon = model.decode_quantized(levels).clamp(0, 1)
            sq_err += float((recon - target).pow(2).sum())
            pixels += target.numel()
        drops[ablated] = psnr - (-10 * math.log10(max(sq_err / pixels, 1e-10)))
    return drops


def write_per_image(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write per-image rows (image, source, mse, psnr, ssim, lpips) as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_per_image(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by `write_per_image` (numbers as float, `source` as text)."""
    with open(path) as f:
        return [{k: (v if k == "source" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def lpips_model_for(enabled: bool) -> nn.Module | None:
    """The offline LPIPS (AlexNet) module when `enabled` (weights from `vqstudy assets fetch`), else None."""
    if not enabled:
        return None
    from vqstudy.assets import load_lpips

    return load_lpips("alex").eval()


def summarize(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite float metrics of a dict (for tables)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isnan(float(v))}
